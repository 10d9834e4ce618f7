"""The Slurm executor: each job is one ``sbatch`` of a small batch script in its folder.

The script (``slurm.sh``, meant to be read by people) runs the bucket like the local
executor does and writes the exit code next to the job (``.slurm-exit``), because a
cluster without accounting forgets a job's exit code minutes after its end. One monitor
thread submits (at most ``slurm_max_submitted`` jobs at once) and polls ``squeue``: Slurm
has no push notifications, so polling is unavoidable. The Slurm job id is kept in
``.slurm-job``, so that a box that restarts adopts its jobs instead of re-running them.

A kill -9 can fall between ``sbatch`` returning and ``.slurm-job`` being written. So before
it submits, the executor writes ``.slurm-submit`` (a fresh token, which is also in the job's
``--comment``); a restart that finds the token but no id looks the job up in squeue by its
name and comment, and submits the prepared script only when Slurm never got it.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
import subprocess
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from magickbox.buckets.runner import Done, Executor, LocalExecutor, RunRequest, RunResult, log_line
from magickbox.config import Settings

log = logging.getLogger(__name__)

SCRIPT = "slurm.sh"
EXIT_FILE = ".slurm-exit"
JOB_ID_FILE = ".slurm-job"
SUBMIT_FILE = ".slurm-submit"  # the token of a submission that may not have an id yet
RETRY_POLLS = 5  # a failed sbatch is tried again after this many polls
# A finished job whose exit file is not there yet (shared storage lags): polls to wait.
EXIT_FILE_PATIENCE = 5
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
ON_NODE = {"RUNNING", "COMPLETING"}  # what getStatus counts as running; the rest is queued


@dataclass(frozen=True)
class SlurmStatus:
    """A job's place in Slurm as the box shows it: the text and whether it runs on a node."""

    text: str  # e.g. "PENDING (Resources)", "RUNNING on node1", "waiting in the box"
    running: bool = False


@dataclass
class Tracked:
    req: RunRequest
    done: Done
    job_id: str = ""
    status: str = "waiting in the box to be submitted"
    cancelled: bool = False
    missing_polls: int = 0
    running: bool = False  # last seen RUNNING/COMPLETING on a node
    token: str = ""  # adopted without an id: the submission's token, to find it in squeue
    prepared: bool = False  # slurm.sh and the token are written: submit the script as it is
    timed_out: bool = False  # the box scancelled it at the bucket's timeout

    def view(self) -> SlurmStatus:
        return SlurmStatus(self.status, self.running)


