#!/usr/bin/env python
"""Receive benchmark for MagickBox (issue 2, "How we will judge it").

Measures, in one run and on the same generated files:

1. receive throughput (images/s, MB/s) of dcmtk ``storescu`` over one association to
   (a) our receiver (a real ``magickbox serve`` whose bucket does nothing),
   (b) dcmtk ``storescp`` and (c) a bare pynetdicom SCP that writes the raw bytes,
   all with ``TCP_NODELAY=1`` on both sides, 5 interleaved repetitions, median kept
   (and the median of each repetition's own ratio to storescp, which a drift of the
   shared machine's speed between repetitions does not move), each timed send after a
   ``sync`` (``written_back``) so that none pays for the previous receiver's writeback,
   on memory kept in use (``WarmMemory``: these VMs hand free memory to their host);
   (d) once to our receiver with the seed's literal command without ``TCP_NODELAY``;
2. the latency from the last image received to the bucket starting, for the default
   quiet window (3 s) and for 1 s;
3. getScratch.php and /api/v1/jobs?limit=100 response times with 10,000 jobs;
4. where the receiver's time goes (py-spy, when installed) and what receiver settings
   (maximum PDU size, pynetdicom's polling delay) change.

Usage: ``python benchmarks/bench_receive.py [--quick]``. Prints tables and writes
``benchmarks/results/receive.json`` (the profile's raw stacks go beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

from magickbox.testing.homes import fill_finished_jobs
from magickbox.testing.server import BoxServer, free_port, wait_listening

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
# pip's pynetdicom installs "storescu"/"storescp" scripts that may shadow dcmtk on PATH.
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
# Nothing received is deleted until the run ends: on ext4, files deleted just before make
# the next creates slow (the inode allocator skips recently freed inodes, a search that
# showed as ~30 % of the receiver's CPU in a kernel profile), and which receiver ran
# after a deletion would decide the figures.
NATIVE = {"MAGICKBOX_RECEIVER": "native"}  # "ours": the default, set so the figures stay ours
BUCKET = "ProcBucket"  # the seed's called AE title; its work.sh is replaced by a no-op
LATENCY_BUCKET = "Latency"
NOOP_WORK_SH = "#!/bin/sh\nexit 0\n"
LATENCY_WORK_SH = '#!/bin/sh\necho "$(date +%s.%N) $MB_SCRATCHDIR" >> "$MB_MEMORY/starts"\n'


# -- small helpers -----------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tool_env(nodelay: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def paired(reference: list[float], ours: list[float]) -> float | None:
    """The median over repetitions of reference seconds / our seconds (our speed against
    the reference's) measured in the same repetition, a few seconds apart: a drift of the
    shared machine's speed between repetitions (±30 % seen) moves both alike and cancels,
    where it moves a ratio of medians taken over the whole run."""
    return median([r / o for r, o in zip(reference, ours, strict=True)]) if ours else None


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def count_files(folder: Path) -> int:
    return sum(len(files) for _root, _dirs, files in os.walk(folder))


# -- the corpus ----------------------------------------------------------------------
@dataclass
class Corpus:
    name: str
    path: Path
    files: int
    nbytes: int
    studies: list[str]

    @property
    def label(self) -> str:
        return self.name


def make_corpus(
    out: Path, name: str, modality: str, studies: int, images: int, seed: int
) -> Corpus:
    path = out / name
    cmd = [
        sys.executable,
        "-m",
        "magickbox.testing.dicomgen",
        str(path),
        "--studies",
        str(studies),
        "--images",
        str(images),
        "--modality",
        modality,
        "--syntax",
        "explicit",
        "--seed",
        str(seed),
        "-q",
    ]
    subprocess.run(cmd, check=True, cwd=REPO)
    files = [p for p in path.rglob("*") if p.is_file()]
    uids = sorted({study_uid_of(p) for p in (next(d.iterdir()) for d in path.iterdir())})
    return Corpus(name, path, len(files), sum(p.stat().st_size for p in files), uids)


def study_uid_of(path: Path) -> str:
    from pydicom import dcmread

    return str(
        dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID
    )


# -- storescu ------------------------------------------------------------------------
class TimedOut(Exception):
    pass


def storescu(
    port: int,
    folder: Path,
    *,
    nodelay: bool = True,
    called: str = BUCKET,
    timeout: float = 600,
    copies: int = 1,
) -> float:
    """Send ``folder`` (``copies`` times over) over one association with the seed's
    command form; wall seconds."""
    cmd = [
        STORESCU,
        "+sd",
        "+r",
        "-nh",
        "-aet",
        "BENCH",
        "-aec",
        called,
        "127.0.0.1",
        str(port),
        *[str(folder)] * copies,
    ]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(
            cmd, env=tool_env(nodelay), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise TimedOut(f"timed out after {timeout:g} s") from exc
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"storescu failed ({res.returncode}): {res.stderr[-2000:]}")
    return elapsed


# -- the receivers -------------------------------------------------------------------
class Box(BoxServer):
    """A real ``magickbox serve`` with its own temporary home (TCP_NODELAY=1 set too)."""

    def __init__(
        self,
        home: Path,
        quiet: float = 1.0,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(home, quiet, env={**tool_env(True), **(env or {})},
                         extra_args=["--log-level", "WARNING"])  # fmt: skip
        self.api = httpx.Client(base_url=self.url, timeout=60)

    def init(self) -> Box:
        subprocess.run(
            [sys.executable, "-m", "magickbox.cli", "init", "--home", str(self.home)],
            check=True,
            cwd=REPO,
            capture_output=True,
        )
        install_bucket(self.home, BUCKET, NOOP_WORK_SH)
        install_bucket(self.home, LATENCY_BUCKET, LATENCY_WORK_SH)
        return self

    def start(self, timeout: float = 60.0) -> Box:
        if not (self.home / "magickbox.toml").exists():
            self.init()
        super().start(timeout)
        self.api.headers.update(self.headers)  # the admin token made at this start
        return self

    def stop(self) -> None:
        super().stop()
        self.api.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def jobs(self) -> list[dict]:
        return self.api.get("/api/v1/jobs", params={"limit": 10_000}).json()["jobs"]

    def settle(self, files: int | None = None, timeout: float = 300) -> list[dict]:
        """Wait until every send became a job (holding ``files`` files in all, when
        given) and every job finished; return the jobs."""
        deadline = time.monotonic() + timeout
        if files is None:  # a send handed over just now may not be a job yet
            time.sleep(self.quiet + 1.0)
        while time.monotonic() < deadline:
            pending = self.api.get("/api/v1/health").json()["pending_sends"]
            jobs = self.jobs()
            complete = files is None or sum(j["files"] for j in jobs) >= files
            if complete and not pending and all(j["state"] in ("done", "failed") for j in jobs):
                return jobs
            time.sleep(0.2)
        raise RuntimeError("the box did not settle")

    def files(self) -> int:
        """Files in all the box's jobs so far."""
        return sum(j["files"] for j in self.jobs())

    def clear(self) -> None:
        """Delete every job and the archive, so that each measurement starts alike."""
        for job in self.jobs():
            self.api.delete(f"/api/v1/jobs/{job['scratchdir']}").raise_for_status()
        archive = self.home / "scratch" / "archive"
        for study in archive.iterdir():
            shutil.rmtree(study, ignore_errors=True)


def install_bucket(home: Path, name: str, work_sh: str) -> None:
    folder = home / "streams" / f"bucket{name}"
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "name": name,
        "description": "benchmark bucket",
        "version": "1",
        "AETitle": name,
        "license": "MIT",
        "enabled": 1,
    }
    (folder / "info.json").write_text(json.dumps(info))
    (folder / "work.sh").write_text(work_sh)
    (folder / "work.sh").chmod(0o755)


