"""Executors run a bucket on a job. The queue talks to them through one small interface,
so a distributed engine can take the local one's place.

The local executor starts ``work.sh <INPUT> <OUTPUT> [arguments]`` directly (no shell),
in its own process group so that a timeout or a delete stops the whole tree, with the
job's facts in its environment and stdout+stderr written straight into processing.log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

PID_FILE = ".mb-run.pid"


@dataclass(frozen=True)
class RunRequest:
    scratchdir: str
    job_dir: Path
    work_sh: Path
    arguments: list[str]
    env: dict[str, str]
    timeout: float


@dataclass
class RunResult:
    exit_code: int | None
    reason: str = ""
    timed_out: bool = False
    cancelled: bool = False
    finished_at: float = field(default_factory=time.time)


Done = Callable[[RunRequest, RunResult], None]


class Executor(Protocol):
    def start(self, req: RunRequest, done: Done) -> None: ...
    def cancel(self, scratchdir: str) -> bool: ...
    def shutdown(self) -> None: ...


def log_line(job_dir: Path, text: str) -> None:
    """A line of MagickBox's own in processing.log, marked so it is told from the bucket's."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with (job_dir / "processing.log").open("a") as fh:
        fh.write(f"# magickbox {stamp}: {text}\n")


class LocalExecutor:
    """Runs each job as a child process of the box, one thread waiting on each."""

    def __init__(self, kill_grace: float = 5.0) -> None:
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._kill_grace = kill_grace

    def start(self, req: RunRequest, done: Done) -> None:
        threading.Thread(
            target=self._run, args=(req, done), name=f"job-{req.scratchdir}", daemon=True
        ).start()

    def _run(self, req: RunRequest, done: Done) -> None:
        try:
            result = self._execute(req)
        except Exception as exc:  # the queue must always hear back
            log.exception("job %s: executor error", req.scratchdir)
            result = RunResult(exit_code=None, reason=f"executor error: {exc}")
        done(req, result)

    def _execute(self, req: RunRequest) -> RunResult:
        argv = [
            str(req.work_sh),
            str(req.job_dir / "INPUT"),
            str(req.job_dir / "OUTPUT"),
            *req.arguments,
        ]
        with (req.job_dir / "processing.log").open("ab") as logfh:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=req.job_dir,
                    env=req.env,
                    stdin=subprocess.DEVNULL,
                    stdout=logfh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                return RunResult(exit_code=None, reason=f"cannot start {req.work_sh.name}: {exc}")
        (req.job_dir / PID_FILE).write_text(str(proc.pid))
        with self._lock:
            self._procs[req.scratchdir] = proc
        try:
            code = proc.wait(timeout=req.timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            self._stop_group(proc)
            code, timed_out = proc.returncode, True
        finally:
            # A job leaves nothing running: children that work.sh left behind would keep
            # writing into a job the box calls finished.
            kill_group(proc.pid, signal.SIGKILL)
            with self._lock:
                self._procs.pop(req.scratchdir, None)
                cancelled = req.scratchdir in self._cancelled
                self._cancelled.discard(req.scratchdir)
            (req.job_dir / PID_FILE).unlink(missing_ok=True)
        if timed_out:
            return RunResult(code, f"timed out after {req.timeout:g} s", timed_out=True)
        if cancelled:
            return RunResult(code, "cancelled", cancelled=True)
        return RunResult(code)

    def _stop_group(self, proc: subprocess.Popen[bytes]) -> None:
        kill_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self._kill_grace)
        # Also when work.sh itself is gone: its children may ignore SIGTERM, and a stopped
        # job must leave nothing of its tree running.
        kill_group(proc.pid, signal.SIGKILL)
        proc.wait()

    def cancel(self, scratchdir: str) -> bool:
        with self._lock:
            proc = self._procs.get(scratchdir)
            if proc is None:
                return False
            self._cancelled.add(scratchdir)
        threading.Thread(target=self._stop_group, args=(proc,), daemon=True).start()
        return True

    def shutdown(self) -> None:
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            self._stop_group(proc)


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_leftover(job_dir: Path) -> None:
    """After a crash of the box: stop a bucket process that outlived it (found by its pid file)."""
    pid_file = job_dir / PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    if str(job_dir).encode() in cmdline:  # still the same process, not a recycled pid
        kill_group(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def bucket_env(base: dict[str, str], facts: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(facts)
    env.setdefault("MB_PYTHON", sys.executable)
    return env
