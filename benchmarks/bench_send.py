#!/usr/bin/env python
"""Send benchmark for MagickBox routing (issue 3, "How we will judge it").

Our C-STORE sender (``magickbox.routing.sender``, what a routing send runs) against
dcmtk's ``storescu`` for the same files to the same kind of receiver, dcmtk ``storescp``
(a fresh process and folder per run), one association each, ``TCP_NODELAY=1`` for both
dcmtk tools. Three interleaved repetitions; the median of each is kept. Also measured
in each repetition with ``--with-pynetdicom``: pynetdicom's own ``send_c_store`` (files
sent as they are), which our sender replaced for the transfer phase.

Usage: ``python benchmarks/bench_send.py [--images 2000] [--reps 3]``. Prints a table
and writes ``benchmarks/results/send.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pynetdicom import AE, _config  # noqa: E402

from magickbox.routing import sender  # noqa: E402
from magickbox.testing.dicomgen import write_study  # noqa: E402
from magickbox.testing.server import free_port, wait_listening  # noqa: E402

RESULTS = HERE / "results"
STORESCU = "/usr/bin/storescu"  # pip's pynetdicom installs scripts of the same names
STORESCP = "/usr/bin/storescp"
ENV = {**os.environ, "TCP_NODELAY": "1"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def with_storescp(work: Path, run: Callable[[int], None], expected: int) -> float:
    """Start a fresh storescp, time ``run(port)``, check every file arrived."""
    out = Path(tempfile.mkdtemp(dir=work, prefix="scp-"))
    port = free_port()
    proc = subprocess.Popen(
        [STORESCP, "-aet", "STORE", "+xa", "-od", str(out), str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)
        started = time.perf_counter()
        run(port)
        seconds = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(10)
    got = sum(1 for _ in out.iterdir())
    if got != expected:
        raise RuntimeError(f"storescp received {got} files, expected {expected}")
    subprocess.run(["rm", "-rf", str(out)], check=True)
    return seconds


def run_storescu(folder: Path) -> Callable[[int], None]:
    def run(port: int) -> None:
        cmd = [
            STORESCU,
            "+sd",
            "+r",
            "-nh",
            "-aet",
            "BENCH",
            "-aec",
            "STORE",
            "127.0.0.1",
            str(port),
            str(folder),
        ]
        subprocess.run(cmd, env=ENV, check=True, capture_output=True)

    return run


def run_ours(folder: Path) -> Callable[[int], None]:
    def run(port: int) -> None:
        files = sender.dicom_files(folder)  # a routing send scans its folder too: timed
        report = sender.send(sender.Target("127.0.0.1", port, "BENCH", "STORE", 60), files)
        if report.error or report.refused:
            raise RuntimeError(report.summary(len(files)))

    return run


def run_pynetdicom(folder: Path) -> Callable[[int], None]:
    """The reference: pynetdicom's own send_c_store, files sent as they are (chunked)."""

    def run(port: int) -> None:
        _config.STORE_SEND_CHUNKED_DATASET = True
        files = sender.dicom_files(folder)
        ae = AE(ae_title="BENCH")
        for pair in dict.fromkeys((f.sop_class, f.syntax) for f in files):
            ae.add_requested_context(*pair)
        assoc = ae.associate("127.0.0.1", port, ae_title="STORE")
        try:
            for item in files:
                if int(assoc.send_c_store(item.path).get("Status", -1)) != 0:
                    raise RuntimeError(f"pynetdicom: {item.name} not stored")
        finally:
            assoc.release()

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--with-pynetdicom",
        action="store_true",
        help="also time pynetdicom's send_c_store (slow; it can lose a response and stop)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mb-bench-send-") as tmp:
        work = Path(tmp)
        folder = work / "study"
        log(f"writing {args.images} MR images 256x256")
        write_study(folder, n_images=args.images, rows=256, cols=256, seed=3)
        size = sum(p.stat().st_size for p in folder.iterdir())
        contenders = {"storescu": run_storescu(folder), "ours": run_ours(folder)}
        if args.with_pynetdicom:
            contenders["pynetdicom send_c_store"] = run_pynetdicom(folder)
        times: dict[str, list[float]] = {k: [] for k in contenders}
        for rep in range(args.reps):
            for name, run in contenders.items():
                seconds = with_storescp(work, run, args.images)
                times[name].append(seconds)
                log(f"rep {rep + 1} {name}: {seconds:.2f} s ({args.images / seconds:.0f} img/s)")
    report = summarize(times, args.images, size)
    print(report["table"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "send.json").write_text(json.dumps(report, indent=2))
    return 0


def summarize(times: dict[str, list[float]], images: int, size: int) -> dict[str, object]:
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = images / med["storescu"]
    lines = [
        f"{images} MR 256x256 ({size / 1e6:.0f} MB) to dcmtk storescp, TCP_NODELAY=1, "
        f"median of {len(times['storescu'])} interleaved runs",
        "",
        "| sender | img/s | MB/s | vs storescu |",
        "|---|---|---|---|",
    ]
    for name, seconds in med.items():
        rate = images / seconds
        lines.append(f"| {name} | {rate:.0f} | {size / 1e6 / seconds:.1f} | {rate / ref:.2f} |")
    return {
        "images": images,
        "bytes": size,
        "runs_seconds": times,
        "median_seconds": med,
        "ratio_ours_vs_storescu": round(med["storescu"] / med["ours"], 3),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "table": "\n".join(lines),
    }


if __name__ == "__main__":
    sys.exit(main())
