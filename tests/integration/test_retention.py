"""Retention, the scrub and the sweep over a real Box, its SQLite database and a 60 MB tmpfs
home: jobs made by the store as the receiver makes them (INPUT hard-linked into the
archive), ended at chosen times, some still running or with sends to come."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from magickbox.box import Box
from magickbox.config import load_settings
from magickbox.jobs.db import State
from magickbox.jobs.retention import STALE_SECONDS
from magickbox.jobs.store import NewJob
from magickbox.routing.models import RoutingLog, Send, SendState
from tests.conftest import copy_bucket, tmpfs

MB = 1 << 20
DAY = 86400.0
KEEP = "#!/bin/sh\nexit 0\n"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk") as disk:
        copy_bucket(disk / "home", "Keep", KEEP)
        copy_bucket(disk / "home", "Long", KEEP, keep_days=10)
        yield disk / "home"


def make_box(home: Path, **settings: object) -> Box:
    return Box(load_settings(home, announce=False, disk_reserve="0", **settings))


def add_job(
    box: Box, n: int, *, size: int = 4 * MB, bucket: str = "Keep", study: int | None = None
) -> str:
    """A job of one ``size`` file in study ``study`` (default: its own), made as a received
    send is made."""
    folder = box.settings.scratch / f"in{n}"
    folder.mkdir()
    (folder / f"1.2.3.{n}.dcm").write_bytes(os.urandom(size))
    uid = f"1.2.3.{n if study is None else study}"
    new = NewJob(bucket=bucket, caller_aet="PACS", caller_ip="10.0.0.1", study_uid=uid)
    return box.store.create_job(folder, new).scratchdir


def end(box: Box, name: str, ago: float, state: State = State.DONE, routed: bool = True) -> None:
    """Mark a job ended ``ago`` seconds ago; ``routed``: its routing was evaluated then."""
    at = time.time() - ago
    box.store.finish(name, {"state": state, "started_at": at - 1, "finished_at": at})
    if routed:
        with box.store.sessions.begin() as s:
            s.add(RoutingLog(scratchdir=name, outcome="evaluated", at=at + 1))


def exists(box: Box, name: str) -> bool:
    return box.store.get(name) is not None and (box.settings.scratch / name).is_dir()


def used_percent(box: Box) -> float:
    return box.disk_status().used_percent


def test_the_scrub_frees_down_to_the_low_mark_oldest_first_and_spares_what_it_must(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = make_box(home, scrub_high=50, scrub_low=30)
    running = add_job(box, 0)  # the oldest of all, but not finished
    box.store.claim_next("Keep")
    unsent = add_job(box, 1)
    end(box, unsent, 9 * DAY)
    with box.store.sessions.begin() as s:
        s.add(Send(scratchdir=unsent, state=SendState.PENDING, ip="10.0.0.9", port=104))
    unrouted = add_job(box, 2)
    end(box, unrouted, 3600, routed=False)  # ended an hour ago, its routing not evaluated
    done = [add_job(box, n) for n in range(3, 9)]
    for age, name in enumerate(done):
        end(box, name, (8 - age) * DAY, State.FAILED if age == 1 else State.DONE)
    assert used_percent(box) > 50

    with caplog.at_level(logging.INFO, logger="magickbox"):
        removed = box.sweep()

    assert used_percent(box) < 30
    gone = [r.name for r in removed if r.kind == "job"]
    assert gone == done[: len(gone)] and 0 < len(gone) < len(done)  # the oldest first
    assert not any(exists(box, name) for name in gone)
    assert all(exists(box, name) for name in done[len(gone) :])
    assert all(exists(box, name) for name in (running, unsent, unrouted))
    studies = [r for r in removed if r.kind == "study"]
    assert len(studies) == len(gone)  # each study's last job went, and its archive with it
    assert all(r.freed >= 4 * MB for r in studies)
    assert not any((box.settings.archive / f"1.2.3.{n}").exists() for n in range(3, 3 + len(gone)))
    assert (box.settings.archive / "1.2.3.1").is_dir()  # the unsent job's study stays
    logged = [r.getMessage() for r in caplog.records if "freed" in r.getMessage()]
    assert len(logged) == len(removed)


def test_the_scrub_does_nothing_below_the_high_mark(home: Path) -> None:
    box = make_box(home, scrub_high=90, scrub_low=80)
    names = [add_job(box, n) for n in range(3)]
    for name in names:
        end(box, name, 30 * DAY)
    assert box.sweep() == []
    assert all(exists(box, name) for name in names)


def test_retention_removes_jobs_after_keep_days_failed_ones_later_per_bucket(
    home: Path,
) -> None:
    box = make_box(home, keep_days=1, keep_failed_days=3)
    old_done, old_failed, older_failed, long_kept, recent = (
        add_job(box, n, size=1000, bucket="Long" if n == 3 else "Keep") for n in range(5)
    )
    end(box, old_done, 2 * DAY)
    end(box, old_failed, 2 * DAY, State.FAILED)
    end(box, older_failed, 4 * DAY, State.FAILED)
    end(box, long_kept, 5 * DAY)  # its bucket keeps jobs 10 days
    end(box, recent, 3600)
    queued = add_job(box, 9, size=1000)

    removed = box.sweep()

    assert sorted(r.name for r in removed) == sorted([old_done, older_failed])
    assert all(r.freed > 0 for r in removed)
    for name in (old_failed, long_kept, recent, queued):
        assert exists(box, name)
    assert (box.settings.archive / "1.2.3.0").is_dir()  # retention removes jobs, not studies


def test_the_sweep_removes_stale_leftovers_and_keeps_fresh_ones(home: Path) -> None:
    box = make_box(home)
    s = box.settings
    job = add_job(box, 0, size=1000)
    for folder in (s.uploads, s.partial, s.incoming):
        folder.mkdir(parents=True, exist_ok=True)
    stale = [s.uploads / "old.zip", s.partial / "tmpold.dcm", s.incoming / "lone",
             s.incoming / "gone.json", s.scratch / "tmp.orphaned"]  # fmt: skip
    fresh = [s.uploads / "new.zip", s.partial / "tmpnew.dcm", s.scratch / "tmp.justmade"]
    adoptable = s.scratch / "tmp.complete"  # has INPUT: the next start adopts it
    (adoptable / "INPUT").mkdir(parents=True)
    (adoptable / "INPUT" / "a.dcm").write_bytes(b"x" * 5000)
    pair = [s.incoming / "arrival", s.incoming / "arrival.json"]  # a send to come: kept
    for path in stale + fresh + pair:
        if path.suffix:
            path.write_bytes(b"x" * 5000)
        else:
            path.mkdir()
            (path / "f.dcm").write_bytes(b"x" * 5000)
    old = time.time() - STALE_SECONDS - 60
    for path in [*stale, *pair, adoptable]:
        for p in [path, *path.rglob("*")]:
            os.utime(p, (old, old))

    removed = box.sweep()

    assert sorted(r.name for r in removed) == sorted(str(p.relative_to(s.scratch)) for p in stale)
    assert all(r.freed == 5000 for r in removed)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in [*fresh, *pair, adoptable])
    assert exists(box, job)


def test_deleting_a_study_frees_its_archive_too(home: Path) -> None:
    box = make_box(home)
    name = add_job(box, 0, size=2 * MB)
    free_before = shutil.disk_usage(home).free
    job_answer = box.delete_job(name)
    assert job_answer["freed_bytes"] < MB  # INPUT's bytes stay, in the archive
    other = add_job(box, 1, size=2 * MB, study=0)
    answer = box.delete_study("1.2.3.0")
    assert answer["deleted_jobs"] == [other] and answer["archive_deleted"] is True
    assert answer["freed_bytes"] >= 4 * MB  # both sends' files: the archive kept both
    # The files come back; the database in the same home may grow by a few pages meanwhile.
    assert shutil.disk_usage(home).free >= free_before + 2 * MB - 256 * 1024


def test_the_sweep_never_removes_a_job_queued_again_meanwhile(home: Path) -> None:
    """The row's state decides in the delete itself: a retry between the sweep's look and
    its removal keeps the job."""
    box = make_box(home, keep_days=1)
    name = add_job(box, 0, size=1000)
    end(box, name, 5 * DAY)
    [job] = box.store.finished_jobs()
    assert box.store.requeue(name, "retry requested")
    assert box.sweeper.remove_job(job, "test", with_study=True) == []
    assert exists(box, name) and box.store.get(name).state == State.QUEUED  # type: ignore[union-attr]


def test_the_scrub_removes_archived_studies_no_job_refers_to_oldest_first(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A study whose jobs were deleted by hand keeps its archive folder; the scrub takes it
    in its turn by the folder's age, among the finished jobs by their end."""
    box = make_box(home, scrub_high=50, scrub_low=30)
    orphan = add_job(box, 0, size=12 * MB)
    box.delete_job(orphan)  # its INPUT stays in the archive, no job refers to it
    fresh_orphan = add_job(box, 1, size=MB)
    box.delete_job(fresh_orphan)
    month_ago = time.time() - 30 * DAY
    os.utime(box.settings.archive / "1.2.3.0", (month_ago, month_ago))
    done = [add_job(box, n) for n in range(2, 7)]
    for age, name in enumerate(done):
        end(box, name, (6 - age) * DAY)
    assert used_percent(box) > 50

    with caplog.at_level(logging.INFO, logger="magickbox"):
        removed = box.sweep()

    assert used_percent(box) < 30
    first = removed[0]
    assert (first.kind, first.name) == ("study", "1.2.3.0") and first.freed >= 12 * MB
    assert "no job refers to it" in first.reason
    assert not (box.settings.archive / "1.2.3.0").exists()
    assert (box.settings.archive / "1.2.3.1").is_dir()  # newer than every job: its turn is later
    gone = [r.name for r in removed if r.kind == "job"]
    assert gone == done[: len(gone)] and len(gone) < len(done)
    assert "scrub: removed archived study 1.2.3.0 (no job refers to it): freed" in caplog.text


