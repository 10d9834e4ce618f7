"""Safe extraction of an uploaded ZIP archive into a job folder.

Uploaded archives come from the network and must be treated as hostile.
:func:`safe_extract` works in two phases:

1. **Check every entry before writing anything.**  Names that could escape
   ``dest`` (absolute paths, drive letters, backslashes, ``..``), symlinks and
   other special files, duplicates, encrypted members, compression methods we
   do not allow, and archives that are too big (entry count, total declared
   size, per-entry compression ratio) are rejected with :class:`UnsafeZip`.
2. **Extract regular files**, streaming each member in chunks.  Files and
   directories are created relative to directory file descriptors with
   ``O_NOFOLLOW``, so a symlink already inside ``dest`` is never followed, and
   ``O_EXCL``, so nothing that was there before is overwritten.  The bytes that
   are really written are counted, and a member that produces more (or fewer)
   bytes than its header declared aborts the extraction.

On any error, whatever this call created inside ``dest`` is removed again and
the exception propagates; ``dest`` itself (created by the caller) is left,
empty if it was empty before.

This module is Linux only (it relies on ``O_NOFOLLOW`` and ``dir_fd``).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

from magickbox.errors import Invalid

__all__ = ["UnsafeZip", "ZipLimits", "safe_extract"]

_A = TypeVar("_A")
_R = TypeVar("_R")

# Ratio limits only apply to members larger than this; small files that
# compress very well (a header of zeros, say) are harmless.
_RATIO_MIN_SIZE = 1 << 20

# Size of the reads/writes while extracting one member.
_CHUNK_SIZE = 1 << 20

# Only these methods are accepted.  zipfile's bzip2 and LZMA readers call the
# decompressor without an output limit, so a few KiB of hostile compressed data
# can expand to gigabytes in memory within a single read() even when the member
# claims to be small.  The DEFLATE reader bounds its output per read, and STORED
# needs no decompression.  Common zip tools only write these two.
_ALLOWED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}

# General purpose flag bit 0: the member is encrypted.
_FLAG_ENCRYPTED = 0x1

# "C:" at the start of a name: a Windows drive letter.
_DRIVE_RE = re.compile(r"^[A-Za-z]:")

# What zipfile raises when parsing or reading a corrupt archive.  OSError is in
# the list because garbage offsets make zipfile seek before the start of the
# file (EINVAL); NotImplementedError for a garbage "version needed" field.
_ARCHIVE_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
)

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
_FILE_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC


class UnsafeZip(Invalid):
    """The uploaded archive is invalid, or unsafe to extract; nothing of it was kept."""

    def __init__(self, message: str) -> None:
        super().__init__(f"unsafe or invalid zip upload: {message}")
        self.reason = message


@dataclass(frozen=True)
class ZipLimits:
    """Upper bounds for an archive to be extracted.

    ``max_ratio`` is uncompressed size / compressed size, and applies to
    members whose declared uncompressed size is over 1 MiB.
    """

    max_files: int = 100_000
    max_total_bytes: int = 64 << 30
    max_ratio: float = 200.0


@dataclass(frozen=True)
class _Planned:
    """A member that passed the checks: where it goes and what it declared."""

    info: zipfile.ZipInfo
    parts: tuple[str, ...]  # relative path inside dest, split into components
    is_dir: bool
    declared_size: int  # uncompressed size from the central directory, captured at check time


# ZipLimits is frozen, so sharing one default instance between calls is safe.
def safe_extract(zip_path: Path, dest: Path, limits: ZipLimits = ZipLimits()) -> list[Path]:
    """Extract the regular files of ``zip_path`` into the existing directory ``dest``.

    Returns the paths of the extracted files (not directories), in archive
    order.  macOS junk (``__MACOSX/`` and ``.DS_Store``) is checked like
    everything else but not extracted.

    Raises :class:`UnsafeZip` if the file is not a valid ZIP or any entry
    breaks a rule (see the module docstring).  Operating system errors while
    writing (disk full, ``dest`` missing) propagate unchanged.  In both cases
    nothing this call created is left in ``dest``.
    """
    # Open the file ourselves so that a missing upload is a plain OSError, and
    # only errors from parsing its contents become UnsafeZip.
    with open(zip_path, "rb") as fp:
        try:
            zf = zipfile.ZipFile(fp)
        except _ARCHIVE_READ_ERRORS as exc:
            raise UnsafeZip(f"not a valid zip file: {exc}") from exc
        with zf:
            plan = _check_entries(zf, limits)
            return _extract(zf, plan, dest)


# --------------------------------------------------------------------------- checks


def _check_entries(zf: zipfile.ZipFile, limits: ZipLimits) -> list[_Planned]:
    """Validate every entry of ``zf``; return what to extract, or raise UnsafeZip."""
    infos = zf.infolist()
    if len(infos) > limits.max_files:
        raise UnsafeZip(f"too many entries: {len(infos)} (limit {limits.max_files})")

    plan: list[_Planned] = []
    seen_names: set[tuple[str, ...]] = set()
    file_paths: set[tuple[str, ...]] = set()
    dir_paths: set[tuple[str, ...]] = set()
    total = 0

    for info in infos:
        name = info.filename
        if info.flag_bits & _FLAG_ENCRYPTED:
            raise UnsafeZip(f"encrypted entry: {name!r}")

        parts = _safe_parts(name)
        is_dir = _entry_kind_is_dir(info)

        if parts in seen_names:
            raise UnsafeZip(f"duplicate entry name: {name!r}")
        seen_names.add(parts)

        if is_dir:
            if info.file_size:
                raise UnsafeZip(f"directory entry with data: {name!r}")
        else:
            if not parts:  # e.g. "./" marked as a regular file
                raise UnsafeZip(f"file entry without a name: {name!r}")
            if info.compress_type not in _ALLOWED_METHODS:
                raise UnsafeZip(
                    f"unsupported compression method {info.compress_type} in {name!r} "
                    f"(allowed: {', '.join(_ALLOWED_METHODS.values())})"
                )
            if info.file_size > _RATIO_MIN_SIZE:
                ratio = info.file_size / max(info.compress_size, 1)
                if ratio > limits.max_ratio:
                    raise UnsafeZip(
                        f"suspicious compression ratio {ratio:.0f}:1 in {name!r} "
                        f"(limit {limits.max_ratio:g}:1)"
                    )
            total += info.file_size
            if total > limits.max_total_bytes:
                raise UnsafeZip(f"total uncompressed size exceeds {limits.max_total_bytes} bytes")

        if _is_macos_junk(parts):
            continue

        # Record the tree so a name can't be both a file and a directory
        # ("a" as a file plus "a/b"); extracting that would fail half-way.
        for i in range(1, len(parts)):
            dir_paths.add(parts[:i])
        (dir_paths if is_dir else file_paths).add(parts)
        if parts:  # the "./" directory entry is dest itself: nothing to do
            plan.append(_Planned(info, parts, is_dir, info.file_size))

    clash = file_paths & dir_paths
    if clash:
        example = "/".join(min(clash))
        raise UnsafeZip(f"entry is both a file and a directory: {example!r}")
    return plan


def _safe_parts(name: str) -> tuple[str, ...]:
    """Split an entry name into path components, rejecting anything that could escape.

    Empty and ``.`` components (``a//b``, ``./a``) are harmless and dropped.
    """
    if not name:
        raise UnsafeZip("entry with an empty name")
    if "\x00" in name:
        raise UnsafeZip(f"NUL byte in entry name: {name!r}")
    if "\\" in name:
        # On Windows "\\" is a separator, and some tools would turn "..\\x" into "../x".
        raise UnsafeZip(f"backslash in entry name: {name!r}")
    if name.startswith("/"):
        raise UnsafeZip(f"absolute path in entry name: {name!r}")
    if _DRIVE_RE.match(name):
        raise UnsafeZip(f"drive letter in entry name: {name!r}")
    parts = tuple(p for p in PurePosixPath(name).parts if p != ".")
    if ".." in parts:
        raise UnsafeZip(f"'..' in entry name: {name!r}")
    # PurePosixPath already dropped empty components; "." was dropped above.
    return parts


def _entry_kind_is_dir(info: zipfile.ZipInfo) -> bool:
    """Return True for a directory entry, False for a regular file; reject anything else.

    The Unix mode is in the high 16 bits of ``external_attr``.  Archives made
    on other systems leave it 0, which means "use the name": a trailing slash
    is a directory, anything else a regular file.
    """
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise UnsafeZip(f"symbolic link entry: {info.filename!r}")
    if kind == stat.S_IFDIR:
        return True
    if kind == stat.S_IFREG:
        if info.filename.endswith("/"):
            raise UnsafeZip(f"regular file entry named like a directory: {info.filename!r}")
        return False
    if kind == 0:
        return info.filename.endswith("/")
    raise UnsafeZip(f"special file entry (mode {oct(mode)}): {info.filename!r}")


def _is_macos_junk(parts: tuple[str, ...]) -> bool:
    """Finder's resource-fork folder and folder-settings files."""
    return "__MACOSX" in parts or (bool(parts) and parts[-1] == ".DS_Store")


# ----------------------------------------------------------------------- extraction


def _extract(zf: zipfile.ZipFile, plan: list[_Planned], dest: Path) -> list[Path]:
    """Write the planned entries below ``dest``; undo everything on error."""
    created_files: list[tuple[str, ...]] = []
    created_dirs: list[tuple[str, ...]] = []
    extracted: list[Path] = []
    # dest itself may be reached through a symlink the caller chose; only what
    # is *inside* it is opened with O_NOFOLLOW.
    dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    try:
        for item in plan:
            if item.is_dir:
                dir_fd = _open_dirs(dest_fd, item.parts, created_dirs)
                os.close(dir_fd)
                continue
            dir_fd = _open_dirs(dest_fd, item.parts[:-1], created_dirs)
            try:
                _write_member(zf, item, dir_fd, created_files)
            finally:
                os.close(dir_fd)
            extracted.append(dest.joinpath(*item.parts))
    except BaseException:
        _cleanup(dest_fd, created_files, created_dirs)
        raise
    finally:
        os.close(dest_fd)
    return extracted


def _open_dirs(dest_fd: int, parts: tuple[str, ...], created: list[tuple[str, ...]]) -> int:
    """Open (creating as needed) the directory ``dest/parts``; return its descriptor.

    Each component is opened relative to its parent's descriptor with
    ``O_NOFOLLOW | O_DIRECTORY``, so a symlink (or file) in the way fails
    instead of being followed, and no one can swap a component for a link
    between our check and our use of it.
    """
    fd = os.dup(dest_fd)
    try:
        for i, part in enumerate(parts):
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                created.append(parts[: i + 1])
            except FileExistsError:
                pass  # an earlier entry (or the caller) made it; checked by the open below
            try:
                child = os.open(part, _DIR_OPEN_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = "/".join(parts[: i + 1])
                    raise UnsafeZip(f"{where!r} in dest is not a real directory") from exc
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_member(
    zf: zipfile.ZipFile, item: _Planned, dir_fd: int, created: list[tuple[str, ...]]
) -> None:
    """Stream one member into a new file ``item.parts[-1]`` inside ``dir_fd``.

    Counts the bytes actually written and refuses to write beyond what the
    member declared, whatever the decompressor hands us.
    """
    name = item.parts[-1]
    try:
        out_fd = os.open(name, _FILE_OPEN_FLAGS, 0o644, dir_fd=dir_fd)
    except FileExistsError as exc:  # also a symlink, dangling or not, thanks to O_EXCL
        raise UnsafeZip(f"{item.info.filename!r} already exists in dest") from exc
    created.append(item.parts)
    with open(out_fd, "wb", buffering=0) as out:
        os.fchmod(out.fileno(), 0o644)  # exactly 0o644, whatever the umask
        src = _read_guard(item, zf.open, item.info)
        with src:
            written = 0
            while chunk := _read_guard(item, src.read, _CHUNK_SIZE):
                if written + len(chunk) > item.declared_size:
                    raise UnsafeZip(
                        f"entry {item.info.filename!r} produced more bytes than declared "
                        f"({item.declared_size})"
                    )
                out.write(chunk)  # errors writing (disk full...) propagate as OSError
                written += len(chunk)
        if written != item.declared_size:
            raise UnsafeZip(
                f"entry {item.info.filename!r} produced {written} bytes, "
                f"declared {item.declared_size}"
            )


def _read_guard(item: _Planned, func: Callable[[_A], _R], arg: _A) -> _R:
    """Call ``func(arg)`` on the archive side and turn its failures into UnsafeZip.

    Reading a corrupt member fails in many ways: bad CRC or local header
    (BadZipFile), broken deflate stream (zlib.error), truncation (EOFError),
    a header offset that points before the file start (OSError EINVAL)...
    """
    try:
        return func(arg)
    except _ARCHIVE_READ_ERRORS as exc:
        raise UnsafeZip(f"not a valid zip file: {item.info.filename!r}: {exc}") from exc


def _cleanup(dest_fd: int, files: list[tuple[str, ...]], dirs: list[tuple[str, ...]]) -> None:
    """Best effort: remove the files and directories this call created, deepest first."""
    for parts in files:
        _remove_at(dest_fd, parts, is_dir=False)
    for parts in sorted(dirs, key=len, reverse=True):
        _remove_at(dest_fd, parts, is_dir=True)


def _remove_at(dest_fd: int, parts: tuple[str, ...], *, is_dir: bool) -> None:
    """Remove ``dest/parts`` without following symlinks in its parents; ignore errors."""
    fd = os.dup(dest_fd)
    try:
        for part in parts[:-1]:
            child = os.open(part, _DIR_OPEN_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        if is_dir:
            os.rmdir(parts[-1], dir_fd=fd)
        else:
            os.unlink(parts[-1], dir_fd=fd)
    except OSError:
        pass  # already gone, or not ours to remove (e.g. a dir someone else filled)
    finally:
        os.close(fd)