class Target:
    """Something storescu sends to; ``session`` yields (port, receiver pid) for one
    measurement."""

    key = ""
    label = ""

    def session(self, corpus: Corpus) -> contextlib.AbstractContextManager[tuple[int, int]]:
        raise NotImplementedError


class OursTarget(Target):
    def __init__(self, box: Box, key: str = "ours", label: str = "MagickBox (ours)") -> None:
        self.box = box
        self.key = key
        self.label = label

    @contextlib.contextmanager
    def session(self, corpus: Corpus) -> Iterator[tuple[int, int]]:
        before = self.box.files()  # earlier runs' jobs stay until the end (see the top)
        yield self.box.dicom_port, self.box.pid
        jobs = self.box.settle(before + corpus.files)
        got = sum(j["files"] for j in jobs) - before
        if got != corpus.files:
            raise RuntimeError(f"{self.key}: {got} of {corpus.files} files became jobs")


class ProcessTarget(Target):
    """A receiver started afresh, with a fresh output folder, for every measurement."""

    def __init__(self, key: str, label: str, work: Path) -> None:
        self.key = key
        self.label = label
        self.work = work

    def command(self, port: int, out: Path) -> list[str]:
        raise NotImplementedError

    @contextlib.contextmanager
    def session(self, corpus: Corpus) -> Iterator[tuple[int, int]]:
        out = Path(tempfile.mkdtemp(prefix=f"{self.key}-", dir=self.work))
        port = free_port()
        proc = subprocess.Popen(
            self.command(port, out),
            env=tool_env(True),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(port, proc)
            yield port, proc.pid
            got = count_files(out)
            if got != corpus.files:
                raise RuntimeError(f"{self.key}: received {got} of {corpus.files} files")
        finally:
            stop_process(proc)  # its folder stays until the end (see the top)


class StorescpTarget(ProcessTarget):
    def command(self, port: int, out: Path) -> list[str]:
        return [STORESCP, "-od", str(out), "+xa", str(port)]


class ForkStorescpTarget(ProcessTarget):
    """storescp as sites run it for several senders: a process per association."""

    def command(self, port: int, out: Path) -> list[str]:
        return [STORESCP, "--fork", "+uf", "-od", str(out), "+xa", str(port)]


class BarePynetdicomTarget(ProcessTarget):
    def command(self, port: int, out: Path) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--bare-scp", str(port), str(out)]


def bare_scp(port: int, out: Path) -> None:
    """The reference: pynetdicom's storescp example reduced to writing the raw bytes."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    def on_store(event) -> int:  # type: ignore[no-untyped-def]
        name = f"{event.request.AffectedSOPInstanceUID}.dcm"
        (out / name).write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="BARE")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, on_store)])


# -- 1. throughput ---------------------------------------------------------------------
@dataclass
class Throughput:
    times: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    server_cpu: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    client_cpu: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, target: str, corpus: str, seconds: float, server: float, client: float) -> None:
        self.times.setdefault((target, corpus), []).append(seconds)
        self.server_cpu.setdefault((target, corpus), []).append(server)
        self.client_cpu.setdefault((target, corpus), []).append(client)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads together."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pids(pid: int) -> list[int]:
    """The box's receiver workers: its children that are forks of it (same command line;
    the buckets it runs are other programs)."""
    found = []
    with contextlib.suppress(OSError):
        own = Path(f"/proc/{pid}/cmdline").read_bytes()
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread may end meanwhile
                for child in (task / "children").read_text().split():
                    with contextlib.suppress(OSError):
                        if Path(f"/proc/{child}/cmdline").read_bytes() == own:
                            found.append(int(child))
    return found


def box_cpu(pid: int) -> float:
    """CPU seconds of a box and its receiver workers, which do most of the receiving."""
    return process_cpu(pid) + sum(process_cpu(child) for child in worker_pids(pid))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_throughput(
    targets: list[Target], corpora: list[Corpus], reps: int, result: Throughput
) -> None:
    warm_up(targets, corpora)
    for rep in range(reps):
        order = rotated(targets, rep)
        for corpus in corpora:
            for target in order:
                with target.session(corpus) as (port, pid):
                    written_back()
                    server0, client0 = box_cpu(pid), children_cpu()
                    seconds = storescu(port, corpus.path)
                    server = box_cpu(pid) - server0
                    client = children_cpu() - client0
                result.add(target.key, corpus.name, seconds, server, client)
                log(
                    f"rep {rep + 1}/{reps} {corpus.name:>3} -> {target.key:<18} {seconds:7.3f} s "
                    f"({corpus.files / seconds:6.0f} images/s; CPU s: receiver {server:.2f}, "
                    f"storescu {client:.2f})"
                )


T = TypeVar("T")


def written_back() -> None:
    """Make the machine alike for every timed send: called right before each, for every
    receiver alike.

    1. Write every dirty page back to disk. These VMs' disk writes ~420 MB/s, about what 4
       associations receive, so the pages one send left dirty slowed whichever send came
       next. That was mostly ours: a box settles its jobs after a send (a second or two of
       writeback for free), storescp does not, and in the rotation of three receivers ours
       followed storescp --fork in two repetitions of three.
    2. Keep the memory warm (:class:`WarmMemory`)."""
    os.sync()
    WARM.top_up()


def kib(path: str, *fields: str) -> int:
    """The sum of the ``fields`` ("Name:" lines in kB) of a /proc file such as meminfo."""
    return sum(int(line.split()[1]) for line in Path(path).read_text().splitlines()
               if line.startswith(fields))  # fmt: skip


def mem_free() -> int:
    """Bytes of memory no one uses, page cache included (MemFree of /proc/meminfo)."""
    return kib("/proc/meminfo", "MemFree:") * 1024


class WarmMemory:
    """Keep the machine's memory in use by the page cache, so that no timed send runs on
    memory the hypervisor has taken back.

    These VMs report free memory to their host (virtio-balloon free page reporting:
    /sys/module/page_reporting), which takes the pages back; the next touch of such a page
    faults to the host. Measured here: 2.8 GB/s to touch memory in use before, 0.35 GB/s to
    touch reported memory, ~11 us per 4 KiB page, ~0.4 ms per 133 KB MR image written.
    A run starts with most of its memory reported (the last run deleted its files), so
    every file the receivers wrote took fresh pages until the page cache had filled the
    memory (~24 GB into a full run): the "slow period" of every run, in which all
    receivers slowed up to 2x, unevenly. A box that has run for a while is past it: its
    page cache fills its memory and a new page is a reclaimed old one.

    So the run reads a sparse file (holes: no disk used) into the page cache until
    little memory is free, and again right before each timed send; its clean
    pages are the first the kernel reclaims when the receivers need pages. On a machine
    that does not report free memory this costs the fill's minute and changes nothing.
    """

    FREE = 512 << 20  # bytes left free: a little above the kernel's high watermarks here
    CHUNK = 64 << 20  # bytes read at a time (and the free memory checked after)
    SIZE = 1 << 40  # the sparse file's length: reads always reach pages not cached yet

    def __init__(self) -> None:
        self.path: Path | None = None
        self.buf = bytearray()  # what is read goes here (made once: it is memory too)
        self.offset = 0
        self.read = 0  # bytes read by the top-ups after the fill
        self.seconds = 0.0

    def start(self, folder: Path) -> dict:
        """Make the sparse file in ``folder`` and fill the memory; what it took."""
        self.path = folder / "warm-memory.sparse"
        with self.path.open("wb") as f:
            f.truncate(self.SIZE)
        self.buf = bytearray(self.CHUNK)
        read, seconds = self.top_up()
        self.read, self.seconds = 0, 0.0
        return {"gb": round(read / 1e9, 2), "seconds": round(seconds, 1),
                "gb_per_s": round(read / 1e9 / seconds, 2) if seconds else None}  # fmt: skip

    def top_up(self) -> tuple[int, float]:
        """Read as much as is free (less FREE): bytes read and seconds.

        Once the cache is full the kernel still keeps ~1.4 GB free here, and the host
        takes free pages back within seconds, so a send would start on them: the read
        puts them to use right before it (the kernel then frees pages that the host
        still backs). It stops at what was free when it began, since the kernel frees
        more as it reads. Whether this top-up matters is not settled: the host took
        back 5.8 GB during a run without it (5b43865, which topped up only above 2 GiB
        free) and 6.4 GB during one with it; the one-association figures swung in that
        run and in two of four with it."""
        if self.path is None:
            return 0, 0.0
        t0, read = time.perf_counter(), 0
        fd = os.open(self.path, os.O_RDONLY)
        try:
            limit = mem_free() - self.FREE
            while read < limit and mem_free() > self.FREE and self.offset < self.SIZE:
                got = os.preadv(fd, [self.buf], self.offset)
                self.offset += got
                read += got
        finally:
            os.close(fd)
        seconds = time.perf_counter() - t0
        self.read += read
        self.seconds += seconds
        return read, seconds


WARM = WarmMemory()
REPORTED = Path("/sys/module/page_reporting/parameters/reported_kib")


def memory_counters() -> dict[str, int]:
    """The kernel's counters of memory handed back to the host (KiB; where it reports
    them) and of reclaim done by allocating processes themselves (pages), which a run's
    figures pay for: read at its start and end, the difference goes into the results."""
    counters: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        counters["reported_to_host_kib"] = int(REPORTED.read_text())
    with contextlib.suppress(OSError):
        for line in Path("/proc/vmstat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name in ("pgsteal_direct", "pgsteal_kswapd") or name.startswith("allocstall_"):
                counters[name] = int(value)
    return counters


def rotated(items: list[T], rep: int) -> list[T]:
    """``items`` in the order of repetition ``rep``: each repetition starts one later, so
    no receiver always runs first (or always after the same one)."""
    shift = rep % len(items)
    return items[shift:] + items[:shift]


def warm_up(targets: list[Target], corpora: list[Corpus]) -> None:
    """One untimed send of each corpus to each target: the first send of a run (its
    buffers' and the machine's fresh pages faulted in, on these VMs) took up to twice as
    long as the next, and the first repetition starts with the same receiver."""
    for corpus in corpora:
        for target in targets:
            with target.session(corpus) as (port, _pid):
                storescu(port, corpus.path)
    log(f"warmed up {len(targets)} receivers with {', '.join(c.name for c in corpora)}")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB (10^6 bytes)."""
    peak = kib(f"/proc/{pid}/status", "VmHWM:")
    if not peak:
        raise RuntimeError(f"no VmHWM for process {pid}")
    return peak * 1024 / 1e6