def test_a_buckets_keep_failed_days_and_keep_days_override_the_boxs(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy_bucket(home, "Brief", KEEP, keep_days=1, keep_failed_days=20)
    box = make_box(home, keep_days=5)  # keep_failed_days 0: failed ones as keep_days
    brief_done, brief_failed, brief_old_failed = (
        add_job(box, n, size=1000, bucket="Brief") for n in range(3)
    )
    keep_done, keep_failed = (add_job(box, n, size=1000) for n in range(3, 5))
    end(box, brief_done, 2 * DAY)  # Brief keeps done jobs 1 day
    end(box, brief_failed, 10 * DAY, State.FAILED)  # ... and failed ones 20
    end(box, brief_old_failed, 25 * DAY, State.FAILED)
    end(box, keep_done, 2 * DAY)  # the box keeps everything 5 days
    end(box, keep_failed, 6 * DAY, State.FAILED)

    with caplog.at_level(logging.INFO, logger="magickbox"):
        removed = box.sweep()

    assert sorted(r.name for r in removed) == sorted([brief_done, brief_old_failed, keep_failed])
    assert exists(box, brief_failed) and exists(box, keep_done)
    for r in removed:  # each removal logged: which job, why, what it freed
        assert f"removed job {r.name}" in caplog.text and f"freed {r.freed} bytes" in caplog.text
    assert "kept 20 days after it ended (failed)" in caplog.text
