"""Completeness across a kill -9: a send still waiting for its bucket's rule when the box
dies is, after the restart, judged by the same rule (receive/completeness.py) as if the
box had never stopped. A real box (``magickbox serve``), real dcmtk storescu sends.

- ``requires`` + ``wait_seconds``: a send that lacks a type goes on waiting after the
  restart and starts with both once the other type comes; one whose wait ran out fails
  with the reason, never run; the wait counts from the send's last file, not from the
  restart (a long outage: the folder's times set back, as the disk shows after one);
- ``grouping: "series"``: a send still being cut by series is one job per series.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BoxServer
from tests.e2e.peers import install_buckets, wait_for
from tests.e2e.test_completeness import (
    SERIES_SH,
    Study,
    finished,
    jobs_of,
    receiving,
    split_study,
    storescu,
)

pytestmark = pytest.mark.e2e

QUIET = 0.5  # the buckets' quiet window
NEEDS = {"requires": ["T1", "DWI"], "quiet_seconds": QUIET}
BUCKETS: dict[str, dict[str, Any]] = {
    "Waits": {**NEEDS, "wait_seconds": 60},  # never waited out here
    "Fails": {**NEEDS, "wait_seconds": 3},
    "Outage": {**NEEDS, "wait_seconds": 300},  # longer than any wait_for below
    "PerSeries": {"grouping": "series", "quiet_seconds": 3},
}
OUTAGE = 400  # seconds the box was "down" for the Outage bucket's send


def start_box(box_factory: Any, tmp_path: Path) -> BoxServer:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, **{name: (SERIES_SH, info) for name, info in BUCKETS.items()})
    return box_factory(quiet=0.3, home=home)


def waiting(box: BoxServer, bucket: str, n: int = 1) -> list[dict[str, Any]]:
    """The bucket's ``n`` sends once every one is quiet (its association closed)."""

    def probe() -> list[dict[str, Any]] | None:
        sends = receiving(box, bucket)
        quiet = len(sends) == n and not any(s["open_associations"] for s in sends)
        return sends if quiet else None

    return wait_for(f"{n} quiet sends of {bucket}", probe)


def set_back(box: BoxServer, bucket: str, seconds: float) -> None:
    """Make the bucket's waiting send look ``seconds`` older on disk (a long outage)."""
    incoming = box.home / "scratch" / ".incoming"
    (record,) = [p for p in incoming.glob("*.json")
                 if json.loads(p.read_text())["called_aet"] == bucket]  # fmt: skip
    folder = record.with_suffix("")
    then = time.time() - seconds
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (then, then))


def test_a_waiting_send_goes_on_waiting_after_kill9_and_fails_or_starts_as_before(
    box_factory: Any, tmp_path: Path
) -> None:
    box = start_box(box_factory, tmp_path)
    studies: dict[str, Study] = {b: split_study(tmp_path / b) for b in ("Waits", "Outage", "Fails")}
    for bucket, study in studies.items():  # T1 alone: each lacks DWI; Fails last, so
        storescu(box, bucket, "SCANNER", study.folders["t1"])  # the kill is within its 3 s
        assert waiting(box, bucket)[0]["files"] == 2
    assert all(jobs_of(box, b, s.uid) == [] for b, s in studies.items())  # none is a job yet
    box.kill9()
    set_back(box, "Outage", OUTAGE)
    box.start()

    # Its wait ran out across the restart: failed with the reason, never run.
    (failed,) = finished(box, "Fails", studies["Fails"].uid)
    assert failed["state"] == "failed" and failed["reason"] == "missing series: DWI"
    assert failed["started_at"] is None and failed["files"] == 2
    # Quiet for 400 s of a 300 s wait: failed now, not 300 s after the restart.
    (late,) = finished(box, "Outage", studies["Outage"].uid)
    assert late["state"] == "failed" and late["reason"] == "missing series: DWI"

    # Still waiting for DWI (its 60 s are not over): no job, the send is listed.
    time.sleep(QUIET * 4)
    assert jobs_of(box, "Waits", studies["Waits"].uid) == []
    (send,) = waiting(box, "Waits")
    assert send["files"] == 2 and send["study_uid"] == studies["Waits"].uid
    storescu(box, "Waits", "SCANNER", studies["Waits"].folders["dwi"])  # joins the send
    (job,) = finished(box, "Waits", studies["Waits"].uid)
    assert job["state"] == "done" and job["series_count"] == 2 and job["files"] == 4
    out = box.home / "scratch" / job["scratchdir"] / "OUTPUT"
    listed = (out / "files.txt").read_text().split()
    study = studies["Waits"]
    assert sorted(listed) == sorted(study.files["t1"] + study.files["dwi"])
    assert receiving(box, "Waits") == []


def test_a_send_cut_by_series_is_one_job_per_series_after_kill9(
    box_factory: Any, tmp_path: Path
) -> None:
    box = start_box(box_factory, tmp_path)
    study = split_study(tmp_path / "study")
    storescu(box, "PerSeries", "SPLITTER", *study.folders.values())  # one association
    sends = waiting(box, "PerSeries", n=4)  # one per series, each quiet for < 3 s
    assert sorted(s["series_uid"] for s in sends) == sorted(study.series.values())
    assert jobs_of(box, "PerSeries", study.uid) == []
    box.kill9()
    box.start()

    jobs = finished(box, "PerSeries", study.uid, n=4)
    seen: dict[str, list[str]] = {}
    for job in jobs:
        assert job["state"] == "done" and job["series_count"] == 1 and job["files"] == 2
        (row,) = box.get(f"/api/v1/jobs/{job['scratchdir']}/series").json()
        out = box.home / "scratch" / job["scratchdir"] / "OUTPUT"
        seen[row["series_uid"]] = sorted((out / "files.txt").read_text().split())
    by_uid = {uid: sorted(study.files[what]) for what, uid in study.series.items()}
    assert seen == by_uid
    assert receiving(box, "PerSeries") == []