class SlurmExecutor:
    def __init__(self, settings: Settings, poll: float | None = None) -> None:
        self.settings = settings
        self._poll = poll or settings.slurm_poll_seconds
        self._waiting: deque[Tracked] = deque()
        self._submitted: dict[str, Tracked] = {}  # scratchdir -> submitted job
        # The job sbatch is handing over right now (seconds when slurmctld does not
        # answer): still shown, counted as queued, and cancellable meanwhile.
        self._in_flight: Tracked | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._next_try = 0.0
        self._thread = threading.Thread(target=self._loop, name="slurm-monitor", daemon=True)
        self._thread.start()

    # -- the Executor interface ------------------------------------------------------
    def start(self, req: RunRequest, done: Done) -> None:
        with self._lock:
            self._waiting.append(Tracked(req, done))
        self._wake.set()

    def cancel(self, scratchdir: str) -> bool:
        with self._lock:
            waiting = next((t for t in self._waiting if t.req.scratchdir == scratchdir), None)
            if waiting is not None:
                self._waiting.remove(waiting)
            tracked = self._submitted.get(scratchdir) or self._flying(scratchdir)
            if tracked is not None:
                tracked.cancelled = True
        if waiting is not None:  # never reached Slurm: it ends here
            waiting.done(waiting.req, RunResult(None, "cancelled", cancelled=True))
            return True
        if tracked is None:
            return False
        # The monitor reports the end once Slurm has stopped it (no half-stopped "done");
        # an adopted job without an id yet is cancelled once the monitor has found it.
        if tracked.job_id:
            self._run(["scancel", tracked.job_id])
        self._wake.set()
        return True

    def shutdown(self) -> None:
        """Stop watching; the jobs stay in Slurm, for the next start of the box to adopt."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    # -- what the box shows ----------------------------------------------------------
    def status(self, scratchdir: str) -> str | None:
        """E.g. "PENDING (Resources)" or "RUNNING on node1"; None: not a job of this executor."""
        with self._lock:
            tracked = self._submitted.get(scratchdir) or self._flying(scratchdir)
            if tracked is None:
                tracked = next((t for t in self._waiting if t.req.scratchdir == scratchdir), None)
            return tracked.status if tracked else None

    def _flying(self, scratchdir: str) -> Tracked | None:
        t = self._in_flight
        return t if t is not None and t.req.scratchdir == scratchdir else None

    def statuses(self) -> dict[str, SlurmStatus]:
        """Every job of this executor (waiting in the box or handed to Slurm), by scratchdir."""
        with self._lock:
            flying = [self._in_flight] if self._in_flight else []
            found = {t.req.scratchdir: t.view() for t in [*self._waiting, *flying]}
            found.update({name: t.view() for name, t in self._submitted.items()})
        return found

    def submitted_count(self) -> int:
        with self._lock:
            return len(self._submitted)

    # -- restarts --------------------------------------------------------------------
    def adopt(self, running_jobs: dict[str, Path], done: Done) -> set[str]:
        """Take back jobs (scratchdir -> job folder) that a previous box run submitted."""
        adopted = set()
        for scratchdir, job_dir in running_jobs.items():
            job_id, token = _read(job_dir / JOB_ID_FILE), _read(job_dir / SUBMIT_FILE)
            if not job_id and not token:
                continue  # never prepared for Slurm: the queue re-runs it
            timeout = script_timeout(job_dir)  # the box's timeout holds after a restart too
            req = RunRequest(scratchdir, job_dir, job_dir / "work.sh", [], {}, timeout, None)
            tracked = Tracked(req, done, job_id, "adopted after restart", token=token)
            with self._lock:
                self._submitted[scratchdir] = tracked
            if job_id:
                log_line(job_dir, f"the box restarted: watching Slurm job {job_id} again")
            else:
                log_line(job_dir, "the box restarted during sbatch: looking for the job in Slurm")
            adopted.add(scratchdir)
        self._wake.set()
        return adopted

    # -- the monitor -----------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._poll)
            self._wake.clear()
            try:
                self._submit_waiting()
                self._check_submitted()
            except Exception:  # the monitor must outlive a bad moment
                log.exception("slurm monitor: a round failed")

    def _submit_waiting(self) -> None:
        while time.monotonic() >= self._next_try:
            with self._lock:
                if not self._waiting or len(self._submitted) >= self.settings.slurm_max_submitted:
                    return
                tracked = self._in_flight = self._waiting.popleft()
            try:
                if tracked.prepared:  # adopted: slurm.sh and its token are there already
                    tracked.job_id = self._submit(tracked.req)
                else:
                    tracked.job_id = self._sbatch(tracked.req)
            except SubmitError as exc:
                self._submit_failed(tracked, str(exc))
                return
            tracked.status = "submitted"
            (tracked.req.job_dir / JOB_ID_FILE).write_text(tracked.job_id + "\n")
            log_line(tracked.req.job_dir, f"submitted to Slurm as job {tracked.job_id}")
            with self._lock:
                self._submitted[tracked.req.scratchdir] = tracked
                self._in_flight = None
            if tracked.cancelled:  # deleted during sbatch: the monitor reports its end
                self._run(["scancel", tracked.job_id])

    def _submit_failed(self, tracked: Tracked, why: str) -> None:
        """slurmctld down or refusing: the job waits in the box, first in line (or ends, when
        it was deleted meanwhile)."""
        tracked.status = f"waiting: sbatch failed ({why}); retrying"
        with self._lock:
            self._in_flight = None
            if not tracked.cancelled:
                self._waiting.appendleft(tracked)
        if tracked.cancelled:
            tracked.done(tracked.req, RunResult(None, "cancelled", cancelled=True))
        self._next_try = time.monotonic() + RETRY_POLLS * self._poll

    def _check_submitted(self) -> None:
        with self._lock:
            jobs = list(self._submitted.values())
        if not jobs:
            return
        states = self._squeue()
        if states is None:
            for t in jobs:
                t.status = "slurmctld not answering; last: " + t.status.split("; last: ")[-1]
            return
        for t in jobs:
            if not t.job_id and not self._find(t, states):
                continue
            state, reason, node, used = states.get(t.job_id, ("", "", "", ""))[:4]
            if state in ACTIVE:
                t.status = describe(state, reason, node)
                t.running = state in ON_NODE
                self._enforce_timeout(t, used)
                continue
            result = self._result(t, state, reason)
            if result is None:
                continue
            self._end(t, result)

    def _enforce_timeout(self, t: Tracked, used: str) -> None:
        """The bucket's timeout, to the second: Slurm's own limit (--time) counts in whole
        minutes and is checked about every 30 s, so the box scancels on time itself; Slurm's
        limit stays as the backstop for when the box is down."""
        if t.timed_out or t.cancelled or t.req.timeout <= 0:
            return
        seconds = slurm_seconds(used)
        if seconds is not None and seconds >= t.req.timeout:
            t.timed_out = True
            log_line(t.req.job_dir, f"running {seconds} s, over the timeout: scancel {t.job_id}")
            self._run(["scancel", t.job_id])

    def _end(self, t: Tracked, result: RunResult) -> None:
        with self._lock:
            self._submitted.pop(t.req.scratchdir, None)
        (t.req.job_dir / JOB_ID_FILE).unlink(missing_ok=True)
        (t.req.job_dir / SUBMIT_FILE).unlink(missing_ok=True)
        t.done(t.req, result)
        self._wake.set()  # a free place for a waiting job

    def _find(self, t: Tracked, states: dict[str, tuple[str, ...]]) -> bool:
        """An adopted job without an id: find it by name and comment; True: it has an id now.

        Not in Slurm and no exit code: the box died before sbatch got through, so the
        prepared script is submitted now (first in line). Ended already: finished here.
        """
        comment = home_comment(self.settings, t.token)
        found = [i for i, v in states.items() if v[4:] == (t.req.scratchdir, comment)]
        if found:
            t.job_id = max(found, key=int)
            (t.req.job_dir / JOB_ID_FILE).write_text(t.job_id + "\n")
            log_line(t.req.job_dir, f"found Slurm job {t.job_id} by its name and comment")
            if t.cancelled:  # deleted while it was being looked for
                self._run(["scancel", t.job_id])
            return True
        code = read_exit(t.req.job_dir)
        if t.cancelled or code is not None:  # deleted; or it ran and Slurm forgot it since
            self._end(t, RunResult(code, "cancelled", cancelled=True) if t.cancelled else
                      RunResult(code))  # fmt: skip
            return False
        with self._lock:
            self._submitted.pop(t.req.scratchdir, None)
            t.prepared, t.status = True, "waiting in the box: Slurm never got it"
            self._waiting.appendleft(t)
        log_line(t.req.job_dir, "Slurm never got this job: submitting it now")
        self._wake.set()
        return False

    def _result(self, t: Tracked, state: str, reason: str) -> RunResult | None:
        """The end of a job that left Slurm's queue; None: not sure yet."""
        code = read_exit(t.req.job_dir)
        if t.cancelled:
            return RunResult(code, "cancelled", cancelled=True)
        if t.timed_out:  # the box's own timeout scancelled it
            why = f"timed out after {t.req.timeout:g} s: scancelled at the bucket's time limit"
            return RunResult(code, why, timed_out=True)
        ended = slurm_end(t.job_id, state, reason, code)
        if ended is not None or code is not None:
            return ended or RunResult(code)
        t.missing_polls += 1
        if t.missing_polls < EXIT_FILE_PATIENCE:
            return None  # shared storage may show the exit file a little late
        return self._from_records(t, state)

    def _from_records(self, t: Tracked, state: str) -> RunResult | None:
        """No exit file (lost, or never written): ask Slurm's records, sacct then scontrol.

        sacct needs accounting (slurmdbd); scontrol knows a job until MinJobAge after its
        end. The box may have been down longer than both remember: then say so.
        """
        for record in (self._sacct, self._scontrol):
            found = record(t.job_id)
            if found is not None:
                end_state, code, why = found
                if end_state in ACTIVE:  # squeue missed it for a moment: not over
                    return None
                log_line(t.req.job_dir, f"no exit code file: Slurm says {end_state}, exit {code}")
                return slurm_end(t.job_id, end_state, why, code) or RunResult(code)
        return RunResult(None, f"Slurm job {t.job_id} ended {state or 'while the box was down'} "
                         "without an exit code file, and neither sacct nor scontrol "
                         "remembers it")  # fmt: skip

    def _sacct(self, job_id: str) -> tuple[str, int | None, str] | None:
        """(state, exit code, reason) from accounting; None: no accounting or no record."""
        proc = self._ask(["sacct", "-j", job_id, "-n", "-P", "-X", "-o", "State,ExitCode,Reason"])
        line = proc.stdout.strip().splitlines()[0] if proc and proc.stdout.strip() else ""
        parts = line.split("|")
        if len(parts) != 3 or not parts[0]:
            return None
        return parts[0].split()[0], exit_of(parts[1]), parts[2]

    def _scontrol(self, job_id: str) -> tuple[str, int | None, str] | None:
        """(state, exit code, reason) from slurmctld's memory of an ended job; None: forgotten."""
        proc = self._ask(["scontrol", "-o", "show", "job", job_id])
        fields = dict(re.findall(r"(\w+)=(\S*)", proc.stdout)) if proc else {}
        if fields.get("JobId") != job_id or "JobState" not in fields:
            return None
        return fields["JobState"], exit_of(fields.get("ExitCode", "")), fields.get("Reason", "")

    def _ask(self, argv: list[str]) -> subprocess.CompletedProcess[str] | None:
        """A Slurm query; None when it cannot run or refuses (e.g. accounting disabled)."""
        try:
            proc = self._run(argv)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc if proc.returncode == 0 else None

    # -- Slurm commands --------------------------------------------------------------
    def _cmd(self, name: str) -> str:
        return str(Path(self.settings.slurm_bin) / name) if self.settings.slurm_bin else name

    def _run(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        argv = [self._cmd(argv[0]), *argv[1:]]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, **kw)  # type: ignore[call-overload,no-any-return]

    def _sbatch(self, req: RunRequest) -> str:
        self.prepare(req)
        return self._submit(req)

    def prepare(self, req: RunRequest) -> None:
        """slurm.sh with a fresh token, then the token file: from here a restart looks for it."""
        token = uuid.uuid4().hex[:12]
        (req.job_dir / EXIT_FILE).unlink(missing_ok=True)  # an earlier attempt's code
        (req.job_dir / SCRIPT).write_text(batch_script(req, self.settings, token))
        (req.job_dir / SUBMIT_FILE).write_text(token + "\n")

    def _submit(self, req: RunRequest) -> str:
        script = req.job_dir / SCRIPT
        try:
            proc = self._run(["sbatch", "--parsable", str(script)], env=req.env or None)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SubmitError(str(exc)) from exc
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
            raise SubmitError(lines[-1])
        return proc.stdout.strip().split(";")[0]

    def _squeue(self) -> dict[str, tuple[str, ...]] | None:
        """Job id -> (state, reason, nodes, time used, name, comment) for all jobs Slurm
        remembers."""
        try:
            proc = self._run(["squeue", "-h", "--states=all", "-o", "%i|%T|%r|%N|%M|%j|%k"])
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0:
            return None
        states = {}
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|", 6)
            if len(parts) == 7:
                states[parts[0]] = tuple(parts[1:])
        return states


