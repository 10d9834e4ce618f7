"""getScratch objects: the value types the seed's scripts parse, and RFC 2822 dates."""

from __future__ import annotations

import os
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from magickbox.config import Settings
from magickbox.jobs.db import State, open_database
from magickbox.jobs.store import JobStore, NewJob
from magickbox.web.views import (
    ScratchRenderer,
    processing_time,
    scratch_entry,
    scratch_listing,
)

# ---------------------------------------------------------------- processing_time


@pytest.mark.parametrize("state", [State.RECEIVED, State.QUEUED, State.RUNNING])
def test_processing_time_is_zero_until_finished(state: State) -> None:
    assert processing_time(state, 100.0, None, 50.0) == "0"
    # Even with a stale finished_at from an earlier run (a retry in progress).
    assert processing_time(state, 100.0, 200.0, 50.0) == "0"


@pytest.mark.parametrize("state", [State.DONE, State.FAILED])
def test_processing_time_of_finished_jobs_is_whole_seconds(state: State) -> None:
    assert processing_time(state, 100.0, 112.0, 50.0) == "12"
    assert processing_time(state, 100.0, 112.4, 50.0) == "13"  # whole seconds, rounded up
    assert processing_time(state, 100.0, None, 50.0) == "0"  # not actually finished


@pytest.mark.parametrize("elapsed", [0.0, 0.001, 0.5, 1.0])
def test_processing_time_is_never_zero_once_finished(elapsed: float) -> None:
    """Scripts wait for processingTime != "0": a fast job must still look finished."""
    value = processing_time(State.DONE, 100.0, 100.0 + elapsed, 100.0)
    assert value == "1"


def test_processing_time_of_a_job_that_never_started_counts_from_receipt() -> None:
    """A job failed by the queue (no bucket) has no started_at."""
    assert processing_time(State.FAILED, None, 130.0, 100.0) == "30"


def test_processing_time_is_always_a_string_of_digits() -> None:
    for args in [(State.DONE, 1.0, 5000.5, 0.0), (State.RUNNING, 1.0, None, 0.0)]:
        value = processing_time(*args)
        assert isinstance(value, str)
        assert value.isdigit()


# ---------------------------------------------------------------- scratch_entry


def base_row(**kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "scratchdir": "tmp.abcdef12",
        "bucket": "ProcBucket",
        "caller_aet": "ip44",
        "caller_ip": "10.0.0.9",
        "received_text": "Tue Nov 14 22:13:20 UTC 2023",
        "study_uid": "1.2.3",
        "state": State.DONE,
        "started_at": 1_700_000_010.0,
        "finished_at": 1_700_000_025.5,
        "log_size": 321,
        "jobname": "",
        "received_at": 1_700_000_000.0,
    }
    row.update(kw)
    return row


STRING_FIELDS = (
    "AETitleCalled",
    "AETitleCaller",
    "CallerIP",
    "received",
    "scratchdir",
    "pid",
    "lastChangedTime",
    "processingTime",
    "status",
    "jobname",
)


def test_finished_entry_types_and_values(tmp_path: Path) -> None:
    now = 1_700_000_100.0
    entry = scratch_entry(base_row(), tmp_path, now)
    for name in STRING_FIELDS:
        assert isinstance(entry[name], str), name
    assert entry["scratchdir"] == "tmp.abcdef12"
    assert entry["pid"] == "1.2.3"
    assert entry["processingTime"] == "16"
    assert entry["AETitleCalled"] == "ProcBucket"
    assert entry["AETitleCaller"] == "ip44"
    assert entry["CallerIP"] == "10.0.0.9"
    assert entry["received"] == "Tue Nov 14 22:13:20 UTC 2023"
    assert entry["status"] == "done"
    # Finished jobs are answered from the row alone (no stat of the log).
    assert entry["processingLogSize"] == 321
    assert isinstance(entry["processingLast"], int)
    assert entry["processingLast"] == int(now - 1_700_000_025.5)


def test_last_changed_time_is_rfc_2822(tmp_path: Path) -> None:
    entry = scratch_entry(base_row(), tmp_path, 1_700_000_100.0)
    parsed = parsedate_to_datetime(entry["lastChangedTime"])
    assert parsed.tzinfo is not None  # with a numeric zone, as RFC 2822 wants
    assert parsed.timestamp() == int(1_700_000_025.5)
    day, rest = entry["lastChangedTime"].split(", ", 1)
    assert day in ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    assert rest[-5] in "+-" and rest[-4:].isdigit()


