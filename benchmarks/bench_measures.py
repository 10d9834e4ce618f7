"""What measures cost the web API: getScratch with and without measures on every job, and
the measures table (JSON and CSV) against getScratch of the same home.

Two homes of N finished jobs (rows straight into the database, with their folders, as
``bench_receive.py`` does); the second also has 20 measures on every job. A real
``magickbox serve`` answers each home in turn; each endpoint gets one untimed first request
and then R timed ones over one keep-alive connection. Figures are medians; the ratios are
against the reference measured in the same run (getScratch of the home without measures,
and getScratch of the same home for the measures table).

    python benchmarks/bench_measures.py [--jobs 10000] [--requests 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magickbox.testing.homes import BUCKETS, fill_finished_jobs, fill_measures
from magickbox.testing.server import BoxServer


def timed(client: httpx.Client, path: str, requests: int) -> dict:
    first = time.perf_counter()
    client.get(path).raise_for_status()
    first_ms = (time.perf_counter() - first) * 1000
    times = []
    for _ in range(requests):
        t = time.perf_counter()
        resp = client.get(path)
        resp.raise_for_status()
        times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": round(statistics.median(times), 1), "first_ms": round(first_ms, 1),
            "bytes": len(resp.content)}  # fmt: skip


def measure_home(home: Path, paths: list[str], requests: int) -> dict:
    server = BoxServer(home, quiet=3.0, env={"MAGICKBOX_ANNOUNCE": "0"}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            return {path: timed(client, path, requests) for path in paths}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    scratch, table = "/code/php/getScratch.php", f"/api/v1/measures?bucket={BUCKETS[0]}"
    with tempfile.TemporaryDirectory(prefix="mb-bench-measures-") as tmp:
        plain, measured = Path(tmp) / "plain", Path(tmp) / "measured"
        for home in (plain, measured):
            fill_finished_jobs(home, args.jobs, folders=True)
        fill_measures(measured)
        without = measure_home(plain, [scratch], args.requests)
        with_ = measure_home(measured, [scratch, table, table + "&format=csv"], args.requests)
    ref = without[scratch]["median_ms"]
    rows = [("getScratch, no measures (reference)", without[scratch]),
            ("getScratch, 20 measures on every job", with_[scratch]),
            ("/api/v1/measures (JSON), one bucket", with_[table]),
            ("/api/v1/measures?format=csv, one bucket", with_[table + "&format=csv"])]  # fmt: skip
    print(f"Measures and the web API, {args.jobs} finished jobs, {args.requests} requests each")
    print(f"{'endpoint':44} {'median ms':>9} {'first ms':>9} {'MB':>6} {'x reference':>11}")
    for label, r in rows:
        print(f"{label:44} {r['median_ms']:9.1f} {r['first_ms']:9.1f} "
              f"{r['bytes'] / 1e6:6.2f} {r['median_ms'] / ref:11.2f}")  # fmt: skip
    print(json.dumps({"jobs": args.jobs, "without": without, "with": with_}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
