"""How the Slurm executor ends a job without its exit code file (sacct, then scontrol), and
the box's own timeout, against fake Slurm commands (shell scripts in a bin folder)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from magickbox.buckets.runner import RunRequest, RunResult
from magickbox.buckets.slurm import (
    SCRIPT,
    SlurmExecutor,
    exit_of,
    script_timeout,
    slurm_seconds,
    slurm_time,
)
from magickbox.config import Settings

NO_ACCOUNTING = "echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1"
FORGOTTEN = "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1"


def fake_bin(folder: Path, **scripts: str) -> Path:
    """sbatch, squeue, sacct, scontrol, scancel as small shell scripts; each call is noted
    in ``calls`` beside them."""
    folder.mkdir()
    defaults = {"squeue": "exit 0", "sacct": NO_ACCOUNTING, "scontrol": FORGOTTEN}
    for name, body in {**defaults, "scancel": "touch cancelled", **scripts}.items():
        path = folder / name
        path.write_text(f'#!/bin/sh\ncd {folder}\necho "{name} $*" >> calls\n{body}\n')
        path.chmod(0o755)
    return folder


def row(state: str) -> str:
    """squeue's line (id|state|reason|node|time used|name|comment) of job 42, 5 s in."""
    return f"echo '42|{state}|None|n1|0:05|sd1|c'"


def adopted_end(tmp_path: Path, bin_dir: Path, timeout: str = "") -> RunResult:
    """A job the box submitted before a restart (its id in .slurm-job), adopted again."""
    job = tmp_path / "scratch" / "sd1"
    job.mkdir(parents=True)
    (job / ".slurm-job").write_text("42\n")
    if timeout:
        (job / SCRIPT).write_text(f"#!/bin/bash\n#SBATCH --time={timeout}\n")
    ex = SlurmExecutor(Settings(home=tmp_path, slurm_bin=str(bin_dir)), poll=0.02)
    results: list[RunResult] = []
    ended = threading.Event()

    def done(req: RunRequest, res: RunResult) -> None:
        results.append(res)
        ended.set()

    try:
        assert ex.adopt({"sd1": job}, done) == {"sd1"}
        assert ended.wait(20), "the adopted job never ended"
    finally:
        ex.shutdown()
    return results[0]


def test_sacct_tells_the_exit_code_of_a_job_that_ended_while_the_box_was_down(
    tmp_path: Path,
) -> None:
    bin_dir = fake_bin(tmp_path / "bin", sacct="echo 'FAILED|2:0|NonZeroExitCode'")
    result = adopted_end(tmp_path, bin_dir)
    assert result.exit_code == 2 and not result.timed_out and not result.cancelled, result
    calls = (bin_dir / "calls").read_text()
    assert "sacct -j 42" in calls and "scontrol" not in calls  # accounting answered
    log = (tmp_path / "scratch" / "sd1" / "processing.log").read_text()
    assert "Slurm says FAILED, exit 2" in log, log


def test_without_accounting_scontrol_tells_it(tmp_path: Path) -> None:
    record = "echo 'JobId=42 JobName=sd1 JobState=COMPLETED Reason=None ExitCode=0:0'"
    bin_dir = fake_bin(tmp_path / "bin", scontrol=record)
    result = adopted_end(tmp_path, bin_dir)
    assert result.exit_code == 0 and result.reason == "", result
    assert "scontrol -o show job 42" in (bin_dir / "calls").read_text()


def test_a_job_slurm_cancelled_while_the_box_was_down_fails_with_slurms_word(
    tmp_path: Path,
) -> None:
    bin_dir = fake_bin(tmp_path / "bin", sacct="echo 'CANCELLED by 0|0:15|None'")
    result = adopted_end(tmp_path, bin_dir)
    assert result.reason == "Slurm job 42 ended CANCELLED" and result.exit_code == 143, result


