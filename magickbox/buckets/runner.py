"""Executors run a bucket on a job. The queue talks to them through one small interface,
so a distributed engine can take the local one's place.

The local executor starts ``work.sh <INPUT> <OUTPUT> [arguments]`` directly (no shell),
in its own process group so that a timeout or a delete stops the whole tree, with the
job's facts in its environment and stdout+stderr written straight into processing.log.
A request that carries a ContainerSpec runs ``<engine> run`` of the bucket's image the
same way; a timeout or a cancel then stops and removes the named container.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from magickbox.buckets import container
from magickbox.buckets.container import ContainerSpec
from magickbox.buckets.health import work_sh_problems
from magickbox.config import Settings
from magickbox.jobfolder import JobFolder

log = logging.getLogger(__name__)

KILL_WAIT = 5.0  # seconds a killed leftover group may take to be gone


@dataclass(frozen=True)
class RunRequest:
    scratchdir: str
    job_dir: Path
    work_sh: Path
    arguments: list[str]
    env: dict[str, str]
    timeout: float
    container: ContainerSpec | None = None  # None: a native bucket, work.sh on the host
    # Where the bucket reads and writes; the job folder's INPUT/OUTPUT unless given
    # (``magickbox buckets run`` points them at any folders).
    input_dir: Path | None = None
    output_dir: Path | None = None
    # Which executor runs it ("local" or "slurm") and the bucket's own Slurm options.
    executor: str = "local"
    slurm: dict[str, object] = field(default_factory=dict)

    @property
    def input(self) -> Path:
        return self.input_dir or JobFolder(self.job_dir).input

    @property
    def output(self) -> Path:
        return self.output_dir or JobFolder(self.job_dir).output

    def argv(self) -> list[str]:
        if self.container is not None:
            return container.run_argv(self.container, self.input, self.output, self.arguments)
        return [str(self.work_sh), str(self.input), str(self.output), *self.arguments]


@dataclass
class RunResult:
    exit_code: int | None
    reason: str = ""
    timed_out: bool = False
    cancelled: bool = False
    # The box was stopped (SIGTERM, Ctrl-C) during the run: not the job's fault, so the
    # queue puts it back without spending an attempt.
    stopped: bool = False
    finished_at: float = field(default_factory=time.time)


Done = Callable[[RunRequest, RunResult], None]


class Executor(Protocol):
    def start(self, req: RunRequest, done: Done) -> None: ...
    def cancel(self, scratchdir: str) -> bool: ...
    def shutdown(self) -> None: ...


def log_line(job_dir: Path, text: str) -> None:
    """A line of MagickBox's own in the job's log (the format is the job folder's)."""
    JobFolder(job_dir).log_line(text)


class LocalExecutor:
    """Runs each job as a child process of the box, one thread waiting on each."""

    def __init__(self, kill_grace: float = 5.0) -> None:
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._specs: dict[str, ContainerSpec] = {}  # running container jobs
        self._cancelled: set[str] = set()
        self._threads: dict[str, threading.Thread] = {}  # one waiting on each job
        self._shut = False
        self._halted: set[str] = set()  # jobs that a shutdown stopped
        self._lock = threading.Lock()
        self._kill_grace = kill_grace

    def start(self, req: RunRequest, done: Done) -> None:
        thread = threading.Thread(
            target=self._run, args=(req, done), name=f"job-{req.scratchdir}", daemon=True
        )
        with self._lock:
            shut = self._shut
            if not shut:
                self._threads[req.scratchdir] = thread
        if shut:  # a launch that raced a stop: the job goes back to the queue unrun
            done(req, RunResult(exit_code=None, reason="the box was stopped", stopped=True))
            return
        thread.start()

    def _run(self, req: RunRequest, done: Done) -> None:
        try:
            result = self._execute(req)
        except Exception as exc:  # the queue must always hear back
            log.exception("job %s: executor error", req.scratchdir)
            result = RunResult(exit_code=None, reason=f"executor error: {exc}")
        try:
            done(req, result)
        finally:
            with self._lock:
                self._threads.pop(req.scratchdir, None)

    def _execute(self, req: RunRequest) -> RunResult:
        argv = req.argv()
        what = req.container.engine.name if req.container else req.work_sh.name
        if req.container is not None:
            spec = req.container
            log_line(req.job_dir, f"container {spec.name}: image {spec.image} ({what})")
        with JobFolder(req.job_dir).log.open("ab") as logfh:
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
                return RunResult(exit_code=None, reason=_start_failure(req, what, exc))
        JobFolder(req.job_dir).pid_file.write_text(str(proc.pid))
        with self._lock:
            self._procs[req.scratchdir] = proc
            if req.container is not None:
                self._specs[req.scratchdir] = req.container
            late = self._shut  # started while shutdown() was looking the other way
            if late:
                self._halted.add(req.scratchdir)
        if late:
            self._stop(req.scratchdir, proc)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            self._stop(req.scratchdir, proc)

        # A timer enforces the time limit so that the wait blocks in waitpid: Popen.wait
        # with a timeout polls, which cost every job ~50 ms after it had ended.
        timer = threading.Timer(req.timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            code = proc.wait()
        finally:
            timer.cancel()
            timer.join()  # a stop under way completes before the job is reported
            timed_out = expired.is_set()
            # A job leaves nothing running: children that work.sh left behind would keep
            # writing into a job the box calls finished.
            kill_group(proc.pid, signal.SIGKILL)
            with self._lock:
                self._procs.pop(req.scratchdir, None)
                self._specs.pop(req.scratchdir, None)
                cancelled = req.scratchdir in self._cancelled
                self._cancelled.discard(req.scratchdir)
                stopped = req.scratchdir in self._halted
                self._halted.discard(req.scratchdir)
            JobFolder(req.job_dir).pid_file.unlink(missing_ok=True)
        if req.container is not None:
            result = self._container_end(req, req.container, code, timed_out, cancelled or stopped)
        else:
            result = _verdict(req, code, timed_out, cancelled)
        return RunResult(code, "the box was stopped", stopped=True) if stopped else result

    def _container_end(
        self,
        req: RunRequest,
        spec: ContainerSpec,
        code: int | None,
        timed_out: bool,
        cancelled: bool,
    ) -> RunResult:
        if timed_out or cancelled:
            # The engine's client may have died before its container: remove it for sure.
            container.stop(spec.engine, spec.name, 0)
        if spec.as_root:
            self._give_back(req, spec)
        if timed_out:
            return RunResult(code, f"timed out after {req.timeout:g} s", timed_out=True)
        if cancelled:
            return RunResult(code, "cancelled", cancelled=True)
        if code == container.ENGINE_ERROR:
            return RunResult(code, container.why_engine_failed(spec.engine, spec.image))
        return RunResult(code)

    def _give_back(self, req: RunRequest, spec: ContainerSpec) -> None:
        """Output of a bucket that ran as root becomes the box's user's again."""
        try:
            container.give_back(req.output, *spec.owner)
        except PermissionError:
            if not container.give_back_in_container(spec, req.output):
                log_line(req.job_dir, "could not give OUTPUT back to the box's user")

    def _stop(self, scratchdir: str, proc: subprocess.Popen[bytes]) -> None:
        """Stop a job: its container through the engine, else its process group."""
        with self._lock:
            spec = self._specs.get(scratchdir)
        if spec is not None:
            container.stop(spec.engine, spec.name, self._kill_grace)
        self._stop_group(proc)

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
        threading.Thread(target=self._stop, args=(scratchdir, proc), daemon=True).start()
        return True

    def shutdown(self) -> None:
        """Stop every running job (all at once, each within the kill grace) and wait until
        each has been reported, so the box exits with nothing of a job left running."""
        with self._lock:
            self._shut = True
            procs = list(self._procs.items())
            self._halted.update(scratchdir for scratchdir, _proc in procs)
        stoppers = [threading.Thread(target=self._stop, args=item, daemon=True) for item in procs]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        with self._lock:
            waiting = list(self._threads.values())
        deadline = time.monotonic() + self._kill_grace + KILL_WAIT
        for thread in waiting:
            thread.join(max(0.0, deadline - time.monotonic()))


def _verdict(req: RunRequest, code: int | None, timed_out: bool, cancelled: bool) -> RunResult:
    if timed_out:
        return RunResult(code, f"timed out after {req.timeout:g} s", timed_out=True)
    if cancelled:
        return RunResult(code, "cancelled", cancelled=True)
    return RunResult(code)


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_leftover(job_dir: Path) -> None:
    """After a crash of the box: stop what is left of a bucket's run.

    The whole process group goes, whatever its leader's state: work.sh may have exited
    while the box was down and left a background child that would write into the re-run.
    The group is the one in the pid file; a box killed after starting the run but before
    writing that file leaves none, so the run's processes are also looked for by their
    environment (MB_JOB_DIR), which every process of a run inherits.
    """
    pid_file = JobFolder(job_dir).pid_file
    groups = _marked_groups(job_dir)
    try:
        pgid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pass
    else:
        # A pgid is not reused while a member lives; a member of this run is recognised by
        # its environment or command line, so an unrelated group is never killed.
        if any(_of_run(pid, job_dir) for pid in group_members(pgid)):
            groups.add(pgid)
    for group in groups:
        kill_group(group, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT
    while any(group_members(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.02)
    pid_file.unlink(missing_ok=True)


def _processes() -> Iterator[tuple[int, int]]:
    """(pid, process group) of every live (not zombie) process, from /proc."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # Fields after the command's ")" (which may itself hold spaces): state, ppid, pgrp.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] not in ("Z", "X"):
            yield int(entry.name), int(fields[2])


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    return [pid for pid, group in _processes() if group == pgid]


def _marked_groups(job_dir: Path) -> set[int]:
    """Process groups of the processes whose environment names ``job_dir`` (MB_JOB_DIR)."""
    own = os.getpgrp()  # never the box's own group
    return {g for pid, g in _processes() if g != own and _marked(pid, job_dir)}


def _marked(pid: int, job_dir: Path) -> bool:
    """Whether the environment of process ``pid`` names ``job_dir`` (MB_JOB_DIR)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"MB_JOB_DIR={job_dir}".encode() in environ


def _of_run(pid: int, job_dir: Path) -> bool:
    """Whether process ``pid`` belongs to a run on ``job_dir`` (its environ or argv says so)."""
    if _marked(pid, job_dir):
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(job_dir).encode() in cmdline


def build_request(
    info: dict[str, object],
    work_sh: Path,
    settings: Settings,
    facts: dict[str, str],
    job_dir: Path,
    arguments: list[str],
    timeout: float,
    **paths: Path,
) -> RunRequest:
    """The run of a bucket (native or container) on a job: what the box and the CLI start."""
    scratchdir = facts["MB_SCRATCHDIR"]
    spec = None
    if container.image_of(info):  # ContainerError says what is wrong with info.json
        memory = Path(facts["MB_MEMORY"])
        spec = container.make_spec(info, settings, scratchdir, memory)
        spec = replace(
            spec, env=container.container_env(facts), series_json=container.series_mount(facts)
        )
    return RunRequest(
        scratchdir=scratchdir,
        job_dir=job_dir,
        work_sh=work_sh,
        arguments=arguments,
        env=bucket_env(dict(os.environ), facts),
        timeout=timeout,
        container=spec,
        executor=str(info.get("executor") or settings.executor),
        slurm=dict(info.get("slurm") or {}),  # type: ignore[call-overload]
        **paths,
    )


def bucket_env(base: dict[str, str], facts: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(facts)
    return env


def _start_failure(req: RunRequest, what: str, exc: OSError) -> str:
    """Why a run could not start, in words a bucket's author can act on ("not executable",
    "no #! line") rather than errno 13 or 8, when work.sh is the cause."""
    problems = [] if req.container is not None else work_sh_problems(req.work_sh)
    if not problems:
        return f"cannot start {what}: {exc}"
    return f"cannot start {what}: {exc.strerror}: {'; '.join(problems)}"
