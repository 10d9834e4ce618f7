"""The Slurm executor against a private single-node cluster (slurmctld + slurmd + munged).

The cluster and the shared helpers are in tests/e2e/slurm.py; the time-limit case is in
test_slurm_timelimit.py, with a cluster of its own, so it runs beside these.
"""

from __future__ import annotations

import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest

from magickbox.buckets.runner import RunRequest, RunResult
from magickbox.buckets.slurm import SlurmExecutor
from magickbox.config import Settings
from magickbox.testing.dicomgen import write_study
from magickbox.testing.slurmcluster import SlurmCluster
from tests.conftest import dcmtk
from tests.e2e.destinations import StoreSCP
from tests.e2e.peers import (
    api_job,
    api_jobs,
    install_buckets,
    job_dir,
    send_files,
    wait_for,
    wait_jobs,
)
from tests.e2e.slurm import (
    cluster,
    empty_queue,
    gated_sh,
    needs_slurm,
    open_gate,
    running_in_slurm,
    runs,
    send,
    sleep_sh,
    slurm_box,
    slurm_bucket,
    squeue_names,
)
from tests.e2e.test_containers import ENV as CONTAINER_ENV
from tests.e2e.test_containers import image, install
from tests.e2e.test_routing import FAST as ROUTING_FAST
from tests.e2e.test_routing import dest as route_to
from tests.e2e.test_routing import save_table, wait_sends

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.long,
    needs_slurm,
    pytest.mark.usefixtures(empty_queue.__name__),
]
__all__ = ["cluster", "empty_queue", "image", "slurm_box"]  # fixtures used by name

COPY_SH = """#!/bin/sh
set -eu
echo "on $(hostname) as slurm job $SLURM_JOB_ID"
cp -r "$1/." "$2/"
echo "$MB_SCRATCHDIR" >> "$MB_MEMORY/runs.txt"
"""


def test_storescu_to_a_slurm_bucket_runs_as_a_slurm_job(
    slurm_box, tmp_path: Path, cluster: SlurmCluster
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Copy=(COPY_SH, slurm_bucket()))
    box = slurm_box(home=home)
    study = write_study(tmp_path / "study", n_images=2, rows=16, cols=16)
    res = box.storescu(study.paths[0].parent, "Copy", "ip44")
    assert res.returncode == 0, res.stderr
    (job,) = wait_jobs(box, 1, timeout=90)
    assert job["state"] == "done", job
    folder = job_dir(box, job["scratchdir"])
    assert {p.name for p in study.paths} <= {p.name for p in (folder / "OUTPUT").iterdir()}
    log = (folder / "processing.log").read_text()
    assert "submitted to Slurm as job" in log and "as slurm job" in log, log
    script = (folder / "slurm.sh").read_text()
    assert f"--job-name={job['scratchdir']}" in script and "--comment=magickbox:" in script
    assert (folder / ".slurm-exit").read_text().strip() == "0"


def test_max_submitted_caps_the_jobs_in_slurm(
    slurm_box, tmp_path: Path, cluster: SlurmCluster
) -> None:  # type: ignore[no-untyped-def]
    """20 studies, slurm_max_submitted = 4: never more than 4 in Slurm, submitted FIFO."""
    home = tmp_path / "home"
    install_buckets(home, Nap=(sleep_sh(1), slurm_bucket(concurrency=20)))
    box = slurm_box(home=home, env={"MAGICKBOX_SLURM_MAX_SUBMITTED": "4"})
    most = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, cluster.squeue_count())
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for i in range(20):
        send(box, tmp_path, "Nap", f"nap{i}")
    jobs = wait_jobs(box, 20, timeout=300)
    stop.set()
    watcher.join()
    assert all(j["state"] == "done" for j in jobs), jobs
    assert 3 <= most <= 4, most
    assert sorted(runs(home, "Nap")) == sorted(j["scratchdir"] for j in jobs)
    # FIFO: Slurm job ids (given in submit order) rise in the order the jobs were queued.
    ids = [slurm_job_id(job_dir(box, j["scratchdir"])) for j in reversed(jobs)]
    assert ids == sorted(ids), ids