def test_slurms_own_time_limit_while_the_box_was_down_is_a_timeout(tmp_path: Path) -> None:
    bin_dir = fake_bin(tmp_path / "bin", sacct="echo 'TIMEOUT|0:15|TimeLimit'")
    result = adopted_end(tmp_path, bin_dir)
    assert result.timed_out and result.reason == "Slurm time limit reached", result


def test_a_job_slurm_forgot_fails_with_a_clear_reason(tmp_path: Path) -> None:
    result = adopted_end(tmp_path, fake_bin(tmp_path / "bin"))
    assert result.exit_code is None
    assert "Slurm job 42 ended while the box was down without an exit code file" in result.reason
    assert "neither sacct nor scontrol remembers it" in result.reason


def test_the_box_scancels_a_job_over_its_timeout_also_after_a_restart(tmp_path: Path) -> None:
    """squeue says RUNNING for 5 s; slurm.sh's --time says 3 s: scancel, then timed out."""
    running = f"test -e cancelled && {row('CANCELLED')} || {row('RUNNING')}"
    bin_dir = fake_bin(tmp_path / "bin", squeue=running)
    result = adopted_end(tmp_path, bin_dir, timeout=slurm_time(3))
    assert result.timed_out and "scancelled at the bucket's time limit" in result.reason, result
    assert "scancel 42" in (bin_dir / "calls").read_text()


def test_within_its_timeout_a_job_is_left_alone(tmp_path: Path) -> None:
    squeue = f"[ $(grep -c squeue calls) -gt 5 ] && {row('COMPLETED')} || {row('RUNNING')}"
    bin_dir = fake_bin(tmp_path / "bin", squeue=squeue, sacct="echo 'COMPLETED|0:0|None'")
    result = adopted_end(tmp_path, bin_dir, timeout=slurm_time(60))
    assert not result.timed_out and result.exit_code == 0, result
    assert "scancel" not in (bin_dir / "calls").read_text()


@pytest.mark.parametrize(
    ("text", "code"), [("0:0", 0), ("3:0", 3), ("0:9", 137), ("", None), ("x", None)]
)
def test_slurm_exit_codes_count_a_signal_as_128_plus_it(text: str, code: int | None) -> None:
    assert exit_of(text) == code


def test_squeue_times_in_seconds(tmp_path: Path) -> None:
    assert [slurm_seconds(t) for t in ("0:05", "1:02:03", "2-00:00:01")] == [5, 3723, 172801]
    assert slurm_seconds("INVALID") is None and slurm_seconds("5") is None
    assert script_timeout(tmp_path) == 0.0  # no slurm.sh: no timeout of the box's own


def test_a_job_in_sbatch_is_still_shown_and_a_delete_meanwhile_ends_it(tmp_path: Path) -> None:
    """sbatch takes seconds when slurmctld does not answer: the job must not vanish from
    the statuses (getStatus would count it as running), and a delete must not be lost."""
    slow = "while [ ! -e release ]; do sleep 0.02; done; echo 'sbatch: error: no ctld' >&2; exit 1"
    bin_dir = fake_bin(tmp_path / "bin", sbatch=f"touch started; {slow}")
    job = tmp_path / "scratch" / "sd1"
    job.mkdir(parents=True)
    ex = SlurmExecutor(Settings(home=tmp_path, slurm_bin=str(bin_dir)), poll=0.02)
    results: list[RunResult] = []
    ended = threading.Event()
    req = RunRequest("sd1", job, job / "work.sh", [], {}, 60.0, executor="slurm")
    try:
        ex.start(req, lambda r, res: (results.append(res), ended.set()))
        for _ in range(500):
            if (bin_dir / "started").exists():
                break
            threading.Event().wait(0.01)
        assert (bin_dir / "started").exists(), "sbatch never ran"
        assert "sd1" in ex.statuses() and not ex.statuses()["sd1"].running
        assert ex.cancel("sd1")
        (bin_dir / "release").touch()
        assert ended.wait(10), "the deleted job never ended"
    finally:
        ex.shutdown()
    assert results[0].cancelled and ex.statuses() == {}, results
