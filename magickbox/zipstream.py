"""Stream a ZIP archive of files on disk, chunk by chunk, in constant memory.

Results are served to clients on the LAN as ZIP downloads.  A study can be
several gigabytes, so the archive is never built in memory or in a temp file:
:func:`stream_zip` is a generator that yields the archive's bytes as they are
produced, suitable for a ``StreamingResponse``.

How it works: the stdlib :class:`zipfile.ZipFile` writes into :class:`_Sink`,
an in-memory buffer that cannot seek.  On an unseekable output zipfile cannot go
back to patch each local header with the CRC and sizes, so it sets general
purpose flag bit 3 and writes them in a *data descriptor* after the member's
data instead.  After every write we take whatever zipfile has put in the sink
and hand it to the caller, so the sink never holds much more than one chunk.

Members are STORED (not compressed): DICOM pixel data compresses poorly, the
clients sit on a LAN, and CPU time spent deflating would just slow the download.
Every member is written with ZIP64 extra fields (``force_zip64=True``) because
the size of a member is not known to zipfile up front in a streaming write, and
files over 4 GiB must work.

Memory use is constant in the *size* of the files; zipfile still keeps one
small :class:`zipfile.ZipInfo` per member to write the central directory at the
end, which is linear in the *number* of members (a few hundred bytes each).
"""

from __future__ import annotations

import logging
import os
import stat
import time
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["stream_zip", "zip_dir_entries"]

log = logging.getLogger(__name__)

# The DOS timestamp stored in a ZIP header covers 1980-01-01 .. 2107-12-31.
_ZIP_MIN_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_ZIP_MAX_DATE_TIME = (2107, 12, 31, 23, 59, 58)


class _Sink:
    """Write-only, unseekable byte buffer that the generator drains.

    It deliberately has no ``seek`` method: zipfile probes for it, and when it
    is missing zipfile switches to streaming mode (data descriptors).  ``tell``
    reports the total number of bytes written so far, which zipfile uses to
    record each member's offset for the central directory.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._written = 0

    def write(self, data: bytes) -> int:
        self._buf += data
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        """Nothing to flush: the generator drains the buffer with :meth:`take`."""

    def pending(self) -> int:
        """Number of bytes written but not yet taken."""
        return len(self._buf)

    def take(self) -> bytes:
        """Return everything written since the previous call and forget it."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


def _zip_date_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    """Convert a POSIX mtime to a ZIP (local time) timestamp, clamped to the DOS range."""
    lt = time.localtime(mtime)
    date_time = (lt.tm_year, lt.tm_mon, lt.tm_mday, lt.tm_hour, lt.tm_min, lt.tm_sec)
    return max(_ZIP_MIN_DATE_TIME, min(date_time, _ZIP_MAX_DATE_TIME))


def stream_zip(entries: Iterable[tuple[str, Path]], chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Yield a ZIP archive of ``entries`` as a sequence of non-empty bytes chunks.

    ``entries`` are ``(archive name, path on disk)`` pairs and are consumed
    lazily, so a generator such as :func:`zip_dir_entries` can feed this
    directly.  Each file is read ``chunk_size`` bytes at a time; output is
    yielded whenever at least ``chunk_size`` bytes are pending, and once more at
    the end, so each yielded chunk is a little over ``chunk_size`` at most.

    Every path must name a regular file.  The final path component is opened
    with ``O_NOFOLLOW``, so a symlink swapped in after the directory was listed
    is refused rather than followed: an :class:`OSError` is raised mid-stream,
    the same as for a file that vanished.  The client then gets a truncated
    archive and a failed download, never the link's target.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    sink = _Sink()
    # The type checker does not know that zipfile accepts any object with write().
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as zf:  # type: ignore[call-overload]
        for arcname, path in entries:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
            with open(fd, "rb", buffering=0) as src:
                # fstat on the open descriptor: what we checked is what we read.
                st = os.fstat(src.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(f"not a regular file, refusing to archive it: {path}")

                info = zipfile.ZipInfo(arcname, _zip_date_time(st.st_mtime))
                info.compress_type = zipfile.ZIP_STORED
                # Unix file type and permissions live in the high 16 bits.
                info.external_attr = (stat.S_IFREG | stat.S_IMODE(st.st_mode)) << 16
                info.file_size = st.st_size  # only a hint; zipfile records the real size

                with zf.open(info, mode="w", force_zip64=True) as dst:
                    while chunk := src.read(chunk_size):
                        dst.write(chunk)
                        if sink.pending() >= chunk_size:
                            yield sink.take()
        # Leaving the ``with`` writes the central directory into the sink.
    if sink.pending():
        yield sink.take()


def zip_dir_entries(root: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    """Yield ``(f"{prefix}/{relative posix path}", path)`` for regular files under ``root``.

    The tree is walked depth-first with each directory's entries sorted by
    name, so the archive order is stable.  Symlinks are never followed and
    never yielded: not symlinked files, not symlinked directories, and nothing
    at all when ``root`` itself is a symlink (a bucket could plant a link to
    ``/etc/passwd`` or ``/`` in its output).  Sockets, FIFOs and devices are
    skipped too.  A missing ``root`` yields nothing.

    Leading and trailing slashes of ``prefix`` are dropped; an empty prefix
    puts the files at the top of the archive.  Names that cannot be encoded
    as UTF-8 (undecodable bytes in a Linux file name) are skipped with a
    warning, because zipfile could not write them.

    Example::

        zip_dir_entries(Path("/data/tmp.abc12345/OUTPUT"), "tmp.abc12345/OUTPUT")
        # -> ("tmp.abc12345/OUTPUT/series1/img0001.dcm", Path(".../img0001.dcm")), ...
    """
    try:
        root_st = os.lstat(root)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(root_st.st_mode):  # lstat: a symlink is not S_ISDIR
        return

    prefix = prefix.strip("/")
    yield from _walk(Path(root), prefix)


def _walk(directory: Path, name_prefix: str) -> Iterator[tuple[str, Path]]:
    """Recursive helper of :func:`zip_dir_entries` (``name_prefix`` has no slashes at its ends)."""
    with os.scandir(directory) as it:
        children = sorted(it, key=lambda entry: entry.name)
    for entry in children:
        name = f"{name_prefix}/{entry.name}" if name_prefix else entry.name
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            log.warning("skipping file with a name that is not valid UTF-8: %r", entry.path)
            continue
        # follow_symlinks=False: a symlink is neither a file nor a directory here.
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), name)
        elif entry.is_file(follow_symlinks=False):
            yield name, Path(entry.path)