def test_running_entry_reads_the_log_file(tmp_path: Path) -> None:
    job_dir = tmp_path / "tmp.abcdef12"
    job_dir.mkdir()
    log = job_dir / "processing.log"
    log.write_text("x" * 77)
    os.utime(log, (1_700_000_050, 1_700_000_050))
    row = base_row(state=State.RUNNING, finished_at=None, log_size=0)
    entry = scratch_entry(row, tmp_path, 1_700_000_060.0)
    assert entry["processingTime"] == "0"
    assert entry["processingLogSize"] == 77
    assert parsedate_to_datetime(entry["lastChangedTime"]).timestamp() == 1_700_000_050
    assert entry["processingLast"] == 10


def test_entry_without_a_log_falls_back_to_receipt(tmp_path: Path) -> None:
    row = base_row(state=State.QUEUED, finished_at=None, started_at=None)
    entry = scratch_entry(row, tmp_path, 1_700_000_000.0)
    assert entry["processingLogSize"] == 0
    assert parsedate_to_datetime(entry["lastChangedTime"]).timestamp() == 1_700_000_000
    assert entry["processingTime"] == "0"


@pytest.mark.parametrize(
    ("study_uid", "jobname", "expected"),
    [("1.2.3", "name", "1.2.3"), ("", "name", "name"), ("", "", "tmp.abcdef12")],
)
def test_pid_is_always_a_non_empty_string(
    tmp_path: Path, study_uid: str, jobname: str, expected: str
) -> None:
    entry = scratch_entry(base_row(study_uid=study_uid, jobname=jobname), tmp_path, 0.0)
    assert entry["pid"] == expected
    assert entry["jobname"] == jobname  # the upload's name as given, "" when none


def test_listing_from_real_store_rows(tmp_path: Path) -> None:
    """The store's rows and the view agree on every key, for finished and waiting jobs."""
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'db'}")
    settings.scratch.mkdir(parents=True)
    settings.archive.mkdir()
    store = JobStore(settings, open_database(settings.db_url))
    made = []
    for i in range(2):
        src = tmp_path / f"send{i}"
        src.mkdir()
        (src / "a.dcm").write_bytes(b"DICM")
        made.append(store.create_job(src, NewJob("ProcBucket", "ip44", "10.0.0.9", "1.2.3")))
    store.claim_next("ProcBucket")
    store._update(made[0].scratchdir, state=State.DONE, finished_at=made[0].received_at + 0.2)
    listing = scratch_listing(store.scratch_rows(), settings.scratch)
    store.sessions.kw["bind"].dispose()

    by_dir = {e["scratchdir"]: e for e in listing}
    assert [e["scratchdir"] for e in listing] == [made[1].scratchdir, made[0].scratchdir]
    assert by_dir[made[0].scratchdir]["processingTime"] == "1"
    assert by_dir[made[1].scratchdir]["processingTime"] == "0"
    for entry in listing:
        for name in STRING_FIELDS:
            assert isinstance(entry[name], str), name
        parsedate_to_datetime(entry["lastChangedTime"])


def without_last(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries without processingLast (a clock reading that may tick between two calls)."""
    for entry in entries:
        assert isinstance(entry.pop("processingLast"), int)
    return entries


def test_renderer_gives_the_same_objects_as_the_listing(tmp_path: Path) -> None:
    rows = [
        base_row(scratchdir="tmp.done0001"),
        base_row(scratchdir="tmp.runn0001", state=State.RUNNING, finished_at=None),
        base_row(scratchdir="tmp.fail0001", state=State.FAILED),
    ]
    renderer = ScratchRenderer()
    for _ in range(2):  # the second time from the cache
        rendered = orjson.loads(renderer.render(rows, tmp_path))
        assert without_last(rendered) == without_last(scratch_listing(rows, tmp_path))


def test_renderer_notices_a_job_that_finished_again(tmp_path: Path) -> None:
    renderer = ScratchRenderer()
    row = base_row(scratchdir="tmp.retr0001", log_size=10)
    renderer.render([row], tmp_path)
    again = {**row, "finished_at": row["finished_at"] + 50, "log_size": 99}
    (entry,) = orjson.loads(renderer.render([again], tmp_path))
    assert entry["processingLogSize"] == 99
    assert without_last([entry]) == without_last(scratch_listing([again], tmp_path))


def test_renderer_forgets_deleted_jobs(tmp_path: Path) -> None:
    renderer = ScratchRenderer()
    rows = [base_row(scratchdir=f"tmp.gone{i:04d}") for i in range(3)]
    renderer.render(rows, tmp_path)
    left = orjson.loads(renderer.render(rows[:1], tmp_path))
    assert without_last(left) == without_last(scratch_listing(rows[:1], tmp_path))
    assert list(renderer._finished) == ["tmp.gone0000"]
