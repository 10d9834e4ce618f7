"""LocalExecutor with real tiny shell scripts: no shell between the box and work.sh,
the job's facts in the environment, one log, and timeouts/cancels that stop the whole tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from magickbox.buckets.runner import (
    LocalExecutor,
    RunRequest,
    RunResult,
    bucket_env,
    group_members,
    kill_leftover,
)
from magickbox.config import Settings
from magickbox.jobfolder import JobFolder, RunFacts
from magickbox.jobs.db import State, open_database
from magickbox.jobs.queue import Dispatcher
from magickbox.jobs.store import JobStore, NewJob

TIMEOUT = 20.0


class Outcome:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.result: RunResult | None = None
        self.req: RunRequest | None = None

    def __call__(self, req: RunRequest, result: RunResult) -> None:
        self.req, self.result = req, result
        self.event.set()

    def wait(self) -> RunResult:
        assert self.event.wait(TIMEOUT), "the executor never reported back"
        assert self.result is not None
        return self.result


def make_job(tmp_path: Path, script: str, mode: int = 0o755) -> tuple[Path, Path]:
    job_dir = tmp_path / "scratch" / "tmp.abcdef12"
    (job_dir / "INPUT").mkdir(parents=True)
    (job_dir / "OUTPUT").mkdir()
    (job_dir / "processing.log").write_text("")
    work_sh = tmp_path / "bucketT" / "work.sh"
    work_sh.parent.mkdir()
    work_sh.write_text(script)
    work_sh.chmod(mode)
    return job_dir, work_sh


def request(
    job_dir: Path, work_sh: Path, args: list[str] | None = None, timeout: float = TIMEOUT, **env
) -> RunRequest:
    return RunRequest(
        scratchdir=job_dir.name,
        job_dir=job_dir,
        work_sh=work_sh,
        arguments=args or [],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        timeout=timeout,
    )


def run(req: RunRequest, executor: LocalExecutor | None = None) -> RunResult:
    done = Outcome()
    (executor or LocalExecutor()).start(req, done)
    return done.wait()


def wait_for_file(path: Path) -> str:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def is_gone(pid: int) -> bool:
    """Dead or a zombie (containers whose init does not reap orphans keep zombies)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(pid: int, timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_gone(pid):
            return True
        time.sleep(0.05)
    return False


def kill_if_alive(pid: int) -> None:
    """Clean up after a failed test: the whole group of a process the executor left."""
    if not is_gone(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


# ---------------------------------------------------------------- arguments and environment

ECHO_ARGS = """#!/bin/sh
printf '%s\\n' "$@" > "$2/args"
"""


def test_argv_reaches_work_sh_without_a_shell(tmp_path: Path) -> None:
    job_dir, work_sh = make_job(tmp_path, ECHO_ARGS)
    marker = tmp_path / "pwned"
    hostile = [f"$(touch {marker})", f"; touch {marker}", "a b", "*", "`id`"]
    result = run(request(job_dir, work_sh, hostile))
    assert result.exit_code == 0
    assert result.reason == ""
    args = (job_dir / "OUTPUT" / "args").read_text().splitlines()
    assert args == [str(job_dir / "INPUT"), str(job_dir / "OUTPUT"), *hostile]
    assert not marker.exists()
    assert not (job_dir / "pwned").exists()


def test_work_sh_runs_in_the_job_folder_with_the_given_env(tmp_path: Path) -> None:
    script = '#!/bin/sh\npwd > OUTPUT/cwd\necho "$MB_SCRATCHDIR|$MB_ANSWER" > OUTPUT/env\n'
    job_dir, work_sh = make_job(tmp_path, script)
    result = run(request(job_dir, work_sh, MB_SCRATCHDIR=job_dir.name, MB_ANSWER="42"))
    assert result.exit_code == 0
    assert Path((job_dir / "OUTPUT" / "cwd").read_text().strip()).samefile(job_dir)
    assert (job_dir / "OUTPUT" / "env").read_text().strip() == f"{job_dir.name}|42"


def test_bucket_env_adds_the_facts_over_the_inherited_environment() -> None:
    env = bucket_env({"PATH": "/bin", "MB_SCRATCHDIR": "stale"}, {"MB_SCRATCHDIR": "tmp.x"})
    assert env["PATH"] == "/bin"
    assert env["MB_SCRATCHDIR"] == "tmp.x"  # the job's fact wins over an inherited value


def test_dispatcher_gives_work_sh_the_mb_facts(tmp_path: Path) -> None:
    """End to end through the queue: the facts the Dispatcher builds reach the script."""
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'db'}")
    for folder in (settings.streams, settings.scratch, settings.archive, settings.memory):
        folder.mkdir(parents=True, exist_ok=True)
    bucket = settings.streams / "bucketEnvDump"
    bucket.mkdir()
    (bucket / "info.json").write_text(json.dumps({"AETitle": "EnvDump", "enabled": 1}))
    (bucket / "work.sh").write_text('#!/bin/sh\nenv | grep "^MB_" | sort > "$2/env"\n')
    (bucket / "work.sh").chmod(0o755)
    store = JobStore(settings, open_database(settings.db_url))
    src = tmp_path / "send"
    src.mkdir()
    (src / "a.dcm").write_bytes(b"DICM")
    dispatcher = Dispatcher(store, LocalExecutor(kill_grace=1.0))
    dispatcher.start()
    try:
        job = store.create_job(
            src, NewJob("EnvDump", "ip44", "10.9.8.7", study_uid="1.2.3", jobname="jn")
        )
        deadline = time.monotonic() + TIMEOUT
        while (store.get(job.scratchdir).state != State.DONE) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.get(job.scratchdir).state == State.DONE
    finally:
        dispatcher.stop()
        store.sessions.kw["bind"].dispose()
    job_dir = settings.scratch / job.scratchdir
    env = dict(line.split("=", 1) for line in (job_dir / "OUTPUT" / "env").read_text().splitlines())
    # The variables themselves are named and tested once, in test_jobfolder.py; here only
    # that the Dispatcher hands the script exactly what JobFolder builds for this job.
    facts = RunFacts(job.scratchdir, "EnvDump", "ip44", "10.9.8.7", "1.2.3", "jn")
    memory = settings.memory / "EnvDump"
    assert env == JobFolder(job_dir).environment(facts, memory, settings.home)
    assert memory.is_dir()


# ---------------------------------------------------------------- the log


def test_stdout_and_stderr_go_to_processing_log(tmp_path: Path) -> None:
    script = "#!/bin/sh\necho to-stdout\necho to-stderr >&2\necho more-stdout\nexit 3\n"
    job_dir, work_sh = make_job(tmp_path, script)
    (job_dir / "processing.log").write_text("earlier line\n")
    result = run(request(job_dir, work_sh))
    assert result.exit_code == 3
    assert result.reason == ""  # a plain non-zero exit is for outcome() to judge
    log = (job_dir / "processing.log").read_text().splitlines()
    assert log == ["earlier line", "to-stdout", "to-stderr", "more-stdout"]
    assert not JobFolder(job_dir).pid_file.exists()


# ---------------------------------------------------------------- stopping the tree

TREE = """#!/bin/sh
{ignore}
sleep 300 &
echo $! > "$2/grandchild.pid"
wait
"""


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    job_dir, work_sh = make_job(tmp_path, TREE.format(ignore=""))
    done = Outcome()
    LocalExecutor(kill_grace=2.0).start(request(job_dir, work_sh, timeout=0.5), done)
    grandchild = int(wait_for_file(job_dir / "OUTPUT" / "grandchild.pid"))
    try:
        result = done.wait()
        assert result.timed_out
        assert not result.cancelled
        assert "timed out" in result.reason
        assert wait_gone(grandchild), "the grandchild sleep outlived the timeout"
    finally:
        kill_if_alive(grandchild)


def test_timeout_kills_a_tree_that_ignores_sigterm(tmp_path: Path) -> None:
    job_dir, work_sh = make_job(tmp_path, TREE.format(ignore="trap '' TERM"))
    done = Outcome()
    LocalExecutor(kill_grace=0.5).start(request(job_dir, work_sh, timeout=0.5), done)
    grandchild = int(wait_for_file(job_dir / "OUTPUT" / "grandchild.pid"))
    try:
        assert done.wait().timed_out
        assert wait_gone(grandchild)
    finally:
        kill_if_alive(grandchild)


DEAF_GRANDCHILD = """#!/bin/sh
sh -c 'trap "" TERM; sleep 300' &
echo $! > "$2/grandchild.pid"
wait
"""


def test_timeout_kills_a_grandchild_that_ignores_sigterm(tmp_path: Path) -> None:
    """work.sh dies of SIGTERM at once, but its child does not: it must not be left running."""
    job_dir, work_sh = make_job(tmp_path, DEAF_GRANDCHILD)
    done = Outcome()
    LocalExecutor(kill_grace=0.5).start(request(job_dir, work_sh, timeout=0.5), done)
    grandchild = int(wait_for_file(job_dir / "OUTPUT" / "grandchild.pid"))
    try:
        assert done.wait().timed_out
        assert wait_gone(grandchild, timeout=5.0), "a TERM-deaf grandchild survived the timeout"
    finally:
        kill_if_alive(grandchild)


LEAVES_A_CHILD = """#!/bin/sh
sleep 300 &
echo $! > "$2/child.pid"
exit 0
"""


def test_children_left_behind_by_a_finished_job_are_stopped(tmp_path: Path) -> None:
    job_dir, work_sh = make_job(tmp_path, LEAVES_A_CHILD)
    result = run(request(job_dir, work_sh))
    child = int((job_dir / "OUTPUT" / "child.pid").read_text())
    try:
        assert result.exit_code == 0 and not result.reason
        assert wait_gone(child, timeout=5.0), "a background child outlived its finished job"
    finally:
        kill_if_alive(child)


def test_cancel_stops_a_running_job(tmp_path: Path) -> None:
    job_dir, work_sh = make_job(tmp_path, TREE.format(ignore=""))
    executor = LocalExecutor(kill_grace=2.0)
    done = Outcome()
    executor.start(request(job_dir, work_sh), done)
    grandchild = int(wait_for_file(job_dir / "OUTPUT" / "grandchild.pid"))
    try:
        deadline = time.monotonic() + TIMEOUT
        while not executor.cancel(job_dir.name):  # registered a moment after it started
            assert time.monotonic() < deadline, "cancel never found the running job"
            time.sleep(0.02)
        result = done.wait()
        assert result.cancelled
        assert not result.timed_out
        assert result.reason == "cancelled"
        assert wait_gone(grandchild)
        assert executor.cancel(job_dir.name) is False  # nothing left to cancel
    finally:
        kill_if_alive(grandchild)


def test_cancel_of_an_unknown_job_is_false() -> None:
    assert LocalExecutor().cancel("tmp.nosuchjob") is False


def test_pid_file_names_the_running_process(tmp_path: Path) -> None:
    job_dir, work_sh = make_job(tmp_path, '#!/bin/sh\necho $$ > "$2/me"\nsleep 300\n')
    executor = LocalExecutor(kill_grace=1.0)
    done = Outcome()
    executor.start(request(job_dir, work_sh), done)
    me = wait_for_file(job_dir / "OUTPUT" / "me")
    deadline = time.monotonic() + TIMEOUT
    while not JobFolder(job_dir).pid_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert JobFolder(job_dir).pid_file.read_text().strip() == me
    executor.shutdown()
    assert done.wait().exit_code != 0
    assert not JobFolder(job_dir).pid_file.exists()


def test_a_run_left_without_its_pid_file_is_found_by_its_environment(tmp_path: Path) -> None:
    """A box killed between starting work.sh and writing its pid file: the restart still
    stops the run (found by MB_JOB_DIR), and leaves a process of another job alone."""
    job_dir, _work_sh = make_job(tmp_path, "")
    other = tmp_path / "other"
    other.mkdir()

    def started(folder: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, "MB_JOB_DIR": str(folder)}
        return subprocess.Popen(["sh", "-c", "sleep 300 & wait"], env=env,
                                start_new_session=True)  # fmt: skip

    orphan, unrelated = started(job_dir), started(other)
    try:
        assert not JobFolder(job_dir).pid_file.exists()
        deadline = time.monotonic() + TIMEOUT
        while len(group_members(orphan.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # the shell and its sleep
        kill_leftover(job_dir)
        assert orphan.wait(timeout=5) == -signal.SIGKILL
        assert not group_members(orphan.pid), "the run's child survived"
        assert unrelated.poll() is None and group_members(unrelated.pid)
    finally:
        for proc in (orphan, unrelated):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---------------------------------------------------------------- scripts that cannot start


def test_non_executable_work_sh_gives_a_clear_reason(tmp_path: Path) -> None:
    job_dir, work_sh = make_job(tmp_path, "#!/bin/sh\nexit 0\n", mode=0o644)
    result = run(request(job_dir, work_sh))
    assert result.exit_code is None
    assert "work.sh" in result.reason
    assert "ermission denied" in result.reason


def test_missing_work_sh_gives_a_clear_reason(tmp_path: Path) -> None:
    job_dir, work_sh = make_job(tmp_path, "")
    work_sh.unlink()
    result = run(request(job_dir, work_sh))
    assert result.exit_code is None
    assert "work.sh" in result.reason
    assert "No such file" in result.reason


def test_an_executor_error_still_reports_back(tmp_path: Path) -> None:
    """Whatever goes wrong inside the executor, the queue hears back (or it waits forever)."""
    job_dir, work_sh = make_job(tmp_path, "#!/bin/sh\n")
    req = request(job_dir, work_sh)
    req = RunRequest(**{**req.__dict__, "job_dir": tmp_path / "no" / "such" / "dir"})
    result = run(req)
    assert result.exit_code is None
    assert "executor error" in result.reason