def private_mb(pid: int) -> float:
    """Memory of a process that is its own (not shared with the box it was forked from)."""
    return kib(f"/proc/{pid}/smaps_rollup", "Private_Clean:", "Private_Dirty:") * 1024 / 1e6


def memory_mb(pid: int) -> dict[str, float]:
    """The box's peak RSS, its workers' largest peak RSS (pages shared with the box are
    counted in both) and the memory the workers hold of their own, together."""
    workers = worker_pids(pid)
    return {
        "box": round(peak_rss_mb(pid), 1),
        "worker": round(max((peak_rss_mb(w) for w in workers), default=0.0), 1),
        "workers' own": round(sum(private_mb(w) for w in workers), 1),
    }


def measure_memory(work: Path, corpus: Corpus, copies: int = 3) -> dict:
    """Peak RSS of a fresh box (native receiver) after its start, after one send of
    ``corpus``, and after one association carrying it ``copies`` times over (the same
    files again: duplicates of acknowledged data sets, stored once): constant memory
    means the last two peaks are alike whatever the size of the send."""
    box = Box(work / "home-memory", env=NATIVE).start()
    try:
        started = memory_mb(box.pid)
        storescu(box.dicom_port, corpus.path)
        box.settle(corpus.files)
        one = memory_mb(box.pid)
        storescu(box.dicom_port, corpus.path, copies=copies)
        box.settle()
        many = memory_mb(box.pid)
    finally:
        box.stop()
    stages = {
        "after start": started,
        f"after 1 send of {corpus.files}": one,
        f"after 1 send of {copies * corpus.files}": many,
    }
    entry = {
        "corpus": corpus.name,
        "images": corpus.files,
        "copies": copies,
        "peak_rss_mb": {stage: got["box"] for stage, got in stages.items()},
        "worker_peak_rss_mb": {stage: got["worker"] for stage, got in stages.items()},
        "workers_own_mb": {stage: got["workers' own"] for stage, got in stages.items()},
    }
    log(f"peak RSS: box {entry['peak_rss_mb']}, a worker {entry['worker_peak_rss_mb']}, "
        f"workers' own memory {entry['workers_own_mb']}")  # fmt: skip
    return entry


# Sends of both corpora that stay on disk until the run ends, per repetition: five
# receivers, the settings variants (MR), the memory box; and per repetition of the
# concurrent case, 3 x 4 associations (workers, threads, storescp --fork).
SENDS_KEPT_PER_REP = 5 + 3 + 2
SENDS_KEPT_PER_CONCURRENT_REP = 12
# The 4-association case swings the most from run to run (4 senders and their receivers
# on 2 shared cores), so its median takes more repetitions than the others by default.
CONCURRENT_REPS = 9
BOX_RESERVE = 0.05  # the boxes' disk_reserve default: below it they refuse the sends


