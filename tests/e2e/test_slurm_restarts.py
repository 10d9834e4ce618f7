"""Restarts of a box with jobs on Slurm, and a slurmctld that is down: nothing is run twice,
nothing is lost. Its own module (and cluster), beside test_slurm.py under pytest -n.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from magickbox.buckets.runner import RunRequest, RunResult
from magickbox.buckets.slurm import SlurmExecutor
from magickbox.config import Settings
from magickbox.testing.dicomgen import write_study
from magickbox.testing.slurmcluster import SlurmCluster
from tests.e2e.destinations import StoreSCP
from tests.e2e.peers import (
    install_buckets,
    job_dir,
    send_files,
    wait_for,
    wait_jobs,
)
from tests.e2e.slurm import (
    COPY_SH,
    cluster,
    empty_queue,
    gated_sh,
    one_job,
    open_gate,
    running_in_slurm,
    runs,
    send,
    slurm_box,
    slurm_bucket,
    slurm_module_marks,
    slurm_of,
    squeue_names,
    status_row,
)
from tests.e2e.test_routing import FAST as ROUTING_FAST
from tests.e2e.test_routing import dest as route_to
from tests.e2e.test_routing import save_table, wait_sends

pytestmark = slurm_module_marks()
__all__ = ["cluster", "empty_queue", "slurm_box"]  # fixtures used by name


def test_kill9_of_the_box_while_a_job_runs_in_slurm_finishes_it_once(
    slurm_box, tmp_path: Path, cluster: SlurmCluster
) -> None:  # type: ignore[no-untyped-def]
    """The job runs on in Slurm while the box is down; the restarted box adopts it (not
    run again), and its OUTPUT is routed once, as if nothing had happened."""
    home = tmp_path / "home"
    install_buckets(home, Gate=(gated_sh(), slurm_bucket()))
    dest = StoreSCP(tmp_path / "dest", "DEST").start()
    try:
        box = slurm_box(home=home, env=ROUTING_FAST)
        save_table(box, [{"send": [{"success": route_to(dest.port, "DEST")}]}])
        study = write_study(tmp_path / "crash", n_images=2, rows=16, cols=16)
        assert len(send_files(box.dicom_port, "Gate", study.paths, calling="crash").ok) == 2
        scratchdir = running_in_slurm(home, "Gate", cluster)
        box.kill9()
        assert scratchdir in squeue_names(cluster), "the Slurm job must outlive the box"
        again = slurm_box(home=home, env=ROUTING_FAST, web_port=box.web_port,
                          dicom_port=box.dicom_port)  # fmt: skip
        log = job_dir(again, scratchdir) / "processing.log"
        wait_for("the adoption", lambda: "watching Slurm job" in log.read_text(), 60)
        assert scratchdir in squeue_names(cluster)  # still running: adopted, not re-run
        open_gate(home, "Gate")
        (job,) = wait_jobs(again, 1, timeout=90)
        assert job["state"] == "done", job
        wait_sends(again, scratchdir, "done")
        assert runs(home, "Gate") == [scratchdir]  # ran once
        assert (job_dir(again, scratchdir) / "OUTPUT" / "slept").exists()
        assert dest.sop_uids() == sorted(study.sop_uids)  # routed once, nothing lost
    finally:
        dest.stop()


@pytest.mark.parametrize("reached_slurm", [True, False])
def test_a_kill_between_sbatch_and_the_id_file_neither_loses_nor_reruns(
    tmp_path: Path, cluster: SlurmCluster, reached_slurm: bool
) -> None:
    """The id file is missing after a crash: the job is found by name and comment when
    sbatch got through, and submitted (once) from its prepared script when it did not."""
    settings = Settings(home=tmp_path)
    req, runs_file = one_job(tmp_path, f"sd-{reached_slurm}")
    first = SlurmExecutor(settings, poll=0.2)
    if reached_slurm:
        first.start(req, lambda r, res: None)
        wait_for("the id file", lambda: (req.job_dir / ".slurm-job").exists(), 30)
        (req.job_dir / ".slurm-job").unlink()  # as if killed right after sbatch returned
    else:
        first.prepare(req)  # as if killed just before sbatch
    first.shutdown()
    results: list[RunResult] = []
    again = SlurmExecutor(settings, poll=0.2)
    assert again.adopt({req.scratchdir: req.job_dir}, lambda r, res: results.append(res))
    wait_for("the adopted job to end", lambda: results, 60)
    again.shutdown()
    assert results[0].exit_code == 0 and (req.job_dir / "OUTPUT" / "done").exists(), results
    assert runs_file.read_text().split() == ["run"]  # once
    log = (req.job_dir / "processing.log").read_text()
    assert ("found Slurm job" if reached_slurm else "Slurm never got this job") in log, log
    assert not (req.job_dir / ".slurm-submit").exists()


def test_slurmctld_down_at_submit_the_job_waits_with_a_reason_and_goes_when_it_is_back(
    slurm_box, tmp_path: Path, cluster: SlurmCluster
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Copy=(COPY_SH, slurm_bucket()))
    box = slurm_box(home=home, env={"MAGICKBOX_SLURM_CHECK_SECONDS": "0"})
    cluster.stop_daemon("slurmctld")
    try:
        send(box, tmp_path, "Copy", "down")
        (job,) = wait_for("the reason", lambda: slurm_of(box, "", contains="sbatch failed"), 90)
        assert job["state"] == "running" and "retrying" in job["slurm"], job
        assert status_row(box, "Copy")[1:3] == [1, 0]  # queued, as far as getStatus tells
    finally:
        cluster.start_ctld()
    (job,) = wait_jobs(box, 1, timeout=120)
    assert job["state"] == "done", job
    assert runs(home, "Copy") == [job["scratchdir"]]


def test_sbatch_missing_keeps_the_job_waiting_with_a_reason(tmp_path: Path) -> None:
    """Not a cluster case: a submit that fails leaves the job in the box, retried."""
    job = tmp_path / "job"
    job.mkdir()
    settings = Settings(home=tmp_path, slurm_bin=str(tmp_path / "nobin"))
    ex = SlurmExecutor(settings, poll=0.1)
    req = RunRequest("sd1", job, job / "work.sh", [], {}, 60.0)
    ex.start(req, lambda r, res: None)
    status = wait_for("a reason", lambda: "sbatch failed" in (ex.status("sd1") or "") and 1, 10)
    assert status
    assert ex.cancel("sd1")
    ex.shutdown()
