"""Shared parts of the Slurm tests: a private single-node cluster per test module, the
buckets they install and the waits they use. Each module that uses them gets its own
cluster (module scope), so two Slurm test modules can run side by side (pytest -n).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from magickbox.testing.dicomgen import write_study
from magickbox.testing.slurmcluster import SlurmCluster, available
from tests.conftest import BoxServer
from tests.e2e.peers import send_files, wait_for

# Skipped only where Slurm is not installed and CI is not set: install.sh installs it.
needs_slurm = pytest.mark.skipif(
    not available() and not os.environ.get("CI"),
    reason="Slurm is not installed (apt-get install slurm-wlm munge)",
)


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
