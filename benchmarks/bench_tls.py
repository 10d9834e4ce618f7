#!/usr/bin/env python
"""DICOM TLS benchmark: what the TLS port costs, against what TLS costs dcmtk itself.

In one run, on the same generated files, dcmtk ``storescu`` sends a study over one
association to (a) our plain DICOM port, (b) our TLS port (mutual TLS: a client
certificate is required and verified), (c) dcmtk ``storescp`` plain and (d) ``storescp
+tls`` (also requiring a client certificate), 3 interleaved repetitions each, median kept,
``TCP_NODELAY=1`` for every dcmtk tool. The figures: images/s of each, and the ratios
TLS/plain for us and for dcmtk, so our TLS overhead is read against dcmtk's on the same
machine at the same moment.

Usage: ``python benchmarks/bench_tls.py [--quick]``; writes ``benchmarks/results/tls.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from magickbox.testing.certs import ThrowawayCA, make_test_ca
from magickbox.testing.dicomgen import write_study
from magickbox.testing.server import BoxServer, dcmtk_tool, free_port, wait_listening

RESULTS = Path(__file__).resolve().parent / "results"
BUCKET = "Bench"
ENV = {**os.environ, "TCP_NODELAY": "1"}


def client_tls(ca: ThrowawayCA) -> list[str]:
    return ["+tls", str(ca.client.key), str(ca.client.cert), "+cf", str(ca.ca)]


def storescu(port: int, folder: Path, tls: list[str]) -> float:
    """Wall seconds of one storescu run (the seed's command form) over one association."""
    cmd = [dcmtk_tool("storescu"), "+sd", "+r", "-nh", "-aet", "BENCH", "-aec", BUCKET,
           *tls, "127.0.0.1", str(port), str(folder)]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"storescu failed: {res.stderr[-1500:]}")
    return time.perf_counter() - t0


def start_box(work: Path, ca: ThrowawayCA) -> tuple[BoxServer, int]:
    home = work / "home"
    bucket = home / "streams" / f"bucket{BUCKET}"
    bucket.mkdir(parents=True)
    (bucket / "info.json").write_text(json.dumps({"AETitle": BUCKET, "enabled": 1}))
    (bucket / "work.sh").write_text("#!/bin/sh\nexit 0\n")
    (bucket / "work.sh").chmod(0o755)
    tls_port = free_port()
    sets = {"dicom_tls_port": tls_port, "dicom_tls_cert": ca.server.cert,
            "dicom_tls_key": ca.server.key, "dicom_tls_ca": ca.ca, "announce": "false"}  # fmt: skip
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    return BoxServer(home, quiet=1.0, extra_args=args).start(), tls_port


def start_storescp(out: Path, tls: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [dcmtk_tool("storescp"), "+xa", "-od", str(out), *tls, str(port)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc)
    return proc, port


def measure(targets: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in targets}
    for rep in range(reps):  # interleaved, so a burst of load hits every target alike
        for name, run in targets.items():
            times[name].append(run())
            print(f"rep {rep + 1} {name}: {times[name][-1]:.2f} s", file=sys.stderr)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 images, 1 repetition")
    args = parser.parse_args()
    n, reps = (50, 1) if args.quick else (500, 3)
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        work = Path(tmp)
        ca = make_test_ca(work / "ca")
        write_study(work / "study", n_images=n, rows=256, cols=256)
        box, tls_port = start_box(work, ca)
        scp_tls = ["+tls", str(ca.server.key), str(ca.server.cert), "+cf", str(ca.ca)]
        plain_scp, plain_port = start_storescp(work / "scp-plain", [])
        tls_scp, tls_scp_port = start_storescp(work / "scp-tls", scp_tls)
        study = work / "study"
        try:
            times = measure({
                "ours plain": lambda: storescu(box.dicom_port, study, []),
                "ours TLS": lambda: storescu(tls_port, study, client_tls(ca)),
                "storescp plain": lambda: storescu(plain_port, study, []),
                "storescp TLS": lambda: storescu(tls_scp_port, study, client_tls(ca)),
            }, reps)  # fmt: skip
        finally:
            box.stop()
            for proc in (plain_scp, tls_scp):
                proc.terminate()
                proc.wait(10)
    rate = {name: n / statistics.median(t) for name, t in times.items()}
    result = {
        "images": n, "repetitions": reps, "seconds": times,
        "images_per_second": {k: round(v, 1) for k, v in rate.items()},
        "ours_tls_over_plain": round(rate["ours TLS"] / rate["ours plain"], 3),
        "storescp_tls_over_plain": round(rate["storescp TLS"] / rate["storescp plain"], 3),
        "ours_tls_over_storescp_tls": round(rate["ours TLS"] / rate["storescp TLS"], 3),
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tls.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