def test_delete_of_a_running_job_cancels_it_in_slurm(
    slurm_box, tmp_path: Path, cluster: SlurmCluster
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Long=(sleep_sh(300), slurm_bucket()))
    box = slurm_box(home=home)
    send(box, tmp_path, "Long", "del")
    scratchdir = running_in_slurm(home, "Long", cluster)
    res = box.delete(f"/api/v1/jobs/{scratchdir}", timeout=60)
    assert res.status_code in (200, 204), res.text
    wait_for("Slurm to forget the running job", lambda: cluster.squeue_count() == 0, 60)


def test_scancel_from_outside_fails_the_job_with_the_reason(
    slurm_box, tmp_path: Path, cluster: SlurmCluster
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Long=(sleep_sh(300), slurm_bucket()))
    box = slurm_box(home=home)
    send(box, tmp_path, "Long", "ext")
    scratchdir = running_in_slurm(home, "Long", cluster)
    cluster.cmd("scancel", f"--name={scratchdir}")
    (job,) = wait_jobs(box, 1, timeout=60)
    assert job["state"] == "failed" and "CANCELLED" in job["reason"], job


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


def test_slurm_state_shows_in_the_api_getscratch_and_getstatus_and_delete_empties_squeue(
    slurm_box, tmp_path: Path, cluster: SlurmCluster
) -> None:  # type: ignore[no-untyped-def]
    """Held jobs are PENDING in Slurm: queued for getStatus; one released runs on the node.
    Deleting the pending one and the running one leaves nothing in squeue."""
    home = tmp_path / "home"
    held = slurm_bucket(concurrency=2, slurm={"extra": ["--hold"]})
    install_buckets(home, Held=(sleep_sh(300), held))
    box = slurm_box(home=home)
    send(box, tmp_path, "Held", "held1")
    send(box, tmp_path, "Held", "held2")
    wait_for("two jobs in Slurm", lambda: cluster.squeue_count() == 2, 60)
    pending = wait_for("both PENDING", lambda: slurm_of(box, "PENDING (JobHeldUser)"), 30)
    assert len(pending) == 2 and status_row(box, "Held")[1:3] == [2, 0]
    first = pending[0]["scratchdir"]
    job_id = (job_dir(box, first) / ".slurm-job").read_text().strip()
    cluster.cmd("scontrol", "release", job_id)
    running = wait_for("one running", lambda: slurm_of(box, f"RUNNING on {cluster.host}"), 60)
    assert [j["scratchdir"] for j in running] == [first]
    assert api_job(box, first)["slurm"] == f"RUNNING on {cluster.host}"
    assert status_row(box, "Held")[1:3] == [1, 1]
    rows = {r["scratchdir"]: r for r in box.get("/code/php/getScratch.php").json()}
    assert rows[first]["slurm"] == f"RUNNING on {cluster.host}", rows
    other = next(r for name, r in rows.items() if name != first)
    assert other["slurm"] == "PENDING (JobHeldUser)", rows
    for job in pending:  # the pending one, then the running one
        res = box.delete(f"/api/v1/jobs/{job['scratchdir']}")
        assert res.status_code in (200, 204), res.text
    wait_for("Slurm to forget both", lambda: cluster.squeue_count() == 0, 60)


def slurm_of(box, status: str, contains: str = "") -> list[dict]:  # type: ignore[no-untyped-def]
    """The jobs whose Slurm status (in /api/v1/jobs) is ``status`` (or contains
    ``contains``), oldest first."""
    found = reversed(api_jobs(box))
    if contains:
        return [j for j in found if contains in (j["slurm"] or "")]
    return [j for j in found if j["slurm"] == status]


def status_row(box, bucket: str) -> list:  # type: ignore[no-untyped-def]
    rows = box.get("/code/php/getStatus.php").json()
    return next(r for r in rows if r[0] == bucket)


