"""Completeness per bucket with a real peer: dcmtk's storescu sends generated MR series
(SeriesDescription t1, t2, flair, dwi: the default rules type them T1, T2, FLAIR, DWI)
to the real receiver of an in-process box.

- ``requires: ["T1", "DWI"]``: a send with T1 alone waits (no job) until DWI comes, then
  one job runs with both; after ``wait_seconds`` without DWI the job is made failed with
  "missing series: DWI" (never run), or runs anyway with ``on_missing: "run"``;
- ``grouping: "series"``: one job per series, linked as parts of one study;
- a scanner-like send that pauses longer than the quiet window is one job with
  ``merge_seconds`` and two linked parts without;
- ``$MB_SERIES_JSON``, copied out by the bucket, lists what was sent, series by series.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from magickbox.names import study_key
from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer, InProcessBox, copy_bucket, dcmtk, in_process_box
from tests.e2e.peers import wait_for

# Keeps the manifest it was given and lists its INPUT.
SERIES_SH = """#!/bin/sh
if [ -n "$MB_SERIES_JSON" ]; then cp "$MB_SERIES_JSON" "$2/series.json"; fi
ls "$1" > "$2/files.txt"
echo '[{"success": "success", "message": "listed"}]' > "$MB_PROC_JSON"
"""
QUIET = 0.5  # the buckets' quiet window (the box's is shorter: theirs must count)
NEEDS = {"requires": ["T1", "DWI"], "quiet_seconds": QUIET}
BUCKETS: dict[str, dict[str, Any]] = {
    "NeedsBoth": {**NEEDS, "wait_seconds": 60},
    "NeedsFail": {**NEEDS, "wait_seconds": 1.5},
    "NeedsRun": {**NEEDS, "wait_seconds": 1.5, "on_missing": "run"},
    "PerSeries": {"grouping": "series", "quiet_seconds": QUIET},
    "Merge": {"merge_seconds": 6, "quiet_seconds": QUIET},
    "NoMerge": {"quiet_seconds": QUIET},
    "MergeNeeds": {**NEEDS, "wait_seconds": 60, "merge_seconds": 6},
    "HeldEta": {"merge_seconds": 60, "quiet_seconds": QUIET},  # never runs in these tests
}


@dataclass
class Study:
    uid: str
    folders: dict[str, Path]  # SeriesDescription -> a folder of that series' files
    series: dict[str, str]  # SeriesDescription -> SeriesInstanceUID
    files: dict[str, list[str]]  # SeriesDescription -> its file names


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessBox]:
    home = tmp_path_factory.mktemp("completeness") / "home"
    for name, info in BUCKETS.items():
        copy_bucket(home, name, SERIES_SH, **info)
    with in_process_box(home, dicom=True, quiet_seconds=0.2) as box:
        yield box


@pytest.fixture
def study(tmp_path: Path) -> Study:
    return split_study(tmp_path)


def split_study(tmp_path: Path) -> Study:
    """A fresh 4-series MR study (2 images each), its files split into a folder per series."""
    info = write_study(tmp_path / "all", n_images=8, series=4, rows=16, cols=16)
    study = Study(info.study_uid, {}, {}, {})
    for path in info.paths:
        ds = dcmread(path, stop_before_pixels=True)
        what = str(ds.SeriesDescription)
        folder = study.folders.setdefault(what, tmp_path / what)
        folder.mkdir(exist_ok=True)
        shutil.copy(path, folder / path.name)
        study.series[what] = str(ds.SeriesInstanceUID)
        study.files.setdefault(what, []).append(path.name)
    assert sorted(study.folders) == ["dwi", "flair", "t1", "t2"]
    return study


def storescu(app: InProcessBox | BoxServer, called: str, calling: str, *folders: Path) -> None:
    """One association carrying every file of ``folders``."""
    cmd = [dcmtk("storescu"), "+sd", "+r", "-nh", "-aet", calling, "-aec", called,
           "127.0.0.1", str(app.dicom_port), *map(str, folders)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TCP_NODELAY": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr


def jobs_of(app: InProcessBox | BoxServer, bucket: str, study_uid: str) -> list[dict[str, Any]]:
    params = {"bucket": bucket, "study_uid": study_uid, "limit": 100}
    return app.get("/api/v1/jobs", params=params).json()["jobs"]


def finished(app: InProcessBox | BoxServer, bucket: str, study_uid: str, n: int = 1) -> list[dict]:
    def probe() -> list[dict] | None:
        jobs = jobs_of(app, bucket, study_uid)
        over = len(jobs) == n and all(j["state"] in ("done", "failed") for j in jobs)
        return jobs if over else None

    return wait_for(f"{n} finished jobs of {bucket}", probe, timeout=90)


def job_folder(app: InProcessBox, job: dict) -> Path:
    return app.box.settings.scratch / job["scratchdir"]


def detail(app: InProcessBox, job: dict) -> dict[str, Any]:
    return app.get(f"/api/v1/jobs/{job['scratchdir']}").json()


def manifest_of(app: InProcessBox, job: dict) -> dict[str, dict[str, Any]]:
    """The bucket's copy of $MB_SERIES_JSON, by SeriesDescription."""
    data = json.loads((job_folder(app, job) / "OUTPUT" / "series.json").read_text())
    assert data["input"] == "INPUT"
    return {s["SeriesDescription"]: s for s in data["series"]}