def check_room(work: Path, corpora_bytes: int, reps: int, concurrent_reps: int) -> None:
    """Stop at once, saying why, when what the run keeps would not fit above the boxes'
    disk reserve (they would refuse sends half-way through)."""
    usage = shutil.disk_usage(work)
    sends = SENDS_KEPT_PER_REP * reps + SENDS_KEPT_PER_CONCURRENT_REP * concurrent_reps
    need = corpora_bytes * sends + int(usage.total * BOX_RESERVE)
    if usage.free < need:
        raise SystemExit(
            f"{work} has {usage.free / 1e9:.1f} GB free; this run keeps what it receives "
            f"until the end and needs about {need / 1e9:.1f} GB (with the boxes' 5 % "
            "reserve): free some space or pass --work on a larger filesystem"
        )


def send_concurrently(port: int, folder: Path, n: int, timeout: float = 600) -> float:
    """``n`` storescu sends of ``folder`` at once, each its own calling AE; wall seconds."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                STORESCU,
                "+sd",
                "+r",
                "-nh",
                "-aet",
                f"BENCH{i}",
                "-aec",
                BUCKET,
                "127.0.0.1",
                str(port),
                str(folder),
            ],
            env=tool_env(True),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(n)
    ]
    codes = [proc.wait(timeout=timeout) for proc in procs]
    elapsed = time.perf_counter() - t0
    if any(codes):
        raise RuntimeError(f"concurrent storescu exit codes {codes}")
    return elapsed


def measure_concurrent(
    ours: Box, work: Path, corpus: Corpus, n: int, reps: int, threads: Box | None = None
) -> dict:
    """Aggregate images/s of ``n`` associations at once: ours (and, given ``threads``, ours
    with every association on a thread of the box) vs storescp --fork."""
    boxes = {"ours": ours, **({"ours, threads": threads} if threads is not None else {})}
    keys = [*boxes, "storescp --fork"]
    times: dict[str, list[float]] = {key: [] for key in keys}
    for rep in range(reps):
        for key in rotated(keys, rep):
            written_back()
            box = boxes.get(key)
            if box is None:
                times[key].append(send_to_fork(work, corpus, n))
                continue
            before = box.files()
            seconds = send_concurrently(box.dicom_port, corpus.path, n)
            got = sum(j["files"] for j in box.settle(before + n * corpus.files)) - before
            if got != n * corpus.files:
                raise RuntimeError(f"{key}: {got} of {n * corpus.files} files became jobs")
            times[key].append(seconds)
        log(f"rep {rep + 1}/{reps} {n} associations x {corpus.name}: "
            + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))  # fmt: skip
    rates = {k: n * corpus.files / (median(v) or 1) for k, v in times.items()}
    return {
        "corpus": corpus.name,
        "associations": n,
        "images": n * corpus.files,
        "images_per_s": {k: round(v, 1) for k, v in rates.items()},
        "runs_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "ours/storescp --fork": round(rates["ours"] / rates["storescp --fork"], 3),
        "ours/storescp --fork, paired": round(
            paired(times["storescp --fork"], times["ours"]) or 0, 3
        ),
        **(
            {"threads/storescp --fork": round(rates["ours, threads"] / rates["storescp --fork"], 3)}
            if threads is not None
            else {}
        ),
    }


def send_to_fork(work: Path, corpus: Corpus, n: int) -> float:
    """``n`` concurrent sends of ``corpus`` to a fresh ``storescp --fork``; wall seconds."""
    fork = ForkStorescpTarget("storescp-fork", "dcmtk storescp --fork", work)
    out = Path(tempfile.mkdtemp(prefix="fork-", dir=work))
    port = free_port()
    proc = subprocess.Popen(fork.command(port, out), env=tool_env(True),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_listening(port, proc)
        seconds = send_concurrently(port, corpus.path, n)
        if count_files(out) != n * corpus.files:
            raise RuntimeError(f"storescp --fork: {count_files(out)} of {n * corpus.files}")
        return seconds
    finally:
        stop_process(proc)  # its folder stays until the end (see the top)


def throughput_rows(result: Throughput, corpora: list[Corpus], targets: list[Target]) -> list[dict]:
    rows = []
    for corpus in corpora:
        for target in targets:
            times = result.times.get((target.key, corpus.name), [])
            med = median(times)
            rows.append(
                {
                    "corpus": corpus.name,
                    "target": target.key,
                    "label": target.label,
                    "times_s": [round(t, 4) for t in times],
                    "median_s": round(med, 4) if med else None,
                    "images_per_s": round(corpus.files / med, 1) if med else None,
                    "mb_per_s": round(corpus.nbytes / 1e6 / med, 1) if med else None,
                    "receiver_cpu_ms_per_image": per_image(
                        result.server_cpu.get((target.key, corpus.name), []), corpus.files
                    ),
                    "storescu_cpu_ms_per_image": per_image(
                        result.client_cpu.get((target.key, corpus.name), []), corpus.files
                    ),
                }
            )
    return rows


def per_image(cpu_seconds: list[float], images: int) -> float | None:
    med = median(cpu_seconds)
    return None if med is None else round(1000 * med / images, 3)


# -- 2. latency ------------------------------------------------------------------------
def measure_latency(work: Path, corpora: list[Corpus], quiet: float, reps: int) -> dict:
    box = Box(work / f"home-latency-{quiet:g}", quiet=quiet, env=NATIVE).start()
    starts = box.home / "memory" / LATENCY_BUCKET / "starts"
    out: dict = {"quiet_seconds": quiet, "corpora": {}}
    try:
        for corpus in corpora:
            samples = []
            for _ in range(reps):
                seen = len(starts.read_text().splitlines()) if starts.exists() else 0
                storescu(box.dicom_port, corpus.path, called=LATENCY_BUCKET)
                returned = time.time()
                deadline = time.monotonic() + quiet + 60
                lines: list[str] = []
                while time.monotonic() < deadline:
                    lines = starts.read_text().splitlines() if starts.exists() else []
                    if len(lines) > seen:
                        break
                    time.sleep(0.02)
                else:
                    raise RuntimeError("the latency bucket never started")
                stamp, scratchdir = lines[seen].split()
                started = float(stamp)
                box.settle(corpus.files)
                inputs = box.home / "scratch" / scratchdir / "INPUT"
                last_file = max(p.stat().st_mtime for p in inputs.iterdir())
                samples.append(
                    {
                        "from_last_file_s": round(started - last_file, 3),
                        "from_storescu_return_s": round(started - returned, 3),
                    }
                )
                box.clear()
                log(f"latency quiet={quiet:g} {corpus.name}: {samples[-1]}")
            out["corpora"][corpus.name] = {
                "samples": samples,
                "median_from_last_file_s": median([s["from_last_file_s"] for s in samples]),
                "median_from_storescu_return_s": median(
                    [s["from_storescu_return_s"] for s in samples]
                ),
            }
    finally:
        box.stop()
    return out


# -- 3. the web API with 10,000 jobs ---------------------------------------------------
def measure_api(work: Path, njobs: int, requests: int) -> dict:
    home = work / "home-api"
    t0 = time.perf_counter()
    fill_finished_jobs(home, njobs, folders=True)
    log(f"{njobs} jobs made in {time.perf_counter() - t0:.1f} s")
    box = Box(home, quiet=3.0)
    install_bucket(home, BUCKET, NOOP_WORK_SH)
    box.start()
    out: dict = {"jobs": njobs, "requests": requests, "endpoints": {}}
    try:
        for path, check in (
            ("/code/php/getScratch.php", lambda body: len(body) == njobs),
            (
                "/api/v1/jobs?limit=100",
                lambda body: body["total"] == njobs and len(body["jobs"]) == 100,
            ),
        ):
            first = time.perf_counter()
            resp = box.api.get(path)
            first_ms = (time.perf_counter() - first) * 1000
            resp.raise_for_status()
            if not check(resp.json()):
                raise RuntimeError(f"{path}: unexpected answer")
            times = []
            for _ in range(requests):
                t = time.perf_counter()
                resp = box.api.get(path)
                resp.raise_for_status()
                times.append((time.perf_counter() - t) * 1000)
            out["endpoints"][path] = {
                "first_ms": round(first_ms, 1),
                "median_ms": round(median(times) or 0, 1),
                "p95_ms": round(p95(times) or 0, 1),
                "max_ms": round(max(times), 1),
                "bytes": len(resp.content),
            }
            log(f"{path}: {out['endpoints'][path]}")
    finally:
        box.stop()
    return out


# -- 4. profile and settings -------------------------------------------------------------
def profile_receiver(work: Path, corpus: Corpus) -> dict:
    """py-spy samples of the server (all threads, idle ones too) during one send."""
    beside = Path(sys.executable).parent / "py-spy"  # pip install py-spy into the venv
    pyspy = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
    if not pyspy:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    box = Box(work / "home-profile", env=NATIVE).start()
    raw = RESULTS / "receive-profile.txt"
    try:
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "--pid",
                str(box.pid),
                "--idle",
                "--threads",
                "--rate",
                str(PROFILE_RATE),
                "--format",
                "raw",
                "--output",
                str(raw),
                "--nonblocking",
                "--subprocesses",  # the receiver workers, where the data sets are received
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.5)  # py-spy attaches
        seconds = storescu(box.dicom_port, corpus.path)
        spy.send_signal(signal.SIGINT)
        _out, err = spy.communicate(timeout=60)
        box.settle(corpus.files)
    finally:
        box.stop()
    if not raw.exists():
        return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-500:]}"}
    summary = summarize_profile(raw, corpus.files)
    summary["send_seconds_under_profiler"] = round(seconds, 3)
    summary["raw_stacks"] = str(raw.relative_to(REPO))
    return summary


PROFILE_RATE = 250  # py-spy samples per second and thread

# What a sample of each thread was doing: the first rule whose pattern is in the stack
# (or, for "SLEEP", whose innermost line of source calls sleep) names it.
ASSOC_RULES = [
    ("SLEEP", "waiting: reactor's 1 ms polling sleep"),
    ("check_stored_file", "ours: structure walk + StudyInstanceUID (one pass)"),
    ("read_study_uid", "ours: read StudyInstanceUID (pydicom read_partial)"),
    ("add_file", "ours: grouping + rename into the send folder"),
    ("_on_store", "ours: rest of the C-STORE handler"),
    ("send_msg", "pynetdicom: encode + queue the C-STORE-RSP"),
    ("_TemporaryFileCloser", "pynetdicom: close the dataset's temp file"),
    ("service_class.py", "pynetdicom: storage service, events, status"),
    ("", "pynetdicom: reactor loop checks"),
]
# The native receiver's association thread (receive/native.py)
NATIVE_RULES = [
    ("_recv_into", "socket: waiting for and reading the peer's PDUs"),
    ("_respond", "socket: send the C-STORE-RSP"),
    ("walk_buffer", "structure walk + StudyInstanceUID (in memory)"),
    ("write_all", "write the file as it arrives (writev)"),
    ("Spare.__init__", "create the next data set's file (after the response)"),
    ("Spare.close", "close the file"),
    ("refused_write", "disk reserve check (statfs, or a recent look)"),
    ("SeriesSet.add", "series views"),
    ("add_file", "grouping + rename into the arrival folder"),
    ("Intake.examine", "study key, SOP Instance UID, checks"),
    ("Intake.received", "metrics (after the response)"),
    ("parse_request", "command set decode"),
    ("file_meta", "file meta of the stored file"),
    ("_fragment", "copy fragments into the data set buffer"),
    ("", "rest of the transfer loop"),
]
DUL_RULES = [
    ("SLEEP", "waiting: reactor's 1 ms polling sleep when idle"),
    ("tempfile.py", "pynetdicom: NamedTemporaryFile per dataset (incl. GIL wait)"),
    ("write_file_meta_info", "pynetdicom: write file meta"),
    ("create_file_meta", "pynetdicom: write file meta"),
    ("FLUSH", "pynetdicom: write + flush every P-DATA fragment"),
    ("decode_msg", "pynetdicom: DIMSE decode (command set)"),
    ("_read_pdu_data", "pynetdicom: socket recv + PDU decode"),
    ("_is_transport_event", "pynetdicom: select() poll of the socket"),
    ("_send", "pynetdicom: send PDU"),
    ("", "pynetdicom: reactor loop, state machine, timers"),
]


def source_line(frame: str) -> str:
    """The source text of a py-spy frame such as ``f (pynetdicom/dul.py:403)``."""
    import linecache

    m = re.search(r"\((.+):(\d+)\)$", frame)
    if not m:
        return ""
    rel, lineno = m.group(1), int(m.group(2))
    for base in ["", *sys.path]:
        path = os.path.join(base, rel) if base else rel
        if os.path.isfile(path):
            return linecache.getline(path, lineno)
    return ""


def classify(stack: str, leaf: str, rules: list[tuple[str, str]]) -> str:
    for pattern, name in rules:
        if pattern == "SLEEP":
            if "sleep(" in source_line(leaf):
                return name
        elif pattern == "FLUSH":
            text = source_line(leaf)
            if "decode_msg" in leaf and ("write(" in text or "flush(" in text):
                return name
            if "decode_msg" in stack and ("write (" in leaf or "flush (" in leaf):
                return name
        elif pattern in stack:
            return name
    return rules[-1][1]


def summarize_profile(raw: Path, images: int, rate: int = PROFILE_RATE) -> dict:
    kinds: Counter[str] = Counter()
    cats: dict[str, Counter[str]] = {"association": Counter(), "dul": Counter(),
                                     "native": Counter()}  # fmt: skip
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        leaf = stack.rsplit(";", 1)[-1]
        if "receive/native.py" in stack and "_transfer" in stack:
            kind = "native association"
            cats["native"][classify(stack, leaf, NATIVE_RULES)] += count
        elif "DULServiceProvider.run_reactor" in stack:
            kind = "dul"
            cats[kind][classify(stack, leaf, DUL_RULES)] += count
        elif "Association.run_reactor" in stack:
            if "receive_pdu" in stack and "_run_reactor" not in stack:
                kind = "association (waiting for A-ASSOCIATE-RQ)"
            else:
                kind = "association"
                cats[kind][classify(stack, leaf, ASSOC_RULES)] += count
        else:
            kind = stack.split(";", 1)[0].split(": ", 1)[-1].split("@")[0]
        kinds[kind] += count

    def table(counter: Counter[str]) -> list[dict]:
        total = sum(counter.values()) or 1
        return [
            {
                "where": k,
                "percent": round(100 * v / total, 1),
                "ms_per_image": round(1000 * v / rate / images, 3),
            }
            for k, v in counter.most_common()
        ]

    return {
        "rate_hz": rate,
        "images": images,
        "samples_by_thread": dict(kinds.most_common()),
        "association_thread": table(cats["association"]),
        "dul_thread": table(cats["dul"]),
        "native_thread": table(cats["native"]),
    }


def settings_variants(work: Path) -> list[tuple[str, str, Box]]:
    """Native receiver variants for the settings experiment: (key, label, box)."""
    return [
        (
            "pdu16k",
            "ours, max_pdu=16382 (pynetdicom's default)",
            Box(work / "home-pdu16k", env={"MAGICKBOX_MAX_PDU": "16382", **NATIVE}),
        ),
        (
            "pdu1m",
            "ours, max_pdu=1048576",
            Box(work / "home-pdu1m", env={"MAGICKBOX_MAX_PDU": "1048576", **NATIVE}),
        ),
        (
            "threads",
            "ours, receiver_processes=0 (threads)",
            Box(work / "home-threads", env=THREADS),
        ),
    ]


# -- report ----------------------------------------------------------------------------
def print_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join("-" * w for w in widths)
    text = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    for row in rows:
        text.append(
            "  ".join(
                str(c).rjust(w) if i else str(c).ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    out = "\n".join(text) + "\n"
    print(out)
    return out


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(data: dict) -> str:
    parts = []
    rows = []
    for r in data["throughput"]["rows"]:
        rows.append(
            [
                f"{r['corpus']} {r['label']}",
                fmt(r["median_s"], 3),
                fmt(r["images_per_s"]),
                fmt(r["mb_per_s"], 1),
                fmt(r["receiver_cpu_ms_per_image"], 2),
                fmt(r["storescu_cpu_ms_per_image"], 2),
                " ".join(f"{t:.2f}" for t in r["times_s"]),
            ]
        )
    for r in data["throughput"].get("nagle", []):
        rows.append(
            [
                f"{r['corpus']} ours, seed's literal command, no TCP_NODELAY",
                fmt(r.get("seconds"), 3) if r.get("seconds") else r["result"],
                fmt(r.get("images_per_s")),
                fmt(r.get("mb_per_s"), 1),
                "-",
                "-",
                "1 run",
            ]
        )
    parts.append(
        print_table(
            f"1. Receive throughput: dcmtk storescu, one association, TCP_NODELAY=1 both sides, "
            f"median of {data['config']['reps']} interleaved runs",
            [
                "corpus / receiver",
                "median s",
                "images/s",
                "MB/s",
                "rcv CPU ms/img",
                "scu CPU ms/img",
                "runs (s)",
            ],
            rows,
        )
    )
    ratio_rows = [
        [
            c,
            fmt(v.get("ours/storescp"), 2),
            fmt(v.get("ours/storescp, paired"), 2),
            fmt(v.get("ours/pynetdicom"), 2),
            fmt(v.get("native/pynetdicom receiver"), 2),
        ]
        for c, v in data["throughput"]["ratios"].items()
    ]
    ratio_rows += [
        [
            f"{r['corpus']}, {r['associations']} associations at once (ours / storescp --fork)",
            fmt(r["ours/storescp --fork"], 2),
            fmt(r.get("ours/storescp --fork, paired"), 2),
            "-",
            "-",
        ]
        for r in data.get("concurrent", [])
    ]
    ratio_rows += [
        [
            f"{r['corpus']}, {r['associations']} associations, receiver_processes=0 "
            "(threads / storescp --fork)",
            fmt(r["threads/storescp --fork"], 2),
            "-",
            "-",
            "-",
        ]
        for r in data.get("concurrent", [])
        if "threads/storescp --fork" in r
    ]
    parts.append(
        print_table(
            "   Ratios of throughput (images/s): of the medians, and paired (the median of each "
            "repetition's own ratio)",
            [
                "corpus",
                "ours/storescp",
                "paired",
                "ours/bare pynetdicom",
                "native/pynetdicom receiver",
            ],
            ratio_rows,
        )
    )
    if data.get("concurrent"):
        parts.append(
            print_table(
                f"   4 associations at once: median of {data['config'].get('concurrent_reps')} "
                "interleaved runs",
                ["corpus / receiver", "images/s", "runs (s)"],
                [
                    [
                        f"{r['corpus']} {key}",
                        fmt(rate),
                        " ".join(f"{x:.2f}" for x in r.get("runs_s", {}).get(key, [])),
                    ]
                    for r in data["concurrent"]
                    for key, rate in r["images_per_s"].items()
                ],
            )
        )
    if data.get("memory"):
        kinds = {
            "peak_rss_mb": "box, peak RSS",
            "worker_peak_rss_mb": "largest worker, peak RSS",
            "workers_own_mb": "workers' own memory, together",
        }
        rows = [
            [m["corpus"], label, *(fmt(v, 1) for v in m[kind].values())]
            for m in data["memory"]
            for kind, label in kinds.items()
            if kind in m
        ]
        parts.append(
            print_table(
                "   Memory (MB), native receiver, a fresh box per corpus: the box's VmHWM, a "
                "worker's VmHWM (pages shared with the box counted too), the workers' private "
                "pages",
                ["corpus", "what", *data["memory"][0]["peak_rss_mb"].keys()],
                rows,
            )
        )
    if data.get("settings"):
        rows = [
            [
                r["label"],
                fmt(r["median_s"], 3),
                fmt(r["images_per_s"]),
                fmt(r["mb_per_s"], 1),
                fmt(r["receiver_cpu_ms_per_image"], 2),
                " ".join(f"{t:.2f}" for t in r["times_s"]),
            ]
            for r in data["settings"]["rows"]
        ]
        parts.append(
            print_table(
                f"4b. Receiver settings ({data['settings']['corpus']}, same method)",
                ["receiver", "median s", "images/s", "MB/s", "rcv CPU ms/img", "runs (s)"],
                rows,
            )
        )
    rows = []
    for lat in data["latency"]:
        for name, c in lat["corpora"].items():
            rows.append(
                [
                    f"{lat['quiet_seconds']:g} s",
                    name,
                    fmt(c["median_from_last_file_s"], 3),
                    fmt(c["median_from_storescu_return_s"], 3),
                    fmt(lat["quiet_seconds"] + 1.0, 1),
                ]
            )
    parts.append(
        print_table(
            "2. Last image received -> bucket started (median; aim: quiet window + < 1 s)",
            [
                "quiet window",
                "corpus",
                "from newest INPUT mtime s",
                "from storescu exit s",
                "aim < s",
            ],
            rows,
        )
    )
    api = data["api"]
    rows = [
        [
            path,
            fmt(e["median_ms"], 1),
            fmt(e["p95_ms"], 1),
            fmt(e["first_ms"], 1),
            f"{e['bytes'] / 1e6:.2f}",
        ]
        for path, e in api["endpoints"].items()
    ]
    parts.append(
        print_table(
            f"3. Web API with {api['jobs']} jobs ({api['requests']} requests each; aim < 100 ms)",
            ["endpoint", "median ms", "p95 ms", "first ms", "MB"],
            rows,
        )
    )
    prof = data.get("profile", {})
    for key, title in (
        ("association_thread", "association reactor thread"),
        ("dul_thread", "DUL reactor thread"),
        ("native_thread", "native receiver's association thread"),
    ):
        if prof.get(key):
            rows = [
                [r["where"], f"{r['percent']:.1f}", f"{r['ms_per_image']:.3f}"] for r in prof[key]
            ]
            parts.append(
                print_table(
                    f"4a. Profile of our receiver, {prof['images']} MR images in "
                    f"{prof['send_seconds_under_profiler']:.2f} s = "
                    f"{1000 * prof['send_seconds_under_profiler'] / prof['images']:.2f} ms/image "
                    f"(py-spy {prof['rate_hz']} Hz, idle included): {title}",
                    ["where", "% of samples", "ms per image"],
                    rows,
                )
            )
    if prof.get("skipped"):
        parts.append(print_table("4a. Profile", ["skipped"], [[prof["skipped"]]]))
    config = data["config"]
    memory = [("filled at the start", "memory_warm_up"), ("topped up in all", "memory_top_ups"),
              ("counters over the run", "memory_counters")]  # fmt: skip
    parts.append(
        print_table(
            "Memory (WarmMemory: filled at the start, topped up before each timed send)",
            ["", "figures"],
            [[label, str(config.get(key))] for label, key in memory],
        )
    )
    return "\n".join(parts)


# -- main ------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small corpora, one run each, no Nagle case or settings experiment",
    )
    parser.add_argument("--reps", type=int, help="repetitions per measurement (default 5)")
    parser.add_argument(
        "--concurrent-reps",
        type=int,
        help=f"repetitions of the 4-association case (default {CONCURRENT_REPS}, or --reps "
        "when given)",
    )
    parser.add_argument(
        "--nagle-timeout", type=float, default=150.0, help="cap of the no-TCP_NODELAY send, seconds"
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="where to make the run's scratch folder (default: the system's temp)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's scratch folder")
    parser.add_argument(
        "--views",
        action="store_true",
        help="only the cost of series views: ours with views on and off, interleaved, and "
        "the views' own CPU per image in-process (--images per corpus, default 500)",
    )
    parser.add_argument("--images", type=int, default=500, help="images per corpus for --views")
    parser.add_argument("--bare-scp", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.bare_scp:
        bare_scp(int(args.bare_scp[0]), Path(args.bare_scp[1]))
        return 0
    if rest:
        parser.error(f"unknown arguments {rest}")
    for tool in (STORESCU, STORESCP):
        if not os.access(tool, os.X_OK):
            parser.error(f"{tool} is missing: apt-get install dcmtk")

    if args.views:
        return views_only(args.images, args.reps or 5, args.work, args.keep)
    quick = args.quick
    reps = args.reps or (1 if quick else 5)
    concurrent_reps = args.concurrent_reps or args.reps or (1 if quick else CONCURRENT_REPS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mb-bench-", dir=args.work))
    data: dict = {
        "config": {
            "quick": quick,
            "reps": reps,
            "concurrent_reps": concurrent_reps,
            "sync_before_each_send": True,  # written_back(); earlier runs' figures had none
            "memory_warm": True,  # WarmMemory; runs before 2026-12-08 03:30 had none
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
            f"Python {platform.python_version()}",
            "storescu": f"{STORESCU} +sd +r -nh -aet BENCH -aec {BUCKET} 127.0.0.1 PORT DIR",
            "commit": git_commit(),
        },
    }
    boxes: list[Box] = []
    counters = memory_counters()
    try:
        log(f"work folder {work}")
        warmed = data["config"]["memory_warm_up"] = WARM.start(work)
        log(f"filled the memory with a sparse file's page cache: {warmed}")
        mr = make_corpus(work, "MR", "MR", 2, 250 if quick else 1000, 1)
        ct = make_corpus(work, "CT", "CT", 1, 50 if quick else 200, 2)
        corpora = [mr, ct]
        data["corpora"] = [
            {"name": c.name, "files": c.files, "bytes": c.nbytes, "studies": len(c.studies)}
            for c in corpora
        ]
        for c in corpora:
            log(
                f"corpus {c.name}: {c.files} files, {c.nbytes / 1e6:.1f} MB, "
                f"{len(c.studies)} studies"
            )
        check_room(work, sum(c.nbytes for c in corpora), reps, concurrent_reps)

        # 1. throughput
        ours_box = Box(work / "home-ours", env=NATIVE).start()
        boxes.append(ours_box)
        # The same box on pynetdicom's server (receiver = "pynetdicom"): the native
        # receiver's gain, measured in the same run.
        pyn_box = Box(work / "home-pyn", env={"MAGICKBOX_RECEIVER": "pynetdicom"}).start()
        boxes.append(pyn_box)
        noviews_box = Box(work / "home-noviews", env=NO_VIEWS).start()
        boxes.append(noviews_box)
        targets: list[Target] = [
            OursTarget(ours_box),
            OursTarget(pyn_box, "ours-pynetdicom", "MagickBox, receiver = pynetdicom"),
            OursTarget(noviews_box, "ours-noviews", "MagickBox, series_views = false"),
            StorescpTarget("storescp", "dcmtk storescp", work),
            BarePynetdicomTarget("pynetdicom", "bare pynetdicom SCP (writes raw bytes)", work),
        ]
        tp = Throughput()
        measure_throughput(targets, corpora, reps, tp)
        rows = throughput_rows(tp, corpora, targets)
        by = {(r["corpus"], r["target"]): r for r in rows}
        ratios = {}
        for c in corpora:
            ours = by[(c.name, "ours")]["images_per_s"]
            ratios[c.name] = {
                "ours/storescp": round(ours / by[(c.name, "storescp")]["images_per_s"], 3),
                "ours/storescp, paired": round(
                    paired(tp.times[("storescp", c.name)], tp.times[("ours", c.name)]) or 0, 3
                ),
                "ours/pynetdicom": round(ours / by[(c.name, "pynetdicom")]["images_per_s"], 3),
                "native/pynetdicom receiver": round(
                    ours / by[(c.name, "ours-pynetdicom")]["images_per_s"], 3
                ),
                "ours/ours-noviews": round(ours / by[(c.name, "ours-noviews")]["images_per_s"], 3),
            }
        data["throughput"] = {"rows": rows, "ratios": ratios, "nagle": []}
        data["views"] = views_cost(rows, corpora)
        for extra in (pyn_box, noviews_box):
            extra.stop()
            boxes.remove(extra)
        threads_box = Box(work / "home-threads4", env=THREADS).start()
        boxes.append(threads_box)
        data["concurrent"] = [
            measure_concurrent(ours_box, work, c, 4, concurrent_reps, threads_box) for c in corpora
        ]
        threads_box.stop()
        boxes.remove(threads_box)
        data["memory"] = [measure_memory(work, c) for c in corpora]
        if not quick:
            for c in corpora:
                entry: dict = {"corpus": c.name, "timeout_s": args.nagle_timeout}
                try:
                    with OursTarget(ours_box).session(c) as (port, _pid):
                        seconds = storescu(port, c.path, nodelay=False, timeout=args.nagle_timeout)
                    entry.update(
                        seconds=round(seconds, 3),
                        result="ok",
                        images_per_s=round(c.files / seconds, 1),
                        mb_per_s=round(c.nbytes / 1e6 / seconds, 1),
                    )
                except TimedOut as exc:
                    entry.update(result=str(exc))
                    ours_box.settle()
                    ours_box.clear()
                log(f"no TCP_NODELAY, {c.name} -> ours: {entry}")
                data["throughput"]["nagle"].append(entry)

        # 4b. receiver settings (each variant its own server, runs interleaved)
        if not quick:
            variants = settings_variants(work)
            vtargets: list[Target] = [OursTarget(ours_box, "ours", "ours, defaults (max_pdu=0)")]
            for key, label, box in variants:
                boxes.append(box.start())
                vtargets.append(OursTarget(box, key, label))
            vt = Throughput()
            measure_throughput(vtargets, [mr], reps, vt)
            data["settings"] = {"corpus": mr.name, "rows": throughput_rows(vt, [mr], vtargets)}
            for box in boxes[1:]:
                box.stop()
            del boxes[1:]
        ours_box.stop()
        boxes.clear()

        # 2. latency
        data["latency"] = [
            measure_latency(work, [ct, mr_study(mr, work)], quiet, reps) for quiet in (3.0, 1.0)
        ]
        # 3. web API
        data["api"] = measure_api(work, 2000 if quick else 10_000, 20)
        # 4a. profile
        data["profile"] = profile_receiver(work, mr)
    finally:
        for box in boxes:
            box.stop()
        data["config"]["memory_top_ups"] = {"gb": round(WARM.read / 1e9, 2),
                                            "seconds": round(WARM.seconds, 1)}  # fmt: skip
        data["config"]["memory_counters"] = {
            k: v - counters.get(k, 0) for k, v in memory_counters().items()
        }
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = report(data)
    (RESULTS / "receive.json").write_text(json.dumps(data, indent=2))
    (RESULTS / "receive.txt").write_text(text)
    log(f"wrote {RESULTS / 'receive.json'}")
    return 0


# -- 5. series views ------------------------------------------------------------------
NO_VIEWS = {"MAGICKBOX_SERIES_VIEWS": "false", **NATIVE}
# Every association on a thread of the box (no worker processes): what the workers gain.
THREADS = {"MAGICKBOX_RECEIVER_PROCESSES": "0", **NATIVE}


def views_cost(rows: list[dict], corpora: list[Corpus]) -> dict:
    """Per corpus: what series views cost the receiver, from the throughput rows (same run)."""
    by = {(r["corpus"], r["target"]): r for r in rows}
    out = {}
    for c in corpora:
        on, off = by[(c.name, "ours")], by[(c.name, "ours-noviews")]
        out[c.name] = {
            "images_per_s_on": on["images_per_s"],
            "images_per_s_off": off["images_per_s"],
            "ratio_on_off": round(on["images_per_s"] / off["images_per_s"], 3),
            "wall_ms_per_image_on_minus_off": round(
                1000 * (on["median_s"] - off["median_s"]) / c.files, 3
            ),
            "receiver_cpu_ms_per_image_on_minus_off": round(
                on["receiver_cpu_ms_per_image"] - off["receiver_cpu_ms_per_image"], 3
            ),
        }
    return out


def views_in_process(corpus: Corpus, reps: int) -> dict:
    """The views' own work per image, without the network: the receiver's walk capturing
    only the study and SOP UIDs vs. also the view tags plus adding to the series views."""
    from magickbox.receive.structure import walk_stored_file
    from magickbox.study.series import VIEW_TAGS, RawHeader, SeriesSet

    files = sorted(p for p in corpus.path.rglob("*.dcm"))
    syntax = "1.2.840.10008.1.2.1"  # the corpus is explicit VR little endian
    base = frozenset((0x0020000D, 0x00080018))
    full = base | VIEW_TAGS

    def plain() -> None:
        for p in files:
            walk_stored_file(p, syntax, base)

    def views() -> None:
        found = SeriesSet()
        for p in files:
            w = walk_stored_file(p, syntax, full)
            found.add(RawHeader(w.values, w.vrs, w.implicit, w.little), p.name)

    times: dict[str, list[float]] = {"walk": [], "walk+views": []}
    for _ in range(reps):  # interleaved; the files are in the page cache after the first
        for key, fn in (("walk", plain), ("walk+views", views)):
            t0 = time.process_time()
            fn()
            times[key].append(time.process_time() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "images": len(files),
        "walk_us_per_image": round(1e6 * med["walk"] / len(files), 1),
        "walk_views_us_per_image": round(1e6 * med["walk+views"] / len(files), 1),
        "views_us_per_image": round(1e6 * (med["walk+views"] - med["walk"]) / len(files), 1),
        "ratio": round(med["walk+views"] / med["walk"], 3),
    }


def views_only(images: int, reps: int, work_root: Path | None, keep: bool) -> int:
    """``--views``: ours with series views on and off, the same corpora, interleaved."""
    work = Path(tempfile.mkdtemp(prefix="mb-bench-views-", dir=work_root))
    boxes: list[Box] = []
    try:
        mr = make_corpus(work, "MR", "MR", 2, images, 1)  # one series per study
        ct = make_corpus(work, "CT", "CT", 1, max(1, images // 5), 2)
        corpora = [mr, ct]
        on = Box(work / "home-on", env=NATIVE).start()
        boxes.append(on)
        off = Box(work / "home-off", env=NO_VIEWS).start()
        boxes.append(off)
        targets: list[Target] = [
            OursTarget(on),
            OursTarget(off, "ours-noviews", "MagickBox, series_views = false"),
        ]
        tp = Throughput()
        measure_throughput(targets, corpora, reps, tp)
        rows = throughput_rows(tp, corpora, targets)
        data = {
            "config": {
                "reps": reps,
                "images": images,
                "commit": git_commit(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
            "rows": rows,
            "views": views_cost(rows, corpora),
            "in_process": {c.name: views_in_process(c, reps) for c in corpora},
        }
    finally:
        for box in boxes:
            box.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "receive-views.json").write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2))
    return 0


def git_commit() -> str:
    res = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return res.stdout.strip() or "unknown"


def mr_study(mr: Corpus, work: Path) -> Corpus:
    """The first MR study alone (one send, one job) for the latency figure."""
    folder = sorted(p for p in mr.path.iterdir() if p.is_dir())[0]
    files = [p for p in folder.iterdir() if p.is_file()]
    return Corpus(
        "MR-1study",
        folder,
        len(files),
        sum(p.stat().st_size for p in files),
        [study_uid_of(files[0])],
    )


if __name__ == "__main__":
    sys.exit(main())