class SubmitError(Exception):
    pass


FAILED_BY_SLURM = ("CANCELLED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "OUT_OF_MEMORY", "DEADLINE")


def slurm_end(job_id: str, state: str, reason: str, code: int | None) -> RunResult | None:
    """The result of a job Slurm itself ended (time limit, scancel, node failure, memory);
    None: it ended on its own (COMPLETED, FAILED) and its exit code tells."""
    if state == "TIMEOUT":
        return RunResult(code, "Slurm time limit reached", timed_out=True)
    if state in FAILED_BY_SLURM:
        why = f" ({reason})" if reason and reason != "None" else ""
        return RunResult(code, f"Slurm job {job_id} ended {state}{why}")
    return None


def exit_of(text: str) -> int | None:
    """Slurm's "CODE:SIGNAL" exit code as the box counts it: the code, or 128+signal."""
    code, _, sig = text.partition(":")
    if not code.isdigit():
        return None
    return 128 + int(sig) if sig.isdigit() and int(sig) and not int(code) else int(code)


def describe(state: str, reason: str, node: str) -> str:
    """Slurm's state as people read it: "RUNNING on node1", "PENDING (Resources)"."""
    if state in ON_NODE and node:
        return f"{state} on {node}"
    return f"{state} ({reason})" if reason and reason != "None" else state


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def home_comment(settings: Settings, token: str = "") -> str:
    """The job's --comment: the home (jobs of this box among others') and the submit token."""
    return f"magickbox:{settings.home}" + (f";submit={token}" if token else "")


def read_exit(job_dir: Path) -> int | None:
    try:
        return int((job_dir / EXIT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def sbatch_options(req: RunRequest, settings: Settings, token: str = "") -> list[str]:
    """Box-wide options, overridden by the bucket's info.json "slurm" object."""
    own = req.slurm
    opts = [
        f"--job-name={req.scratchdir}",
        f"--comment={home_comment(settings, token)}",
        f"--time={slurm_time(req.timeout)}",
        f"--output={map_path(req.job_dir / 'slurm-%j.out', settings)}",
    ]
    for key, flag in (
        ("partition", "--partition"),
        ("account", "--account"),
        ("qos", "--qos"),
        ("cpus", "--cpus-per-task"),
        ("mem", "--mem"),
        ("gres", "--gres"),
    ):
        value = own.get(key, getattr(settings, f"slurm_{key}"))
        if value:
            opts.append(f"{flag}={value}")
    extra = own.get("extra", settings.slurm_extra)
    opts.extend(str(x) for x in extra) if isinstance(extra, list) else None
    return opts


def slurm_seconds(text: str) -> int | None:
    """squeue's time used ("5:07", "1:02:03", "2-01:02:03") in seconds; None: not a time."""
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    numbers = [*parts, days or "0"]
    if not all(p.isdigit() for p in numbers) or not 2 <= len(parts) <= 3:
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return int(days or 0) * 86400 + seconds


def script_timeout(job_dir: Path) -> float:
    """The timeout a prepared slurm.sh carries (its --time); 0: none found."""
    found = re.search(r"^#SBATCH --time=(\S+)$", _read(job_dir / SCRIPT), re.MULTILINE)
    return float(slurm_seconds(found.group(1)) or 0) if found else 0.0


def slurm_time(seconds: float) -> str:
    """Slurm's "minutes:seconds" form; Slurm enforces it at its own pace (about 30 s)."""
    total = max(1, math.ceil(seconds))
    return f"{total // 60}:{total % 60:02d}"


def map_path(path: Path | str, settings: Settings) -> str:
    """The path as the nodes see it (slurm_path_map "BOXPATH=NODEPATH")."""
    text = str(path)
    for rule in settings.slurm_path_map:
        box, _, node = rule.partition("=")
        if box and (text == box or text.startswith(box.rstrip("/") + "/")):
            return node + text[len(box) :]
    return text


def batch_script(req: RunRequest, settings: Settings, token: str = "") -> str:
    m = lambda p: shlex.quote(map_path(p, settings))  # noqa: E731
    lines = ["#!/bin/bash", f"# MagickBox job {req.scratchdir}, submitted by the box"]
    lines += [f"#SBATCH {opt}" for opt in sbatch_options(req, settings, token)]
    lines += [f"cd {m(req.job_dir)} || exit 1"]
    for key, value in sorted(req.env.items()):
        if key.startswith("MB_"):
            mapped = map_path(value, settings) if value.startswith("/") else value
            lines.append(f"export {key}={shlex.quote(mapped)}")
    command = node_command(req.argv(), settings)
    spec = req.container
    if spec is not None and not spec.engine.is_apptainer:
        # scancel signals this script; the container is the engine's, so remove it too.
        remove = node_command(spec.engine.argv("rm", "-f", spec.name), settings)
        lines += [f"remove_container() {{ {remove} >/dev/null 2>&1; }}"]
        lines += ["trap 'remove_container; exit 143' TERM"]
        lines += [f"{command} >> processing.log 2>&1 &", "wait $!"]
    else:
        lines += [f"{command} >> processing.log 2>&1"]
    lines += [
        "code=$?",
        f"echo $code > {EXIT_FILE}.tmp && mv {EXIT_FILE}.tmp {EXIT_FILE}",
        "exit $code",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ClusterCheck:
    """The start-up check of the cluster: "off", "checking", "ok" or "failed", and why."""

    state: str
    message: str = ""

    def as_json(self) -> dict[str, str]:
        return {"state": self.state, "message": self.message}


def check_cluster(settings: Settings, timeout: float, poll: float = 0.2) -> ClusterCheck:
    """Submit a tiny job that writes a file into the scratch folder as the nodes see it.

    Says what is wrong in words a person can act on: sbatch refused (slurmctld, account,
    partition), the job did not run in time (the queue), or it ran but the scratch folder
    is not there on the node (shared storage or slurm_path_map).
    """
    folder = settings.scratch / ".slurm-check"
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    script, proof = folder / f"{token}.sh", folder / token
    script.write_text(check_script(settings, token))
    try:
        return _run_check(settings, script, proof, timeout, poll)
    finally:
        script.unlink(missing_ok=True)
        proof.unlink(missing_ok=True)


def check_script(settings: Settings, token: str) -> str:
    node_scratch = map_path(settings.scratch, settings)
    opts = ["--job-name=magickbox-check", f"--comment={home_comment(settings)}",
            "--time=1:00", "--output=/dev/null"]  # fmt: skip
    for key in ("partition", "account", "qos"):
        value = getattr(settings, f"slurm_{key}")
        opts += [f"--{key}={value}"] if value else []
    lines = ["#!/bin/sh", "# MagickBox: can the nodes see the scratch folder?"]
    lines += [f"#SBATCH {opt}" for opt in opts]
    d = shlex.quote(node_scratch)
    lines += [f"test -d {d} || exit 3", f"echo ok > {d}/.slurm-check/{token}"]
    return "\n".join(lines) + "\n"


def _run_check(
    settings: Settings, script: Path, proof: Path, timeout: float, poll: float
) -> ClusterCheck:
    try:
        proc = _slurm(settings, "sbatch", "--parsable", str(script))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ClusterCheck("failed", f"cannot run sbatch: {exc}")
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return ClusterCheck("failed", f"sbatch refused the test job: {why}")
    job_id = proc.stdout.strip().split(";")[0]
    deadline, gone_polls, last = time.monotonic() + timeout, 0, ""
    while time.monotonic() < deadline:
        if proof.exists():
            return ClusterCheck("ok", f"test job {job_id} saw the scratch folder on the node")
        out = _slurm(settings, "squeue", "-h", "-j", job_id, "-o", "%T|%r|%N")
        state, _, rest = out.stdout.strip().partition("|")
        reason, _, node = rest.partition("|")
        if state in ACTIVE:
            last = describe(state, reason, node)
        elif out.returncode == 0 or "Invalid job id" in out.stderr:
            gone_polls += 1  # ended; shared storage may show the file a little late
            if gone_polls > EXIT_FILE_PATIENCE:
                where = map_path(settings.scratch, settings)
                return ClusterCheck("failed", f"test job {job_id} ran but the node does not "
                                    f"see the scratch folder {where} (shared storage? "
                                    "slurm_path_map?)")  # fmt: skip
        time.sleep(poll)
    _slurm(settings, "scancel", job_id)
    return ClusterCheck("failed", f"test job {job_id} did not run within {timeout:g} s "
                        f"(last: {last or 'not seen'})")  # fmt: skip


def _slurm(settings: Settings, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    program = str(Path(settings.slurm_bin) / name) if settings.slurm_bin else name
    return subprocess.run([program, *args], capture_output=True, text=True, timeout=30)


def node_command(argv: list[str], settings: Settings) -> str:
    """A command line for the node's shell, its paths (also in "-v SRC:DST") mapped."""
    return " ".join(shlex.quote(map_path(a, settings) if a.startswith("/") else a) for a in argv)


class RoutingExecutor:
    """Picks local or Slurm per request (bucket info.json "executor", else the box's)."""

    def __init__(self, settings: Settings, local: Executor | None = None) -> None:
        self.settings = settings
        self.local = local or LocalExecutor()
        self._slurm: SlurmExecutor | None = None
        self._lock = threading.Lock()

    @property
    def slurm(self) -> SlurmExecutor:
        with self._lock:  # started at first use: a box without Slurm jobs never polls
            if self._slurm is None:
                self._slurm = SlurmExecutor(self.settings)
            return self._slurm

    def start(self, req: RunRequest, done: Done) -> None:
        (self.slurm if req.executor == "slurm" else self.local).start(req, done)

    def cancel(self, scratchdir: str) -> bool:
        if self._slurm is not None and self._slurm.cancel(scratchdir):
            return True
        return self.local.cancel(scratchdir)

    def shutdown(self) -> None:
        self.local.shutdown()
        if self._slurm is not None:
            self._slurm.shutdown()

    def status(self, scratchdir: str) -> str | None:
        return self._slurm.status(scratchdir) if self._slurm else None

    def statuses(self) -> dict[str, SlurmStatus]:
        return self._slurm.statuses() if self._slurm else {}

    def adopt(self, running_jobs: dict[str, Path], done: Done) -> set[str]:
        marked = (JOB_ID_FILE, SUBMIT_FILE)  # submitted, or maybe submitted (killed in sbatch)
        with_id = {s: d for s, d in running_jobs.items() if any((d / f).exists() for f in marked)}
        return self.slurm.adopt(with_id, done) if with_id else set()
