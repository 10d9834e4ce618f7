"""First render of the web page's jobs list with 10,000 jobs in the home, in real Chromium.

Rows go straight into the database (as ``bench_receive.py`` does), a real ``magickbox
serve`` answers, and headless Chromium loads ``/`` in a fresh context each run (no cache).
The time is taken in the browser: ``performance.now()`` (from navigation start) when the
first job row is in the DOM, seen by a MutationObserver installed before any script runs.
Payload: bytes over the wire for the document and everything it fetched until then.
The same page over a home of ``--reference-jobs`` (100) is measured in the same run, as the
reference; so is the jobs list sorted by a column (``#/jobs?sort=patient_id``).

``--bulk N`` (1000) also times one bulk action over N jobs with folders (``POST
/api/v1/jobs/bulk``: delete, and retry of every job), against the reference of the same
number of single-job requests (``DELETE /api/v1/jobs/<name>``) in the same run.

    python benchmarks/bench_page.py [--jobs 10000] [--runs 15] [--bulk 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magickbox.testing.homes import fill_finished_jobs
from magickbox.testing.server import BoxServer

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip

# Runs before the page's own script: note when the first job row lands in the DOM.
FIRST_ROW = """
new MutationObserver((_, obs) => {
  if (document.querySelector('#rows tr[data-job]')) {
    window.__firstRow = performance.now();
    obs.disconnect();
  }
}).observe(document, {childList: true, subtree: true});
"""

# Bytes of the document and of what it fetched (transfer sizes include headers).
PAYLOAD = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource')
    .filter(r => r.startTime <= window.__firstRow);
  return {transfer: nav.transferSize + res.reduce((a, r) => a + r.transferSize, 0),
          body: nav.decodedBodySize + res.reduce((a, r) => a + r.decodedBodySize, 0),
          requests: 1 + res.length,
          api: res.filter(r => r.name.includes('/api/v1/jobs')).map(r => r.encodedBodySize)[0]};
}"""


def measure(url: str, runs: int, headers: dict[str, str], hash_: str = "") -> dict:
    from playwright.sync_api import sync_playwright

    times, payloads = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for run in range(runs + 1):
            ctx = browser.new_context(viewport={"width": 1280, "height": 800},
                                      extra_http_headers=headers)  # fmt: skip
            page = ctx.new_page()
            page.add_init_script(FIRST_ROW)
            page.goto(url + hash_)
            page.wait_for_function("window.__firstRow !== undefined", timeout=30_000)
            first = page.evaluate("window.__firstRow")
            payload = page.evaluate(PAYLOAD)
            ctx.close()
            if run:  # the first run warms the server (imports, SQLite pages); not counted
                times.append(first)
                payloads.append(payload)
        browser.close()
    times.sort()
    return {
        "runs": runs,
        "first_rows_ms": {
            "median": round(statistics.median(times), 1),
            "p90": round(times[int(0.9 * (len(times) - 1))], 1),
            "min": round(times[0], 1),
            "max": round(times[-1], 1),
        },
        "payload": payloads[-1],
    }


# What the page asks of the API, timed from outside (HTTP included), median of 20.
API_CALLS = {
    "jobs page": "/api/v1/jobs?limit=50",
    "sorted by patient": "/api/v1/jobs?limit=50&sort=patient_id&order=asc",
    "sorted by duration": "/api/v1/jobs?limit=50&sort=processing_seconds",
    "bucket filter, last page": "/api/v1/jobs?limit=50&bucket=FreeSurfer&offset=3300",
    "search q=PACS": "/api/v1/jobs?limit=50&q=PACS",
    "search, no match": "/api/v1/jobs?limit=50&q=nothing-like-this",
    "letter O": "/api/v1/jobs?limit=50&initial=O",
    "jobs per day (year)": "/api/v1/stats/days?days=365",
    "buckets with means": "/api/v1/buckets?all=true",
    "bucket figures": "/api/v1/stats/buckets",
    "failing sends": "/api/v1/sends/failing?limit=5",
}


def measure_api(url: str, headers: dict[str, str]) -> dict:
    import httpx

    out = {}
    with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
        for name, path in API_CALLS.items():
            client.get(path)
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                client.get(path).raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)
            out[name] = round(statistics.median(times), 1)
    return out


def page_figures(jobs: int, runs: int, tmp: Path, sorted_too: bool) -> dict:
    """First rows of the jobs page (and the API's answers) over a home of ``jobs`` jobs."""
    home = tmp / f"home-{jobs}"
    t0 = time.perf_counter()
    fill_finished_jobs(home, jobs)
    print(f"{jobs} jobs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    box = BoxServer(home).start()
    try:
        result = {"jobs": jobs, **measure(box.url + "/", runs, box.headers)}
        if sorted_too:
            by = measure(box.url + "/", runs, box.headers, "#/jobs?sort=patient_id&order=asc")
            result["sorted_first_rows_ms"] = by["first_rows_ms"]
        result["api_median_ms"] = measure_api(box.url, box.headers)
    finally:
        box.stop()
    return result


def bulk_figures(jobs: int, tmp: Path) -> dict:
    """Seconds until one bulk request over ``jobs`` jobs has answered (every job acted on),
    and the same number of single-job DELETEs, each over a fresh home of finished jobs."""
    import httpx

    def timed(name: str, act) -> float:  # type: ignore[no-untyped-def]
        home = tmp / f"bulk-{name}"
        fill_finished_jobs(home, jobs, folders=True)
        box = BoxServer(home).start()
        try:
            with httpx.Client(base_url=box.url, timeout=600, headers=box.headers) as client:
                listed = client.get("/api/v1/jobs", params={"limit": jobs}).json()["jobs"]
                names = [j["scratchdir"] for j in listed]
                t0 = time.perf_counter()
                act(client, names)
                return round(time.perf_counter() - t0, 2)
        finally:
            box.stop()

    def bulk(action: str):  # type: ignore[no-untyped-def]
        def run(client: httpx.Client, names: list[str]) -> None:
            answer = client.post("/api/v1/jobs/bulk", json={"action": action, "filter": {}})
            answer.raise_for_status()
            assert len(answer.json()["done"]) == len(names), answer.text[:300]
        return run

    def one_by_one(client: httpx.Client, names: list[str]) -> None:
        for name in names:
            client.delete(f"/api/v1/jobs/{name}").raise_for_status()

    return {
        "jobs": jobs,
        "bulk_delete_s": timed("delete", bulk("delete")),
        "single_deletes_s (reference)": timed("single", one_by_one),
        "bulk_retry_s": timed("retry", bulk("retry")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--reference-jobs", type=int, default=100)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--bulk", type=int, default=1000, help="jobs of the bulk action; 0: none")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-page-") as tmp:
        result = {
            "page": page_figures(args.jobs, args.runs, Path(tmp), sorted_too=True),
            "reference page": page_figures(args.reference_jobs, args.runs, Path(tmp), False),
        }
        if args.bulk:
            result["bulk"] = bulk_figures(args.bulk, Path(tmp))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
