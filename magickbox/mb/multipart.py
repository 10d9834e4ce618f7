"""A ``multipart/form-data`` body that zips a folder while it is being sent.

``mb push`` must upload a 2 GB folder in constant memory: nothing is zipped to disk or to
memory first. The body is a generator (httpx sends it with chunked transfer encoding):
the form fields, then the part header of the file field, then the bytes of
:func:`magickbox.zipstream.stream_zip` as they are made, then the closing boundary.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from magickbox.zipstream import stream_zip, zip_dir_entries

# Bytes a member adds to the streamed archive besides its name (twice) and data: local
# header (30 + 20 zip64 extra), data descriptor (24), central directory entry (46; more
# only past 4 GiB). Only progress bars use this estimate.
_PER_MEMBER = 120
_ARCHIVE_END = 22  # end of central directory (zip64 records too past 4 GiB)


class FolderError(ValueError):
    """The folder to push is missing, not a folder, or has no files."""


@dataclass
class FolderScan:
    """What ``push`` will send from one folder: its files and their total size."""

    folder: Path
    entries: list[tuple[str, Path]] = field(default_factory=list)
    nbytes: int = 0

    @property
    def nfiles(self) -> int:
        return len(self.entries)

    @property
    def zip_size(self) -> int:
        """The size of the streamed zip, to within a few bytes per file (for progress)."""
        names = sum(len(name.encode()) * 2 for name, _ in self.entries)
        return self.nbytes + names + _PER_MEMBER * self.nfiles + _ARCHIVE_END


def scan_folder(folder: Path) -> FolderScan:
    """List the regular files under ``folder`` (symlinks are not followed), named
    ``<folder name>/<relative path>`` in the zip as ``zip -r`` would name them."""
    if not folder.exists():
        raise FolderError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise FolderError(f"{folder}: not a folder")
    scan = FolderScan(folder)
    for name, path in zip_dir_entries(folder, folder.resolve().name):
        try:
            st = os.lstat(path)
        except FileNotFoundError:  # gone since the listing: it would fail the zip later
            continue
        if stat.S_ISREG(st.st_mode):
            scan.entries.append((name, path))
            scan.nbytes += st.st_size
    if not scan.entries:
        raise FolderError(f"{folder}: the folder has no files")
    return scan


def _quote(value: str) -> str:
    # Browsers percent-encode these in a Content-Disposition parameter; so do we.
    return value.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")


class MultipartZip:
    """Iterable body: ``fields`` as form fields, then ``scan`` zipped as file ``file_field``.

    ``on_bytes(n)`` is called with the size of every chunk handed to the transport, so a
    progress bar follows what was really sent.
    """

    def __init__(
        self,
        fields: dict[str, str],
        file_field: str,
        filename: str,
        scan: FolderScan,
        on_bytes: Callable[[int], None] | None = None,
        chunk_size: int = 1 << 20,
    ) -> None:
        self.boundary = f"mb-{secrets.token_hex(16)}"
        self.fields = fields
        self.file_field = file_field
        self.filename = filename
        self.scan = scan
        self.on_bytes = on_bytes
        self.chunk_size = chunk_size

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _preamble(self) -> bytes:
        parts = [
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(k)}"\r\n\r\n'
            f"{v}\r\n"
            for k, v in self.fields.items()
        ]
        parts.append(
            f"--{self.boundary}\r\nContent-Disposition: form-data; "
            f'name="{_quote(self.file_field)}"; filename="{_quote(self.filename)}"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        )
        return "".join(parts).encode("utf-8")

    def _chunks(self) -> Iterable[bytes]:
        yield self._preamble()
        yield from stream_zip(iter(self.scan.entries), self.chunk_size)
        yield f"\r\n--{self.boundary}--\r\n".encode()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks():
            if self.on_bytes is not None:
                self.on_bytes(len(chunk))
            yield chunk
