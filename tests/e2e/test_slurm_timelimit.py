"""How a job ends when not the job itself says so: a delete, a scancel from outside, the
bucket's timeout (scancel), and a job whose exit code file never came (then Slurm's own
record tells, by scontrol: the test cluster has no accounting, so sacct refuses first).

Slurm's own time limit (the script's --time, the backstop for when the box is down) counts
in whole minutes and is checked every 30 s, so no test waits for it: the unit tests check
that --time is in the script and what a TIMEOUT from Slurm becomes.
"""

from __future__ import annotations

from pathlib import Path

from magickbox.buckets.runner import RunResult
from magickbox.buckets.slurm import SlurmExecutor
from magickbox.config import Settings
from magickbox.testing.slurmcluster import SlurmCluster
from tests.e2e.peers import install_buckets, job_dir, wait_for, wait_jobs
from tests.e2e.slurm import (
    cluster,
    empty_queue,
    long_job_running,
    one_job,
    running_in_slurm,
    send,
    sleep_sh,
    slurm_box,
    slurm_bucket,
    slurm_module_marks,
)

pytestmark = slurm_module_marks()
__all__ = ["cluster", "empty_queue", "slurm_box"]  # fixtures used by name


def test_a_job_over_its_timeout_is_scancelled_and_fails_with_the_reason(
    slurm_box, tmp_path: Path, cluster: SlurmCluster
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Late=(sleep_sh(300), slurm_bucket(timeout=3)))
    box = slurm_box(home=home)
    send(box, tmp_path, "Late", "late")
    scratchdir = running_in_slurm(home, "Late", cluster)
    (job,) = wait_jobs(box, 1, timeout=60)
    assert job["state"] == "failed" and "time limit" in job["reason"], job
    assert scratchdir not in cluster.cmd("squeue", "-h", "-o", "%j").stdout  # scancelled
    folder = job_dir(box, scratchdir)
    assert "#SBATCH --time=0:03\n" in (folder / "slurm.sh").read_text()  # Slurm's backstop
    assert "over the timeout: scancel" in (folder / "processing.log").read_text()
    assert not (folder / "OUTPUT" / "slept").exists()


def test_a_job_whose_exit_code_file_never_came_ends_from_slurms_record(
    tmp_path: Path, cluster: SlurmCluster
) -> None:
    """work.sh takes the exit file's place (a folder where slurm.sh writes it) and exits 3:
    the exit code comes from scontrol."""
    req, _ = one_job(tmp_path, "sd-lost", "#!/bin/sh\nmkdir .slurm-exit.tmp\nexit 3\n")
    job = req.job_dir
    results: list[RunResult] = []
    ex = SlurmExecutor(Settings(home=tmp_path), poll=0.2)
    try:
        ex.start(req, lambda r, res: results.append(res))
        wait_for("the job to end", lambda: results, 60)
    finally:
        ex.shutdown()
    assert results[0].exit_code == 3 and not (job / ".slurm-exit").is_file(), results
    assert "no exit code file: Slurm says FAILED, exit 3" in (job / "processing.log").read_text()


def test_delete_of_a_running_job_cancels_it_in_slurm(
    slurm_box, tmp_path: Path, cluster: SlurmCluster
) -> None:  # type: ignore[no-untyped-def]
    box, scratchdir = long_job_running(slurm_box, tmp_path, cluster, "del")
    res = box.delete(f"/api/v1/jobs/{scratchdir}", timeout=60)
    assert res.status_code in (200, 204), res.text
    wait_for("Slurm to forget the running job", lambda: cluster.squeue_count() == 0, 60)


def test_scancel_from_outside_fails_the_job_with_the_reason(
    slurm_box, tmp_path: Path, cluster: SlurmCluster
) -> None:  # type: ignore[no-untyped-def]
    box, scratchdir = long_job_running(slurm_box, tmp_path, cluster, "ext")
    cluster.cmd("scancel", f"--name={scratchdir}")
    (job,) = wait_jobs(box, 1, timeout=60)
    assert job["state"] == "failed" and "CANCELLED" in job["reason"], job