def one_job(tmp_path: Path, name: str) -> tuple[RunRequest, Path]:
    """A job folder whose work.sh notes each run in ``runs`` beside it."""
    job = tmp_path / name
    (job / "INPUT").mkdir(parents=True)
    (job / "OUTPUT").mkdir()
    work = job / "work.sh"
    work.write_text(f'#!/bin/sh\necho run >> {job}/runs\nsleep 1\ntouch "$2/done"\n')
    work.chmod(0o755)
    return RunRequest(name, job, work, [], {}, 60.0, executor="slurm"), job / "runs"


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


@pytest.mark.parametrize(
    ("settings", "state", "says"),
    [
        ({}, "ok", "saw the scratch folder"),
        ({"slurm_path_map": ["{home}=/nowhere/mb"]}, "failed", "/nowhere/mb/scratch"),
        ({"slurm_partition": "nope"}, "failed", "sbatch refused the test job"),
    ],
)
def test_the_start_up_check_says_whether_the_nodes_see_the_scratch_folder(
    app_factory, tmp_path: Path, cluster: SlurmCluster, settings: dict, state: str, says: str
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Copy=(COPY_SH, slurm_bucket()))
    given = {k: [v[0].format(home=home)] if isinstance(v, list) else v for k, v in settings.items()}
    box = app_factory(home=home, **given)

    def checked() -> dict | None:
        found: dict = box.get("/api/v1/health").json()["slurm"]
        return found if found["state"] != "checking" else None

    result = wait_for("the check", checked, 60)
    assert result["state"] == state and says in result["message"], result


def slurm_job_id(folder: Path) -> int:
    log = (folder / "processing.log").read_text()
    return int(log.split("submitted to Slurm as job ")[1].split()[0])


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


def test_the_seed_commands_verbatim_with_procbucket_on_slurm(
    slurm_box, tmp_path: Path, cluster: SlurmCluster
) -> None:  # type: ignore[no-untyped-def]
    """storescu, getScratch | jq and the getOutputZip loop, as the manual has them."""
    from tests.e2e.test_seed import DOWNLOAD, FILE_LIST, SEND, bash, fill

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "storescu").symlink_to(dcmtk("storescu"))
    box = slurm_box(home=tmp_path / "home", env={"MAGICKBOX_EXECUTOR": "slurm"})
    study = write_study(tmp_path / "subject", n_images=2, rows=32, cols=32)
    work = tmp_path / "work"
    work.mkdir()
    bash(fill(SEND.replace("MySelf", "ip44"), box, study.paths[0].parent), work, bindir)
    (job,) = box.wait_jobs(1, finished=True, timeout=120)
    assert job["status"] == "done", job
    assert "submitted to Slurm" in (job_dir(box, job["scratchdir"]) / "processing.log").read_text()
    bash(fill(FILE_LIST, box) + "\n" + fill(DOWNLOAD, box), work, bindir)
    with zipfile.ZipFile(work / study.study_uid / f"{study.study_uid}.zip") as zf:
        derived = [n for n in zf.namelist() if n.endswith(".dcm")]
    assert len(derived) == len(study.paths)


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_a_container_bucket_on_slurm_runs_podman_on_the_node(
    slurm_box, tmp_path: Path, cluster: SlurmCluster, image: str
) -> None:  # type: ignore[no-untyped-def]
    """The image's probe: INPUT read-only, only a loopback interface, /memory kept."""
    home = tmp_path / "home"
    install(home, "Probe", image, "probe.sh", executor="slurm")
    box = slurm_box(home=home, env=CONTAINER_ENV)
    send(box, tmp_path, "Probe", "probe")
    (job,) = wait_jobs(box, 1, timeout=120)
    folder = job_dir(box, job["scratchdir"])
    assert job["state"] == "done", (job, (folder / "processing.log").read_text())
    out = folder / "OUTPUT"
    assert (out / "input.txt").read_text().strip() == "readonly"
    assert (out / "net.txt").read_text().split() == ["lo"]
    assert (out / "count.txt").read_text().strip() == "1"
    assert (home / "memory" / "Probe" / "count").read_text().strip() == "1"
    assert "podman" in (folder / "slurm.sh").read_text()