def assert_manifest_is(app: InProcessBox, job: dict, study: Study, sent: list[str]) -> None:
    """The manifest names exactly the sent series, their files and their types."""
    manifest = manifest_of(app, job)
    assert sorted(manifest) == sorted(sent)
    numbers = {"t1": 1, "t2": 2, "flair": 3, "dwi": 4}  # write_study's order
    for what in sent:
        entry = manifest[what]
        assert entry["SeriesInstanceUID"] == study.series[what]
        assert entry["StudyInstanceUID"] == study.uid
        assert entry["SeriesNumber"] == numbers[what] and entry["Modality"] == "MR"
        assert sorted(entry["files"]) == sorted(study.files[what])
        assert entry["NumFiles"] == len(study.files[what])
        assert what.upper() in entry["ClassifyType"]
        for name in entry["files"]:  # names relative to INPUT, of files that are there
            assert (job_folder(app, job) / "INPUT" / name).is_file()


def receiving(app: InProcessBox | BoxServer, called: str) -> list[dict[str, Any]]:
    return [a for a in app.get("/api/v1/receiving").json() if a["called_aet"] == called]


def test_requires_waits_while_a_type_is_missing_then_starts_with_both(
    app: InProcessBox, study: Study
) -> None:
    storescu(app, "NeedsBoth", "WAITER", study.folders["t1"])
    time.sleep(QUIET * 4)  # quiet for four windows: without DWI the send is still waiting
    assert jobs_of(app, "NeedsBoth", study.uid) == []
    waiting = receiving(app, "NeedsBoth")
    assert len(waiting) == 1 and waiting[0]["files"] == 2 and waiting[0]["series"] == 1
    storescu(app, "NeedsBoth", "WAITER", study.folders["dwi"])
    (job,) = finished(app, "NeedsBoth", study.uid)
    assert job["state"] == "done" and job["series_count"] == 2 and job["files"] == 4
    assert_manifest_is(app, job, study, ["t1", "dwi"])
    assert receiving(app, "NeedsBoth") == []


def test_requires_fails_with_the_reason_after_wait_seconds(app: InProcessBox, study: Study) -> None:
    storescu(app, "NeedsFail", "FAILER", study.folders["t1"], study.folders["t2"])
    (job,) = finished(app, "NeedsFail", study.uid)
    assert job["state"] == "failed" and job["reason"] == "missing series: DWI"
    assert job["started_at"] is None  # never run
    assert not any((job_folder(app, job) / "OUTPUT").iterdir())
    log = (job_folder(app, job) / "processing.log").read_text()
    assert "not run: missing series: DWI" in log
    assert job["files"] == 4  # what was sent is kept, and archived
    archived = app.box.settings.archive / study_key(study.uid)
    assert sorted(p.name for p in archived.rglob("*.dcm")) == sorted(
        study.files["t1"] + study.files["t2"]
    )


def test_on_missing_run_starts_anyway_with_a_note(app: InProcessBox, study: Study) -> None:
    storescu(app, "NeedsRun", "RUNNER", study.folders["t1"])
    (job,) = finished(app, "NeedsRun", study.uid)
    assert job["state"] == "done" and job["reason"] is None
    log = (job_folder(app, job) / "processing.log").read_text()
    assert 'missing series: DWI; run anyway (on_missing "run")' in log
    assert_manifest_is(app, job, study, ["t1"])


