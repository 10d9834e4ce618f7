"""disk.py: the reserve's syntax, when the box is low and when it takes data again,
and the data set file that survives a full disk (on a real 1 MB tmpfs)."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from magickbox import disk
from magickbox.buckets.registry import Bucket
from magickbox.config import Settings, parse_size
from magickbox.errors import StorageFull
from magickbox.jobs import scratch
from tests.conftest import tmpfs

SIZES = [("5%", (0, 5.0)), ("0", (0, 0.0)), ("1000", (1000, 0.0)), ("500M", (500 << 20, 0.0)),
         ("2G", (2 << 30, 0.0)), ("1.5k", (1536, 0.0)), ("2GiB", (2 << 30, 0.0)),
         (" 10 % ", (0, 10.0))]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), SIZES)
def test_sizes(text: str, expected: tuple[int, float]) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "x", "-1", "100%", "5%%", "1Q", "%"])
def test_bad_sizes_are_refused_with_the_value_named(bad: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(bad)
    with pytest.raises(ValueError, match="not a size"):
        Settings(disk_reserve=bad)


def test_a_number_in_the_file_is_bytes() -> None:
    assert Settings(disk_reserve=2048).reserve == (2048, 0.0)  # type: ignore[arg-type]
    assert Settings().reserve == (0, 5.0)


def test_watermarks_must_be_ordered() -> None:
    assert Settings(scrub_high=90, scrub_low=80).scrub_low == 80
    for high, low in ((90, 0), (80, 90), (101, 50)):
        with pytest.raises(ValueError, match="scrub_low"):
            Settings(scrub_high=high, scrub_low=low)


class Usage(NamedTuple):
    total: int
    used: int
    free: int


@pytest.fixture
def free(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The free bytes the fake filesystem (1000 bytes) reports: set ``free[0]``."""
    now = [1000]
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda _p: Usage(1000, 1000 - now[0], now[0]))
    return now


def test_low_below_the_reserve_and_back_only_a_tenth_above_it(free: list[int]) -> None:
    guard = disk.DiskGuard(Path("/x"), (0, 20.0))  # 200 bytes
    assert not guard.status().low and guard.status().reserve == 200
    free[0] = 199
    assert guard.status().low
    free[0] = 210  # a refused data set's file went: just above the reserve is not enough
    assert guard.status().low
    free[0] = 220
    assert not guard.status().low
    free[0] = 210  # and from above, the reserve itself is the mark
    assert not guard.status().low


def test_an_upload_must_leave_the_reserve(free: list[int]) -> None:
    guard = disk.DiskGuard(Path("/x"), (100, 0.0))
    guard.check_upload(None)
    guard.check_upload(900)
    with pytest.raises(StorageFull, match="upload of 901 bytes"):
        guard.check_upload(901)
    free[0] = 50
    with pytest.raises(StorageFull, match="below the box's reserve"):
        guard.check_upload(0)


def test_one_guard_per_scratch_and_reserve(tmp_path: Path) -> None:
    a = Settings(home=tmp_path, disk_reserve="1M")
    assert disk.guard_for(a) is disk.guard_for(Settings(home=tmp_path, disk_reserve="1M"))
    assert disk.guard_for(a) is not disk.guard_for(Settings(home=tmp_path, disk_reserve="2M"))


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", size="1m") as mount:
        (mount / "scratch").mkdir()  # the home's, whose disk the guard asks about
        old = tempfile.tempdir
        tempfile.tempdir = str(mount)
        try:
            yield mount
        finally:
            tempfile.tempdir = old


def test_a_full_disk_while_writing_is_kept_quiet_and_refused_with_a700(small: Path) -> None:
    f = disk.GuardedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    path = Path(f.name)
    assert path.parent == small
    for _ in range(40):  # 2 MB into 1 MB, as pynetdicom writes: PDV by PDV
        assert f.write(b"x" * 50_000) == 50_000
        f.file.flush()
    assert f.error is not None and f.error.errno == errno.ENOSPC
    assert path.stat().st_size == 0  # the space went back at once
    assert disk.refused_store(path, Settings(home=small, disk_reserve="0"))
    assert not path.exists()
    f.close()


def test_a_data_set_that_fits_is_kept_whole(small: Path) -> None:
    f = disk.GuardedTemporaryFile(suffix=".dcm")
    f.write(b"DICM" * 1000)
    f.close()
    path = Path(f.name)
    assert f.error is None and path.read_bytes() == b"DICM" * 1000
    assert not disk.refused_store(path, Settings(home=small, disk_reserve="0"))
    assert path.exists()


def test_a_full_write_nobody_asked_about_leaves_nothing(small: Path) -> None:
    """An association cut off after the disk filled: close() alone removes the file."""
    f = disk.GuardedTemporaryFile(suffix=".dcm")
    f.write(os.urandom(2 << 20))
    f.close()
    assert not Path(f.name).exists()


def test_freed_by_counts_only_files_whose_every_link_goes(tmp_path: Path) -> None:
    job, archive = tmp_path / "job", tmp_path / "archive"
    job.mkdir()
    archive.mkdir()
    (job / "own").write_bytes(b"x" * 100)
    (job / "shared").write_bytes(b"y" * 1000)
    os.link(job / "shared", archive / "shared")
    os.link(job / "own", job / "own-again")  # both links inside: freed, counted once
    (job / "link").symlink_to(archive / "shared")
    assert scratch.freed_by(job) == 100
    assert scratch.freed_by(tmp_path) == 1100


def test_bucket_keep_days() -> None:
    bucket = Bucket("A", Path("/x"), {"keep_days": 10, "keep_failed_days": "30"})
    assert (bucket.keep_days(False, 1), bucket.keep_days(True, 1)) == (10, 30)
    assert Bucket("B", Path("/x"), {}).keep_days(False, 7) == 7
    assert Bucket("C", Path("/x"), {"keep_days": "soon"}).keep_days(False, 7) == 7
    assert Bucket("D", Path("/x"), {"keep_days": -1}).keep_days(False, 7) == 7


def test_the_receivers_check_reuses_a_recent_look_only_far_above_the_reserve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = {"now": 10 * disk.FAR_ABOVE}
    looks: list[int] = []

    def usage(_path: object) -> Usage:
        looks.append(1)
        return Usage(100 * disk.FAR_ABOVE, 0, free["now"])

    monkeypatch.setattr(disk.shutil, "disk_usage", usage)
    guard = disk.DiskGuard(tmp_path, (disk.FAR_ABOVE, 0.0))  # reserve: FAR_ABOVE bytes
    assert not guard.still_free(1)  # no look yet
    guard.status()
    assert guard.still_free(disk.FAR_ABOVE)  # 9 x FAR_ABOVE above the reserve: no new look
    assert guard.still_free(7 * disk.FAR_ABOVE - 1)
    assert not guard.still_free(1)  # what was written since used the margin up: look again
    guard.status()
    assert guard.still_free(1)
    monkeypatch.setattr(disk.time, "monotonic", lambda: 1e12)  # the look is too old
    assert not guard.still_free(1)
    free["now"] = disk.FAR_ABOVE // 2  # below the reserve: never answered from a look
    assert guard.status().low and not guard.still_free(0)
    assert len(looks) == 3

