"""The Slurm executor against a private single-node cluster (slurmctld + slurmd + munged):
a job's way through Slurm, what the box shows of it, the cap, the start-up check, the seed's
commands and a container bucket.

The cluster and the shared helpers are in tests/e2e/slurm.py. Restarts are in
test_slurm_restarts.py, jobs ended early (delete, scancel, timeout, a lost exit code) in
test_slurm_timelimit.py: each module has a cluster of its own, so they run side by side
under pytest -n.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from magickbox.testing.dicomgen import write_study
from magickbox.testing.slurmcluster import SlurmCluster
from tests.conftest import dcmtk
from tests.e2e.peers import (
    api_job,
    install_buckets,
    job_dir,
    wait_for,
    wait_jobs,
)
from tests.e2e.slurm import (
    COPY_SH,
    cluster,
    empty_queue,
    runs,
    send,
    sleep_sh,
    slurm_box,
    slurm_bucket,
    slurm_module_marks,
    slurm_of,
    status_row,
)
from tests.e2e.test_containers import ENV as CONTAINER_ENV
from tests.e2e.test_containers import image, install

pytestmark = slurm_module_marks()
__all__ = ["cluster", "empty_queue", "image", "slurm_box"]  # fixtures used by name


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


def test_buckets_run_with_the_slurm_executor_runs_it_on_the_cluster_with_its_log_on_stdout(
    tmp_path: Path, cluster: SlurmCluster
) -> None:
    home = tmp_path / "home"
    install_buckets(home, Copy=COPY_SH)  # a local bucket: --executor sends it to Slurm
    study = write_study(tmp_path / "in", n_images=2, rows=16, cols=16)
    out = tmp_path / "out"
    where = [str(study.paths[0].parent), str(out), "--home", str(home)]
    argv = [sys.executable, "-m", "magickbox.cli", "buckets", "run", "Copy", *where]
    argv += ["--executor", "slurm"]
    proc = subprocess.run(argv, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "as slurm job" in proc.stdout, proc.stdout
    assert {p.name for p in study.paths} <= {p.name for p in out.iterdir()}
    assert len(runs(home, "Copy")) == 1
