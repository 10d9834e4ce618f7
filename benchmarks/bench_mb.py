"""``mb push`` and ``mb pull`` against plain ``curl`` with the same data, in one run.

    python benchmarks/bench_mb.py               # 1 GB folder, 3 runs of each
    python benchmarks/bench_mb.py --size-mb 100 --runs 1   # smoke run

A real ``magickbox serve`` (temporary home, announce off) gets a bucket ``Bench`` whose
work.sh hard-links INPUT into OUTPUT, so every job has an OUTPUT as big as the upload.
The folder holds one real DICOM file (the job's StudyInstanceUID) and random 512 KiB
``.dcm`` files up to the size asked for.

- push: ``mb push Bench <folder>`` (zips while uploading) against ``curl -F theFile=@x.zip``
  of a stored zip of the same folder made beforehand (not timed). Both wait for the box's
  answer, which comes after it has saved and unpacked the upload.
- pull: ``mb pull <scratchdir>`` against ``curl -o x.zip getOutputZip.php?folder=``.

Throughput is 10^6 bytes of the folder's files (push) or of the zip (pull) per second of
wall time; peak memory is the client process's maximum resident set (
VmHWM in /proc/PID/status, read every 10 ms). ``mb`` runs in a pipe, so without bars.
Figures are medians; the order of the clients alternates from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import httpx

from magickbox.testing.dicomgen import write_study
from magickbox.testing.server import BoxServer

FILE_BYTES = 512 << 10
BENCH_SH = '#!/bin/sh\ncp -al "$1"/. "$2"/\n'
RESULTS = Path(__file__).parent / "results"


def log(msg: str) -> None:
    print(f"[bench_mb] {msg}", file=sys.stderr, flush=True)


def make_folder(folder: Path, size: int) -> int:
    """One real DICOM file, then random files up to ``size`` bytes; returns the bytes."""
    write_study(folder, n_images=1, rows=64, cols=64, seed=1)
    first = next(folder.iterdir())
    first.rename(folder / "0000.dcm")
    total, i = (folder / "0000.dcm").stat().st_size, 1
    while total < size:
        (folder / f"{i:05d}.dcm").write_bytes(os.urandom(FILE_BYTES))
        total += FILE_BYTES
        i += 1
    return total


def make_zip(folder: Path, dest: Path) -> None:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"{folder.name}/{path.name}")


class Server(BoxServer):
    """A box with a bucket that does nothing, so only the transfers are timed."""

    def __init__(self, work: Path) -> None:
        super().__init__(work / "home", quiet=1.0, env={"MAGICKBOX_ANNOUNCE": "0"})

    def start(self, timeout: float = 60.0) -> Server:
        super().start(timeout)
        bucket = self.home / "streams" / "bucketBench"
        bucket.mkdir(parents=True, exist_ok=True)
        (bucket / "info.json").write_text(
            json.dumps({"name": "Bench", "AETitle": "Bench", "version": "1", "enabled": 1})
        )
        (bucket / "work.sh").write_text(BENCH_SH)
        (bucket / "work.sh").chmod(0o755)
        return self

    def jobs(self) -> list[dict]:
        return httpx.get(f"{self.url}/code/php/getScratch.php", timeout=30).json()

    def wait_done(self, scratchdir: str) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            job = next(j for j in self.jobs() if j["scratchdir"] == scratchdir)
            if job["processingTime"] != "0":
                return
            time.sleep(0.3)
        raise RuntimeError(f"job {scratchdir} did not finish")

    def delete_all(self) -> None:
        for job in self.jobs():
            httpx.get(
                f"{self.url}/code/php/deleteStudy.php",
                params={"scratchdir": job["scratchdir"]},
                timeout=60,
            )


class PeakWatcher(threading.Thread):
    """Reads VmHWM (peak resident set) of a process every 10 ms while it lives.

    Not wait4's ru_maxrss: Linux carries the forking Python's size over the exec into
    it, so every child would look at least as big as this benchmark.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = Path(f"/proc/{pid}/status")
        self.peak = 0
        self._done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._done.is_set():
            self.read()
            self._done.wait(0.01)

    def read(self) -> None:
        try:
            for line in self.path.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
        except (OSError, ValueError):
            pass  # gone, or a zombie without memory: the last reading stands

    def stop(self) -> None:
        self._done.set()
        self.join()


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in bytes, stdout of one client process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as errfh:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=errfh)
        peak = PeakWatcher(proc.pid)
        proc.wait()
        seconds = time.perf_counter() - start
        peak.stop()
        out.seek(0)
        errfh.seek(0)
        text, err = out.read().decode(), errfh.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {err}{text[-500:]}")
    return seconds, peak.peak, text


