"""Shared parts of the Slurm tests: a private single-node cluster per test module, the
buckets they install and the waits they use. Each module that uses them gets its own
cluster (module scope), so two Slurm test modules can run side by side (pytest -n).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from magickbox.buckets.runner import RunRequest
from magickbox.testing.dicomgen import write_study
from magickbox.testing.slurmcluster import SlurmCluster, available
from tests.conftest import BoxServer
from tests.e2e.peers import api_jobs, install_buckets, send_files, wait_for

# Skipped only where Slurm is not installed and CI is not set: install.sh installs it.
needs_slurm = pytest.mark.skipif(
    not available() and not os.environ.get("CI"),
    reason="Slurm is not installed (apt-get install slurm-wlm munge)",
)


# The box asks squeue five times a second (1 s by default) and groups a study after 0.3 s
# of quiet: the tests wait for Slurm, not for the box's pace.
FAST_ENV = {"MAGICKBOX_SLURM_POLL_SECONDS": "0.2"}
QUIET = 0.3


def gated_sh(before: str = "") -> str:
    """Notes the run, then waits until the test opens the gate ($MB_MEMORY/go): a job that
    is surely still running in Slurm at whatever moment the test needs it to be."""
    return f"""#!/bin/sh
echo "$MB_SCRATCHDIR" >> "$MB_MEMORY/runs.txt"
{before}
for i in $(seq 3000); do [ -e "$MB_MEMORY/go" ] && break; sleep 0.1; done
cp -r "$1/." "$2/"
touch "$2/slept"
echo '[{{"success": "success"}}]' > "$MB_PROC_JSON"
"""


def open_gate(home: Path, bucket: str) -> None:
    (home / "memory" / bucket / "go").touch()


def slurm_module_marks() -> list[pytest.MarkDecorator]:
    """The pytestmark of a Slurm test module: e2e, long (handed out first under pytest -n),
    skipped without Slurm, and the cluster's queue emptied after each test."""
    usefixtures = pytest.mark.usefixtures("empty_queue")
    return [pytest.mark.e2e, pytest.mark.long, needs_slurm, usefixtures]


def long_job_running(make_box, tmp_path: Path, cluster: SlurmCluster, name: str):  # type: ignore[no-untyped-def]
    """A box whose bucket Long sleeps 300 s, and the scratchdir of its one job, once it runs
    in Slurm."""
    home = tmp_path / "home"
    install_buckets(home, Long=(sleep_sh(300), slurm_bucket()))
    box = make_box(home=home)
    send(box, tmp_path, "Long", name)
    return box, running_in_slurm(home, "Long", cluster)


def sleep_sh(seconds: int) -> str:
    return f"""#!/bin/sh
echo "$MB_SCRATCHDIR" >> "$MB_MEMORY/runs.txt"
echo started
sleep {seconds}
touch "$2/slept"
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    c.start()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(c.conf)  # the box and its sbatch find the cluster
    yield c
    c.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


@pytest.fixture
def slurm_box(box_factory, cluster: SlurmCluster):  # type: ignore[no-untyped-def]
    """box_factory with the fast polling above (``env`` given adds to it)."""

    def make(**kw: object) -> BoxServer:
        kw["env"] = {**FAST_ENV, **kw.get("env", {})}  # type: ignore[dict-item]
        kw.setdefault("quiet", QUIET)
        return box_factory(**kw)  # type: ignore[no-any-return]

    return make


@pytest.fixture
def empty_queue(cluster: SlurmCluster) -> Iterator[None]:
    yield
    cluster.cmd("scancel", "--user=root", check=False)


def slurm_bucket(**info: object) -> dict[str, object]:
    return {"executor": "slurm", **info}


def send(box: BoxServer, tmp_path: Path, bucket: str, name: str) -> None:
    study = write_study(tmp_path / name, n_images=1, rows=16, cols=16)
    assert len(send_files(box.dicom_port, bucket, study.paths, calling=name).ok) == 1


def runs(home: Path, bucket: str) -> list[str]:
    path = home / "memory" / bucket / "runs.txt"
    return path.read_text().split() if path.exists() else []


def running_in_slurm(home: Path, bucket: str, cluster: SlurmCluster) -> str:
    scratchdir = wait_for("the job to start on the node", lambda: runs(home, bucket), 90)[0]
    wait_for("squeue to list it", lambda: scratchdir in squeue_names(cluster))
    return scratchdir


def squeue_names(cluster: SlurmCluster) -> str:
    return cluster.cmd("squeue", "-h", "-o", "%j", check=False).stdout


COPY_SH = """#!/bin/sh
set -eu
echo "on $(hostname) as slurm job $SLURM_JOB_ID"
cp -r "$1/." "$2/"
echo "$MB_SCRATCHDIR" >> "$MB_MEMORY/runs.txt"
"""


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


def one_job(tmp_path: Path, name: str, script: str = "") -> tuple[RunRequest, Path]:
    """A job folder for a SlurmExecutor of its own; its work.sh (``script``, by default one
    that notes each run in ``runs`` beside it)."""
    job = tmp_path / name
    (job / "INPUT").mkdir(parents=True)
    (job / "OUTPUT").mkdir()
    work = job / "work.sh"
    noting = f'#!/bin/sh\necho run >> {job}/runs\nsleep 1\ntouch "$2/done"\n'
    work.write_text(script or noting)
    work.chmod(0o755)
    return RunRequest(name, job, work, [], {}, 60.0, executor="slurm"), job / "runs"
