"""What asking who you are costs a request: the same calls with auth on (a bearer token,
looked up per request; a trusted network) and off, against one real ``magickbox serve``
each, interleaved, medians of many requests; the ratio is the figure.

    .venv/bin/python benchmarks/bench_auth.py [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from magickbox.testing.server import BoxServer

CALLS = {"api queue": "/api/v1/queue", "getStatus.php": "/code/php/getStatus.php"}


def median_ms(client: httpx.Client, path: str, n: int) -> float:
    client.get(path).raise_for_status()  # warm
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        on = BoxServer(Path(tmp) / "on").start()
        off = BoxServer(Path(tmp) / "off", extra_args=["--set", "auth=false"]).start()
        try:
            result: dict[str, dict[str, float]] = {}
            with httpx.Client(base_url=on.url, headers=on.headers) as token, \
                 httpx.Client(base_url=on.url) as trusted, \
                 httpx.Client(base_url=off.url) as open_:  # fmt: skip
                for name, path in CALLS.items():
                    kinds = ("auth off", "token", "trusted network")
                    rows: dict[str, list[float]] = {kind: [] for kind in kinds}
                    for _ in range(3):  # interleaved rounds
                        rows["auth off"].append(median_ms(open_, path, args.requests))
                        rows["token"].append(median_ms(token, path, args.requests))
                        if path.startswith("/code/php"):
                            rows["trusted network"].append(median_ms(trusted, path, args.requests))
                    figures = {k: round(statistics.median(v), 2) for k, v in rows.items() if v}
                    figures["token / off"] = round(figures["token"] / figures["auth off"], 2)
                    result[name] = figures
        finally:
            on.stop()
            off.stop()
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "auth.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
