"""Tests for magickbox.jobs.unzip: extracting hostile uploads safely.

Every hostile archive is built here with zipfile (patching raw header bytes
where zipfile refuses to write the bad thing).  Rejection tests also check
that nothing was written: extraction must not even start before all entries
have been checked.
"""

from __future__ import annotations

import copy
import os
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import pytest

from magickbox.jobs import unzip
from magickbox.jobs.unzip import UnsafeZip, ZipLimits, safe_extract

CENTRAL_SIG = b"PK\x01\x02"
LOCAL_SIG = b"PK\x03\x04"
# Offsets of fields inside a central directory header.
CD_FLAGS, CD_FILE_SIZE = 8, 24


# ---------------------------------------------------------------- helpers


Entry = tuple[str | zipfile.ZipInfo, bytes]


def build_zip(path: Path, entries: list[Entry], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name"
        for name, data in entries:
            zf.writestr(name, data)
    return path


def info_with_mode(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix
    info.external_attr = mode << 16
    return info


def patch_central(data: bytes, name: str, offset: int, fmt: str, value: int) -> bytes:
    """Overwrite one field of ``name``'s central directory header."""
    buf = bytearray(data)
    pos = buf.find(CENTRAL_SIG)
    while pos != -1:
        name_len = struct.unpack_from("<H", buf, pos + 28)[0]
        if buf[pos + 46 : pos + 46 + name_len] == name.encode():
            struct.pack_into(fmt, buf, pos + offset, value)
            return bytes(buf)
        pos = buf.find(CENTRAL_SIG, pos + 4)
    raise AssertionError(f"{name} not in central directory")


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "job" / "INPUT"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def no_extraction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if safe_extract starts writing before rejecting the archive."""

    def extraction_started(*args: object) -> list[Path]:
        raise AssertionError("extraction started before every entry was checked")

    monkeypatch.setattr(unzip, "_extract", extraction_started)


def assert_rejected(
    zip_path: Path, dest: Path, match: str, limits: ZipLimits | None = None
) -> None:
    with pytest.raises(UnsafeZip, match=match):
        if limits is None:
            safe_extract(zip_path, dest)
        else:
            safe_extract(zip_path, dest, limits)
    assert tree(dest) == []


GOOD = ("good/first.dcm", b"DICM" * 10)


# ---------------------------------------------------------------- happy path


def test_extracts_nested_files_empty_file_and_dirs(tmp_path: Path, dest: Path) -> None:
    payload = os.urandom(3 << 20)  # several extraction chunks
    z = build_zip(
        tmp_path / "up.zip",
        [
            ("study/", b""),
            ("study/series1/img1.dcm", payload),
            ("study/series1/empty.dcm", b""),
            ("./study/series2//img2.dcm", b"x" * 100),
            ("emptydir/", b""),
            ("top.txt", b"top"),
        ],
        compression=zipfile.ZIP_DEFLATED,
    )
    got = safe_extract(z, dest)

    assert got == [
        dest / "study/series1/img1.dcm",
        dest / "study/series1/empty.dcm",
        dest / "study/series2/img2.dcm",
        dest / "top.txt",
    ]
    assert (dest / "study/series1/img1.dcm").read_bytes() == payload
    assert (dest / "study/series1/empty.dcm").read_bytes() == b""
    assert (dest / "study/series2/img2.dcm").read_bytes() == b"x" * 100
    assert (dest / "emptydir").is_dir()
    for p in got:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_skips_macos_junk(tmp_path: Path, dest: Path) -> None:
    z = build_zip(
        tmp_path / "mac.zip",
        [
            ("study/img.dcm", b"DICM"),
            ("study/.DS_Store", b"junk"),
            ("__MACOSX/", b""),
            ("__MACOSX/study/._img.dcm", b"junk"),
        ],
    )
    assert safe_extract(z, dest) == [dest / "study/img.dcm"]
    assert tree(dest) == ["study", "study/img.dcm"]


def test_allows_a_well_compressed_file_under_the_ratio_limit(tmp_path: Path, dest: Path) -> None:
    # ~2.5 MiB; runs of zeros make it compress about 14:1, well under 200:1.
    data = b"".join(os.urandom(64) + bytes(960) for _ in range(2500))
    z = build_zip(tmp_path / "ok.zip", [("img.dcm", data)], zipfile.ZIP_DEFLATED)
    safe_extract(z, dest)
    assert (dest / "img.dcm").read_bytes() == data


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("/abs.txt", "absolute path"),
        ("C:/windows/evil.txt", "drive letter"),
        ("C:evil.txt", "drive letter"),
        ("..\\..\\evil.txt", "backslash"),
        ("good\\..\\..\\evil.txt", "backslash"),
        ("../../etc/x", r"'\.\.'"),
        ("study/../../x", r"'\.\.'"),
        ("study/..", r"'\.\.'"),
    ],
)
def test_rejects_escaping_names(
    tmp_path: Path, dest: Path, no_extraction: None, name: str, match: str
) -> None:
    z = build_zip(tmp_path / "bad.zip", [GOOD, (name, b"pwned")])
    assert_rejected(z, dest, match)


def test_rejects_duplicate_names(tmp_path: Path, dest: Path, no_extraction: None) -> None:
    z = build_zip(tmp_path / "dup.zip", [GOOD, ("a.dcm", b"one"), ("a.dcm", b"two")])
    assert_rejected(z, dest, "duplicate entry name")


def test_rejects_name_that_is_file_and_directory(
    tmp_path: Path, dest: Path, no_extraction: None
) -> None:
    z = build_zip(tmp_path / "clash.zip", [("a", b"file"), ("a/b.dcm", b"child")])
    assert_rejected(z, dest, "both a file and a directory")


# ---------------------------------------------------------------- entry types


def test_rejects_symlink_entry(tmp_path: Path, dest: Path, no_extraction: None) -> None:
    link = info_with_mode("passwd", stat.S_IFLNK | 0o777)
    z = build_zip(tmp_path / "link.zip", [GOOD, (link, b"/etc/passwd")])
    assert_rejected(z, dest, "symbolic link")


@pytest.mark.parametrize("kind", [stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK])
def test_rejects_special_file_entries(
    tmp_path: Path, dest: Path, no_extraction: None, kind: int
) -> None:
    z = build_zip(tmp_path / "dev.zip", [GOOD, (info_with_mode("dev", kind | 0o644), b"")])
    assert_rejected(z, dest, "special file")


def test_rejects_encrypted_entry(tmp_path: Path, dest: Path, no_extraction: None) -> None:
    # zipfile cannot write encrypted members; set the "encrypted" flag bit by hand.
    raw = build_zip(tmp_path / "plain.zip", [GOOD, ("secret.dcm", b"x" * 64)]).read_bytes()
    z = tmp_path / "enc.zip"
    z.write_bytes(patch_central(raw, "secret.dcm", CD_FLAGS, "<H", 0x1))
    assert_rejected(z, dest, "encrypted")


def test_rejects_unsupported_compression(tmp_path: Path, dest: Path, no_extraction: None) -> None:
    z = build_zip(tmp_path / "bz.zip", [GOOD, ("a.dcm", b"x" * 1000)], zipfile.ZIP_BZIP2)
    assert_rejected(z, dest, "unsupported compression method")


# ---------------------------------------------------------------- size limits


def test_rejects_too_many_files(tmp_path: Path, dest: Path, no_extraction: None) -> None:
    z = build_zip(tmp_path / "many.zip", [(f"f{i}.dcm", b"x") for i in range(4)])
    assert_rejected(z, dest, "too many entries: 4", ZipLimits(max_files=3))


def test_accepts_exactly_max_files(tmp_path: Path, dest: Path) -> None:
    z = build_zip(tmp_path / "many.zip", [(f"f{i}.dcm", b"x") for i in range(3)])
    assert len(safe_extract(z, dest, ZipLimits(max_files=3))) == 3


def test_rejects_total_size_over_limit(tmp_path: Path, dest: Path, no_extraction: None) -> None:
    z = build_zip(tmp_path / "big.zip", [("a.dcm", b"a" * 60), ("b.dcm", b"b" * 60)])
    assert_rejected(z, dest, "total uncompressed size", ZipLimits(max_total_bytes=100))


def _zeros_bomb(path: Path) -> Path:
    """50 MiB of zeros, deflated to about 50 KiB (ratio ~1000:1)."""
    block = bytes(1 << 20)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf,
        zf.open("bomb.dcm", "w") as member,
    ):
        for _ in range(50):
            member.write(block)
    return path


def test_rejects_compression_ratio_bomb(tmp_path: Path, dest: Path, no_extraction: None) -> None:
    z = _zeros_bomb(tmp_path / "bomb.zip")
    assert_rejected(z, dest, "suspicious compression ratio", ZipLimits(max_ratio=200.0))


def test_ratio_bomb_passes_with_a_generous_ratio(tmp_path: Path, dest: Path) -> None:
    # Shows the rejection above is due to the ratio and nothing else.
    z = _zeros_bomb(tmp_path / "bomb.zip")
    safe_extract(z, dest, ZipLimits(max_ratio=100_000.0))
    assert (dest / "bomb.dcm").stat().st_size == 50 << 20


# ---------------------------------------------------------------- lying sizes


def _lying_zip(tmp_path: Path) -> tuple[Path, int]:
    """A good file, then a 1 MiB member whose central directory claims 10 bytes."""
    real_size = 1 << 20
    raw = build_zip(
        tmp_path / "honest.zip",
        [GOOD, ("liar.dcm", b"L" * real_size)],
        compression=zipfile.ZIP_DEFLATED,
    ).read_bytes()
    z = tmp_path / "liar.zip"
    z.write_bytes(patch_central(raw, "liar.dcm", CD_FILE_SIZE, "<I", 10))
    return z, real_size


def test_rejects_entry_that_lies_about_its_size(tmp_path: Path, dest: Path) -> None:
    # zipfile itself stops at the declared size and then fails the CRC check.
    z, _ = _lying_zip(tmp_path)
    assert_rejected(z, dest, "not a valid zip file.*liar.dcm")


def test_byte_count_stops_a_reader_that_trusts_the_stream(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate a zip reader that decompresses until the data ends instead of
    # stopping at the central directory's size (so CRC and stream are valid):
    # only safe_extract's own count of written bytes can stop this entry.
    z, real_size = _lying_zip(tmp_path)
    real_open = zipfile.ZipFile.open

    def trusting_open(self, name, mode="r", pwd=None, **kwargs):  # type: ignore[no-untyped-def]
        info = copy.copy(name if isinstance(name, zipfile.ZipInfo) else self.getinfo(name))
        if info.filename == "liar.dcm":
            info.file_size = real_size
        return real_open(self, info, mode, pwd, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", trusting_open)
    # Also watch every write: none may go past the declared 10 bytes.
    written: dict[str, int] = {}
    real_write_member = unzip._write_member

    def counting_write_member(zf, item, dir_fd, created):  # type: ignore[no-untyped-def]
        try:
            real_write_member(zf, item, dir_fd, created)
        finally:
            fd = os.open(item.parts[-1], os.O_RDONLY, dir_fd=dir_fd)
            written[item.info.filename] = os.fstat(fd).st_size
            os.close(fd)

    monkeypatch.setattr(unzip, "_write_member", counting_write_member)

    assert_rejected(z, dest, "liar.dcm.*produced more bytes than declared")
    assert written == {GOOD[0]: len(GOOD[1]), "liar.dcm": 0}


# ---------------------------------------------------------------- corrupt input


def test_not_a_zip(tmp_path: Path, dest: Path) -> None:
    z = tmp_path / "junk.zip"
    z.write_bytes(b"this is a DICOM file, honest" * 100)
    assert_rejected(z, dest, "not a valid zip file")


def test_truncated_zip(tmp_path: Path, dest: Path) -> None:
    raw = build_zip(tmp_path / "ok.zip", [GOOD, ("b.dcm", b"b" * 5000)]).read_bytes()
    z = tmp_path / "short.zip"
    z.write_bytes(raw[: len(raw) // 2])
    assert_rejected(z, dest, "not a valid zip file")


def test_corrupt_member_removes_partial_extraction(tmp_path: Path, dest: Path) -> None:
    # The first member extracts fine; the second has a flipped data byte, so
    # the CRC check fails after some files and dirs were already created.
    raw = build_zip(tmp_path / "ok.zip", [GOOD, ("second/dir/b.dcm", b"B" * 5000)]).read_bytes()
    data_at = raw.rfind(b"B" * 100)
    z = tmp_path / "corrupt.zip"
    z.write_bytes(raw[:data_at] + b"C" + raw[data_at + 1 :])
    assert_rejected(z, dest, "not a valid zip file.*second/dir/b.dcm")


def test_missing_upload_is_an_os_error_not_unsafe(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(FileNotFoundError):
        safe_extract(tmp_path / "nope.zip", dest)


# ---------------------------------------------------------------- symlinks in dest


def test_does_not_follow_directory_symlink_already_in_dest(tmp_path: Path, dest: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "study").symlink_to(outside, target_is_directory=True)
    z = build_zip(tmp_path / "up.zip", [GOOD, ("study/img.dcm", b"DICM")])

    with pytest.raises(UnsafeZip, match="not a real directory"):
        safe_extract(z, dest)
    assert list(outside.iterdir()) == []
    # Our partial output is gone; the pre-existing link is not ours to remove.
    assert tree(dest) == ["study"]
    assert (dest / "study").is_symlink()


def test_does_not_follow_file_symlink_already_in_dest(tmp_path: Path, dest: Path) -> None:
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    (dest / "img.dcm").symlink_to(target)
    z = build_zip(tmp_path / "up.zip", [GOOD, ("img.dcm", b"overwritten!")])

    with pytest.raises(UnsafeZip, match="already exists"):
        safe_extract(z, dest)
    assert target.read_text() == "root:x:0:0\n"
    assert tree(dest) == ["img.dcm"]


def test_unsafe_zip_is_a_value_error_with_reason() -> None:
    err = UnsafeZip("symbolic link entry: 'x'")
    assert isinstance(err, ValueError)
    assert err.reason == "symbolic link entry: 'x'"
    assert "symbolic link" in str(err)


def test_build_zip_helper_really_writes_hostile_names(tmp_path: Path) -> None:
    # Guard against zipfile ever sanitising names on write, which would make
    # the name tests above pass vacuously.
    z = build_zip(tmp_path / "n.zip", [("/abs.txt", b""), ("../x", b""), ("a\\b", b"")])
    assert zipfile.ZipFile(z).namelist() == ["/abs.txt", "../x", "a\\b"]
