"""Buckets on disk: enabled parsing, unusable info.json, live folders, hostile AE titles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from magickbox.buckets import registry
from magickbox.buckets.registry import all_buckets, enabled_bucket, read_bucket


@pytest.fixture
def streams(tmp_path: Path) -> Path:
    s = tmp_path / "home" / "streams"
    s.mkdir(parents=True)
    return s


def put_bucket(folder: Path, info: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = info if isinstance(info, str) else json.dumps(info)
    (folder / "info.json").write_text(text)
    (folder / "work.sh").write_text("#!/bin/sh\n")
    return folder


@pytest.mark.parametrize("value", ["1", 1, True, "true", "True", " yes ", "t"])
def test_enabled_values(streams: Path, value: object) -> None:
    put_bucket(streams / "bucketA", {"AETitle": "A", "enabled": value})
    bucket = enabled_bucket(streams, "A")
    assert bucket is not None
    assert bucket.enabled
    assert bucket.path == streams / "bucketA"
    assert bucket.work_sh == streams / "bucketA" / "work.sh"


@pytest.mark.parametrize("value", ["0", 0, False, "false", "", None, "no", 2])
def test_disabled_values(streams: Path, value: object) -> None:
    put_bucket(streams / "bucketA", {"AETitle": "A", "enabled": value})
    assert enabled_bucket(streams, "A") is None
    assert "A" in all_buckets(streams)  # still listed, just not enabled


def test_missing_enabled_means_disabled(streams: Path) -> None:
    put_bucket(streams / "bucketA", {"AETitle": "A"})
    assert enabled_bucket(streams, "A") is None


@pytest.mark.parametrize(
    "info",
    [
        {"name": "no title", "enabled": 1},
        {"AETitle": "", "enabled": 1},
        {"AETitle": "   ", "enabled": 1},
        ["AETitle", "A"],
        "{not json",
    ],
    ids=["missing", "empty", "blank", "not-an-object", "broken"],
)
def test_unusable_info_json_is_ignored(streams: Path, info: object) -> None:
    put_bucket(streams / "bucketA", info)
    put_bucket(streams / "bucketB", {"AETitle": "B", "enabled": 1})
    assert read_bucket(streams / "bucketA") is None
    assert set(all_buckets(streams)) == {"B"}
    assert enabled_bucket(streams, "A") is None


def test_folder_without_info_json_or_bucket_prefix_is_ignored(streams: Path) -> None:
    (streams / "bucketEmpty").mkdir()
    put_bucket(streams / "notabucket", {"AETitle": "N", "enabled": 1})
    (streams / "bucketfile").write_text("{}")
    assert all_buckets(streams) == {}
    assert enabled_bucket(streams, "N") is None


def test_a_bucket_added_later_is_seen_without_restart(streams: Path) -> None:
    assert enabled_bucket(streams, "Late") is None
    assert all_buckets(streams) == {}
    folder = put_bucket(streams / "bucketLate", {"AETitle": "Late", "enabled": 0})
    assert enabled_bucket(streams, "Late") is None
    (folder / "info.json").write_text(json.dumps({"AETitle": "Late", "enabled": 1}))
    assert enabled_bucket(streams, "Late") is not None  # edits are live too
    assert set(all_buckets(streams)) == {"Late"}


def test_lookup_by_title_when_the_folder_has_another_name(streams: Path) -> None:
    put_bucket(streams / "bucketOldName", {"AETitle": "NewTitle", "enabled": 1})
    bucket = enabled_bucket(streams, "NewTitle")
    assert bucket is not None and bucket.path == streams / "bucketOldName"
    # The folder's name is not a title of its own.
    assert enabled_bucket(streams, "OldName") is None


def test_titles_are_matched_exactly(streams: Path) -> None:
    put_bucket(streams / "bucketProc", {"AETitle": "Proc", "enabled": 1})
    assert enabled_bucket(streams, "proc") is None
    assert enabled_bucket(streams, "Pro") is None
    assert enabled_bucket(streams, " Proc ") is not None  # DICOM pads AE titles with spaces


def test_missing_streams_folder(tmp_path: Path) -> None:
    assert all_buckets(tmp_path / "nowhere") == {}
    assert enabled_bucket(tmp_path / "nowhere", "A") is None


HOSTILE = [
    "x/../../evil",
    "/../evil",
    "../evil",
    "..",
    ".",
    "x/../../../outside/evil",
    "x/..",
    "a\0b",
]


@pytest.mark.parametrize("title", HOSTILE)
def test_hostile_titles_never_leave_streams(tmp_path: Path, streams: Path, title: str) -> None:
    """A bucket outside streams whose info.json claims the title must never be found."""
    (streams / "bucketx").mkdir()  # so that "bucketx/../.." resolves on disk
    (streams / "bucket").mkdir()
    for outside in (
        streams.parent / "evil",
        tmp_path / "outside" / "evil",
        streams.parent,
        streams,
        tmp_path,
    ):
        put_bucket(outside, {"AETitle": title.replace("\0", ""), "enabled": 1})
        if "\0" not in title:
            (outside / "info.json").write_text(json.dumps({"AETitle": title, "enabled": 1}))
    bucket = enabled_bucket(streams, title)
    assert bucket is None


def test_a_title_with_a_slash_inside_streams_is_found_safely(streams: Path) -> None:
    """'/' is a legal AE title character: found by scanning, never by building a path."""
    put_bucket(streams / "bucketSlash", {"AETitle": "a/b", "enabled": 1})
    bucket = enabled_bucket(streams, "a/b")
    assert bucket is not None
    assert bucket.path == streams / "bucketSlash"
    assert bucket.path.resolve().is_relative_to(streams.resolve())


def test_concurrency_and_timeout_from_info(streams: Path) -> None:
    put_bucket(
        streams / "bucketA", {"AETitle": "A", "enabled": 1, "concurrency": "3", "timeout": 60}
    )
    put_bucket(
        streams / "bucketB", {"AETitle": "B", "enabled": 1, "concurrency": 0, "timeout": "x"}
    )
    a, b = enabled_bucket(streams, "A"), enabled_bucket(streams, "B")
    assert a is not None and b is not None
    assert (a.concurrency(1), a.timeout(9.0)) == (3, 60.0)
    assert (b.concurrency(1), b.timeout(9.0)) == (1, 9.0)  # nonsense falls back
    assert registry.Bucket("C", streams).concurrency(4) == 4
