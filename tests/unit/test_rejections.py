"""The record of refused associations: what is stored, in which order, and how much."""

from __future__ import annotations

from pathlib import Path

from magickbox.jobs.db import open_database
from magickbox.receive import rejections
from magickbox.receive.rejections import Rejection, RejectionLog


def test_rows_are_paged_newest_first_and_long_values_cut(tmp_path: Path) -> None:
    log = RejectionLog(open_database(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    log.record(Rejection("A" * 200, "B", "10.0.0.1", 104, "r" * 5000))
    log.record(Rejection("SECOND", "B", "10.0.0.2", 2762, "why"))
    page = log.page(limit=1, offset=0)
    assert page["total"] == 2
    assert [r["calling_aet"] for r in page["rejections"]] == ["SECOND"]
    [first] = log.page(limit=10, offset=1)["rejections"]
    assert len(first["calling_aet"]) == rejections.AET_LEN
    assert len(first["reason"]) == rejections.REASON_LEN
    assert (first["address"], first["port"]) == ("10.0.0.1", 104)


def test_a_flood_keeps_only_the_newest_rows(tmp_path: Path) -> None:
    log = RejectionLog(open_database(f"sqlite:///{tmp_path / 'db.sqlite'}"), keep=30)
    for i in range(2 * rejections.TRIM_EVERY):
        log.record(Rejection(f"P{i}", "B", "10.0.0.1", 104, "flood"))
    page = log.page(limit=1000, offset=0)
    assert page["total"] == 30
    last = 2 * rejections.TRIM_EVERY - 1
    assert [r["calling_aet"] for r in page["rejections"]] == [
        f"P{i}" for i in range(last, last - 30, -1)
    ]


def test_a_database_error_is_logged_not_raised(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    sessions = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    sessions.kw["bind"].dispose()
    (tmp_path / "db.sqlite").unlink()
    (tmp_path / "db.sqlite").mkdir()  # the database is gone: no table, no file
    RejectionLog(sessions).record(Rejection("X", "Y", "1.2.3.4", 104, "why"))
    assert "could not record a refused association" in caplog.text
