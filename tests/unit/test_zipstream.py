"""Tests for magickbox.zipstream: streamed ZIP downloads of result folders."""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from magickbox.zipstream import stream_zip, zip_dir_entries

ZIP64_EXTRA_ID = 0x0001
FLAG_DATA_DESCRIPTOR = 0x08


def _archive(chunks: Iterator[bytes]) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(b"".join(chunks)))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A job folder: OUTPUT with nested dirs, an empty file, and planted symlinks."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")

    out = tmp_path / "tmp.abc12345" / "OUTPUT"
    (out / "series1" / "deep").mkdir(parents=True)
    (out / "a.txt").write_text("hello\n")
    (out / "empty.dcm").write_bytes(b"")
    (out / "series1" / "img0001.dcm").write_bytes(os.urandom(50_000))
    (out / "series1" / "deep" / "img0002.dcm").write_bytes(b"\x00\x01" * 3000)
    # Things a hostile bucket could leave behind; none may end up in the archive.
    (out / "passwd-link").symlink_to(outside / "passwd")
    (out / "dir-link").symlink_to(outside, target_is_directory=True)
    os.mkfifo(out / "fifo")
    return out


EXPECTED_NAMES = [
    "tmp.abc12345/OUTPUT/a.txt",
    "tmp.abc12345/OUTPUT/empty.dcm",
    "tmp.abc12345/OUTPUT/series1/deep/img0002.dcm",
    "tmp.abc12345/OUTPUT/series1/img0001.dcm",
]


def test_round_trip_nested_empty_and_symlinks_skipped(tree: Path) -> None:
    entries = zip_dir_entries(tree, "tmp.abc12345/OUTPUT")
    # A small chunk size so the larger files span many chunks.
    zf = _archive(stream_zip(entries, chunk_size=4096))

    assert zf.namelist() == EXPECTED_NAMES
    assert zf.testzip() is None  # every CRC checks out
    for name in EXPECTED_NAMES:
        rel = name.removeprefix("tmp.abc12345/OUTPUT/")
        assert zf.read(name) == (tree / rel).read_bytes(), name
    assert zf.getinfo("tmp.abc12345/OUTPUT/empty.dcm").file_size == 0
    assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
    # Nothing from outside the tree leaked in.
    assert not any(b"root:x:0:0" in zf.read(n) for n in zf.namelist())


def test_zip_dir_entries_sorted_prefixed_regular_files_only(tree: Path) -> None:
    got = list(zip_dir_entries(tree, "tmp.abc12345/OUTPUT"))
    assert [name for name, _ in got] == EXPECTED_NAMES
    assert got[2][1] == tree / "series1" / "deep" / "img0002.dcm"


def test_zip_dir_entries_prefix_slashes_and_empty_prefix(tree: Path) -> None:
    assert next(n for n, _ in zip_dir_entries(tree, "/job/")) == "job/a.txt"
    assert [n for n, _ in zip_dir_entries(tree, "")][:2] == ["a.txt", "empty.dcm"]


def test_zip_dir_entries_root_symlink_or_missing_yields_nothing(tree: Path, tmp_path: Path) -> None:
    link = tmp_path / "OUTPUT-link"
    link.symlink_to(tree, target_is_directory=True)
    assert list(zip_dir_entries(link, "x")) == []
    assert list(zip_dir_entries(tmp_path / "missing", "x")) == []


def test_zip_dir_entries_skips_names_that_are_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("ok")
    bad = os.path.join(os.fsencode(tmp_path), b"bad-\xff.txt")
    with open(bad, "wb") as f:
        f.write(b"bad")
    entries = list(zip_dir_entries(tmp_path, "p"))
    assert [n for n, _ in entries] == ["p/ok.txt"]
    assert _archive(stream_zip(entries)).namelist() == ["p/ok.txt"]


def test_stream_zip_refuses_a_symlink_path(tree: Path) -> None:
    with pytest.raises(OSError):
        list(stream_zip([("x", tree / "passwd-link")]))


def test_empty_archive_is_valid() -> None:
    zf = _archive(stream_zip([]))
    assert zf.namelist() == []


def test_members_use_zip64_and_data_descriptors(tree: Path) -> None:
    data = b"".join(stream_zip(zip_dir_entries(tree, "j")))
    zf = zipfile.ZipFile(io.BytesIO(data))
    for info in zf.infolist():
        # Local file header: signature, version, flags, ..., name/extra lengths at 26.
        sig, _version, flags = struct.unpack_from("<IHH", data, info.header_offset)
        assert sig == 0x04034B50
        assert flags & FLAG_DATA_DESCRIPTOR, info.filename
        name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
        extra_at = info.header_offset + 30 + name_len
        extra = data[extra_at : extra_at + extra_len]
        header_ids = []
        while len(extra) >= 4:
            header_id, size = struct.unpack_from("<HH", extra)
            header_ids.append(header_id)
            extra = extra[4 + size :]
        assert ZIP64_EXTRA_ID in header_ids, info.filename


def test_output_is_streamed_lazily_in_bounded_chunks(tmp_path: Path) -> None:
    files = []
    for i in range(3):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(40_000))
        files.append(p)
    consumed: list[str] = []

    def entries() -> Iterator[tuple[str, Path]]:
        for p in files:
            consumed.append(p.name)
            yield p.name, p

    chunk_size = 8192
    gen = stream_zip(entries(), chunk_size=chunk_size)
    first = next(gen)
    # The first chunk comes out while the first file is still being read.
    assert consumed == ["f0"]
    chunks = [first, *gen]
    assert all(0 < len(c) <= 2 * chunk_size for c in chunks)
    assert _archive(iter(chunks)).read("f2") == files[2].read_bytes()


def test_memory_stays_constant_for_a_large_file(tmp_path: Path) -> None:
    big = tmp_path / "big.dcm"
    size = 64 << 20
    with open(big, "wb") as f:
        f.truncate(size)  # sparse: cheap to create, still 64 MiB to read

    total = 0
    tracemalloc.start()
    try:
        for chunk in stream_zip([("big.dcm", big)], chunk_size=1 << 20):
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > size
    # A few chunk-sized buffers at most, never the whole file or archive.
    assert peak < 8 << 20, f"peak traced memory {peak} bytes"


@pytest.mark.skipif(
    not os.environ.get("MAGICKBOX_SLOW_TESTS"),
    reason="streams 4 GiB (~30 s); set MAGICKBOX_SLOW_TESTS=1 to run",
)
def test_file_larger_than_4_gib(tmp_path: Path) -> None:
    src = tmp_path / "huge.dcm"
    size = (4 << 30) + 12_345
    with open(src, "wb") as f:
        f.truncate(size)
        f.seek(-5, os.SEEK_END)
        f.write(b"tail!")

    # Write the stream to disk, keeping runs of zeros as holes so the test
    # does not need 4 GiB of real disk space.
    out = tmp_path / "out.zip"
    with open(out, "wb") as f:
        for chunk in stream_zip([("huge.dcm", src)]):
            if chunk.count(0) == len(chunk):
                f.seek(len(chunk), os.SEEK_CUR)
            else:
                f.write(chunk)
        f.truncate()

    with zipfile.ZipFile(out) as zf:
        info = zf.getinfo("huge.dcm")
        assert info.file_size == size
        with zf.open(info) as member:
            member.seek(size - 5)
            assert member.read() == b"tail!"
