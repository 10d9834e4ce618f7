"""Slurm's own time limit fails the job with Slurm's reason.

Its own module (and so its own cluster) because slurmctld checks time limits only about
every 30 s on a limit of at least a minute: with pytest -n it runs beside the other Slurm
tests instead of after them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from magickbox.testing.slurmcluster import SlurmCluster
from tests.e2e.peers import install_buckets, wait_jobs
from tests.e2e.slurm import cluster, empty_queue, needs_slurm, send, sleep_sh, slurm_bucket

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.long,
    needs_slurm,
    pytest.mark.usefixtures(empty_queue.__name__),
]
__all__ = ["cluster", "empty_queue"]  # fixtures used by name


def test_a_job_over_its_time_limit_fails_with_slurms_reason(
    box_factory, tmp_path: Path, cluster: SlurmCluster
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Late=(sleep_sh(300), slurm_bucket(timeout=3)))
    box = box_factory(home=home)
    send(box, tmp_path, "Late", "late")
    (job,) = wait_jobs(box, 1, timeout=150)  # Slurm checks time limits about every 30 s
    assert job["state"] == "failed" and "time limit" in job["reason"], job
