"""$MB_SERIES_JSON for a bucket run by the Slurm executor on a private one-node cluster:
the batch script exports it and the job on the node reads the manifest of what was sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import dcmread

from magickbox.testing.dicomgen import write_study
from magickbox.testing.slurmcluster import SlurmCluster
from tests.e2e.peers import install_buckets, job_dir, wait_jobs
from tests.e2e.slurm import cluster, empty_queue, needs_slurm, slurm_bucket

pytestmark = [pytest.mark.e2e, pytest.mark.long, needs_slurm,
              pytest.mark.usefixtures(empty_queue.__name__)]  # fmt: skip
__all__ = ["cluster"]  # a fixture used by name

COPY_SH = """#!/bin/sh
set -eu
cp "$MB_SERIES_JSON" "$2/series.json"
echo "slurm job $SLURM_JOB_ID read $MB_SERIES_JSON"
"""


def test_a_slurm_bucket_reads_the_series_manifest(
    box_factory, tmp_path: Path, cluster: SlurmCluster  # type: ignore[no-untyped-def]
) -> None:
    home = tmp_path / "home"
    install_buckets(home, Manifest=(COPY_SH, slurm_bucket()))
    box = box_factory(home=home)
    study = write_study(tmp_path / "study", n_images=3, series=3, rows=16, cols=16)
    sent = {str(dcmread(p, stop_before_pixels=True).SeriesInstanceUID): [p.name]
            for p in study.paths}  # fmt: skip
    res = box.storescu(study.paths[0].parent, "Manifest", "SLURMSCU")
    assert res.returncode == 0, res.stderr
    (job,) = wait_jobs(box, 1, timeout=120)
    assert job["state"] == "done", job
    folder = job_dir(box, job["scratchdir"])
    script = (folder / "slurm.sh").read_text()
    assert f"export MB_SERIES_JSON={folder / 'series.json'}" in script
    manifest = json.loads((folder / "OUTPUT" / "series.json").read_text())
    assert {s["SeriesInstanceUID"]: s["files"] for s in manifest["series"]} == sent
    assert [s["SeriesDescription"] for s in manifest["series"]] == ["t1", "t2", "flair"]
    assert "slurm job" in (folder / "processing.log").read_text()