def run_push(client: str, ctx: dict) -> tuple[float, int, str]:
    server: Server = ctx["server"]
    if client == "mb":
        cmd = [*ctx["mb"], "push", "Bench", str(ctx["folder"])]
        seconds, rss, text = timed(cmd, ctx["env"], ctx["work"])
        return seconds, rss, json.loads(text)[0]["scratchdir"]
    cmd = [
        "curl",
        "-sS",
        "--fail",
        "-F",
        "aetitle=Bench",
        "-F",
        "sender=curl",
        "-F",
        f"theFile=@{ctx['zip']}",
        f"{server.url}/code/php/processZip.php",
    ]
    seconds, rss, text = timed(cmd, ctx["env"], ctx["work"])
    return seconds, rss, json.loads(text)["scratchdir"]


def run_pull(client: str, ctx: dict, scratchdir: str) -> tuple[float, int, int]:
    server: Server = ctx["server"]
    dest = ctx["work"] / "pulled"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    if client == "mb":
        cmd = [*ctx["mb"], "pull", "-d", str(dest), scratchdir]
    else:
        url = f"{server.url}/code/php/getOutputZip.php?folder={scratchdir}"
        cmd = ["curl", "-sS", "--fail", "-o", str(dest / "out.zip"), url]
    seconds, rss, _ = timed(cmd, ctx["env"], ctx["work"])
    (zip_path,) = dest.iterdir()
    size = zip_path.stat().st_size
    with zipfile.ZipFile(zip_path) as zf:
        assert len(zf.namelist()) == ctx["nfiles"], "the pulled zip is incomplete"
    shutil.rmtree(dest)
    return seconds, rss, size


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1000, help="folder size in 10^6 bytes")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_mb-"))
    work.mkdir(parents=True, exist_ok=True)
    server = Server(work)
    try:
        return bench(args, work, server)
    finally:
        server.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, work: Path, server: Server) -> int:
    folder = work / "subject"
    nbytes = make_folder(folder, args.size_mb * 10**6)
    make_zip(folder, work / "subject.zip")
    nfiles = len(list(folder.iterdir()))
    log(f"folder: {nfiles} files, {nbytes / 1e6:.0f} MB; zip {work / 'subject.zip'}")
    server.start()
    config = work / "mbconfig"
    env = {**os.environ, "MB_CONFIG_DIR": str(config)}
    mb = [sys.executable, "-m", "magickbox.mb.cli"]
    subprocess.run(
        [*mb, "activeMachines", "add", "127.0.0.1", str(server.web_port)],
        env=env,
        check=True,
        capture_output=True,
    )
    ctx = {
        "server": server,
        "folder": folder,
        "zip": work / "subject.zip",
        "env": env,
        "mb": mb,
        "work": work,
        "nfiles": nfiles,
    }
    runs: list[dict] = []
    for i in range(args.runs):
        order = ("mb", "curl") if i % 2 == 0 else ("curl", "mb")
        for client in order:
            seconds, rss, scratchdir = run_push(client, ctx)
            server.wait_done(scratchdir)
            pull_s, pull_rss, zip_bytes = run_pull(client, ctx, scratchdir)
            row = {
                "run": i,
                "client": client,
                "push_s": seconds,
                "push_rss": rss,
                "pull_s": pull_s,
                "pull_rss": pull_rss,
                "zip_bytes": zip_bytes,
            }
            log(json.dumps(row))
            runs.append(row)
            server.delete_all()
    report(runs, nbytes, nfiles)
    return 0


def report(runs: list[dict], nbytes: int, nfiles: int) -> None:
    lines = [
        f"folder: {nfiles} files, {nbytes / 1e6:.0f} MB; {platform.node()}, "
        f"{os.cpu_count()} cores; median of {len(runs) // 2} runs",
        "| client | push MB/s | push peak RSS | pull MB/s | pull peak RSS |",
        "|---|---|---|---|---|",
    ]
    summary = {}
    for client in ("mb", "curl"):
        mine = [r for r in runs if r["client"] == client]
        push = nbytes / 1e6 / median([r["push_s"] for r in mine])
        pull = median([r["zip_bytes"] / 1e6 / r["pull_s"] for r in mine])
        push_rss = max(r["push_rss"] for r in mine) / 2**20
        pull_rss = max(r["pull_rss"] for r in mine) / 2**20
        summary[client] = {
            "push_MBps": push,
            "pull_MBps": pull,
            "push_peak_MiB": push_rss,
            "pull_peak_MiB": pull_rss,
        }
        lines.append(
            f"| {client} | {push:.0f} | {push_rss:.0f} MiB | {pull:.0f} | {pull_rss:.0f} MiB |"
        )
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mb.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    (RESULTS / "mb.txt").write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