def test_grouping_series_makes_one_job_per_series_linked_as_parts(
    app: InProcessBox, study: Study
) -> None:
    storescu(app, "PerSeries", "SPLITTER", *study.folders.values())  # one association
    jobs = finished(app, "PerSeries", study.uid, n=4)
    by_series: dict[str, dict] = {}
    for job in jobs:
        assert job["state"] == "done" and job["series_count"] == 1 and job["files"] == 2
        (what,) = manifest_of(app, job)
        by_series[what] = job
        assert_manifest_is(app, job, study, [what])
    assert sorted(by_series) == ["dwi", "flair", "t1", "t2"]
    every = {j["scratchdir"] for j in jobs}
    for job in jobs:
        assert set(detail(app, job)["parts"]) == every - {job["scratchdir"]}


def send_with_a_pause(app: InProcessBox, bucket: str, study: Study) -> None:
    """A scanner: two series, a pause three quiet windows long, two more."""
    storescu(app, bucket, "SCANNER", study.folders["t1"], study.folders["t2"])
    wait_for("the first part to be a job", lambda: jobs_of(app, bucket, study.uid))
    time.sleep(QUIET * 3)
    storescu(app, bucket, "SCANNER", study.folders["flair"], study.folders["dwi"])


def test_a_paused_send_is_merged_into_its_held_job_with_merge_seconds(
    app: InProcessBox, study: Study
) -> None:
    send_with_a_pause(app, "Merge", study)
    (job,) = finished(app, "Merge", study.uid)
    assert job["state"] == "done" and job["files"] == 8 and job["series_count"] == 4
    assert detail(app, job)["parts"] == []
    assert_manifest_is(app, job, study, ["t1", "t2", "flair", "dwi"])
    listed = (job_folder(app, job) / "OUTPUT" / "files.txt").read_text().split()
    assert sorted(listed) == sorted(n for names in study.files.values() for n in names)
    assert (
        "joined this job (merge_seconds)" in (job_folder(app, job) / "processing.log").read_text()
    )
    series = app.get(f"/api/v1/jobs/{job['scratchdir']}/series").json()
    assert sorted(s["series_uid"] for s in series) == sorted(study.series.values())


def test_without_merge_seconds_a_paused_send_is_two_linked_parts(
    app: InProcessBox, study: Study
) -> None:
    send_with_a_pause(app, "NoMerge", study)
    first, second = sorted(finished(app, "NoMerge", study.uid, n=2), key=lambda j: j["received_at"])
    assert detail(app, first)["parts"] == [second["scratchdir"]]
    assert detail(app, second)["parts"] == [first["scratchdir"]]
    assert {first["files"], second["files"]} == {4}
    sent = {what for job in (first, second) for what in manifest_of(app, job)}
    assert sent == {"t1", "t2", "flair", "dwi"}


def test_a_later_part_counts_the_types_of_the_held_job_it_joins(
    app: InProcessBox, study: Study
) -> None:
    """T1 and DWI first (complete: a held job), then FLAIR alone: it lacks both required
    types itself, but joins the held job at once instead of waiting its 60 s."""
    storescu(app, "MergeNeeds", "SCANNER", study.folders["t1"], study.folders["dwi"])
    wait_for("the first part to be a job", lambda: jobs_of(app, "MergeNeeds", study.uid))
    storescu(app, "MergeNeeds", "SCANNER", study.folders["flair"])
    (job,) = finished(app, "MergeNeeds", study.uid)
    assert job["state"] == "done" and job["series_count"] == 3 and job["files"] == 6
    assert_manifest_is(app, job, study, ["t1", "dwi", "flair"])


def test_the_eta_of_a_held_job_starts_when_its_hold_is_over(
    app: InProcessBox, study: Study
) -> None:
    """A job held by merge_seconds is queued with queued_at ahead: its ETA starts then,
    not now, though a worker is free."""
    app.get("/code/php/timing.php", params={"aetitle": "HeldEta", "time": "100"})
    storescu(app, "HeldEta", "SCANNER", study.folders["t1"])
    # A job is made "received" and queued a moment later: wait until it has moved on.
    (job,) = wait_for("the held job past received", lambda: [
        j for j in jobs_of(app, "HeldEta", study.uid) if j["state"] != "received"])  # fmt: skip
    assert job["state"] == "queued"
    held_until = when(job["queued_at"])
    assert held_until > time.time()  # held: 60 s from its making
    eta = job["eta"]
    assert when(eta["starts_at"]) == pytest.approx(held_until, abs=2e-3)
    assert when(eta["finishes_at"]) == pytest.approx(held_until + 100, abs=2e-3)
    assert eta["ahead"] == 0 and eta["mean_seconds"] == 100.0


def when(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
