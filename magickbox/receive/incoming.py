"""The data set of one C-STORE while it arrives on the native receiver.

A data set up to ``MEMORY`` bytes (every CT and MR slice) stays in one buffer that the
association reuses: it is walked there, and only a data set that passed is written, with
its file meta, in one system call. A larger one spills to its file as it comes, so the
memory of an association stays bounded whatever length a peer declares. Either way the
file is complete in ``scratch/.partial`` before it moves into its arrival, and a start
removes whatever is left in ``.partial`` (nothing there was ever acknowledged).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path
from typing import BinaryIO

MEMORY = 1 << 21  # bytes of a data set held in memory; larger ones stream to their file
FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_serial = itertools.count(1)  # next() on a count is atomic under the GIL


def partial_path(folder: Path) -> Path:
    """A new name in ``.partial`` (unique in this process; a start empties the folder)."""
    return folder / f"{os.getpid()}-{next(_serial)}.part"


def write_file(path: Path, parts: list[bytes | memoryview]) -> None:
    """Create ``path`` holding ``parts``: one writev for the usual case."""
    fd = os.open(path, FLAGS, 0o600)
    try:
        views = [memoryview(part).cast("B") for part in parts]
        while views:
            done = os.writev(fd, views)
            while views and done >= len(views[0]):
                done -= len(views[0])
                views.pop(0)
            if views:
                views[0] = views[0][done:]
    finally:
        os.close(fd)


class Incoming:
    """One data set as its fragments arrive: in ``memory``, or past it in its file."""

    def __init__(self, memory: bytearray, meta: bytes, folder: Path) -> None:
        self.view = memoryview(memory)
        self.size = 0  # bytes of the data set so far
        self.meta = meta  # the preamble and file meta the file starts with
        self.folder = folder
        self.path: Path | None = None  # set once the data set spilled to its file
        self.fh: BinaryIO | None = None
        self.error: OSError | None = None  # of the spilled file's writes: answer A700

    @property
    def data(self) -> memoryview:
        """The data set held in memory (only while it has not spilled)."""
        return self.view[: self.size]

    def room(self, n: int) -> memoryview | None:
        """Where the next ``n`` bytes can be received straight into, if they fit in memory."""
        if self.path is None and self.size + n <= len(self.view):
            return self.view[self.size : self.size + n]
        return None

    def advance(self, n: int) -> None:
        """``n`` bytes were received into :meth:`room`."""
        self.size += n

    def put(self, chunk: memoryview) -> None:
        end = self.size + len(chunk)
        if self.path is None:
            if end <= len(self.view):
                self.view[self.size : end] = chunk
                self.size = end
                return
            self._spill()
        if self.error is None and self.fh is not None:
            try:
                self.fh.write(chunk)
            except OSError as exc:  # ENOSPC and the like: read on, answer A700 at the end
                self.error = exc
        self.size = end

    def _spill(self) -> None:
        self.path = partial_path(self.folder)
        try:
            self.fh = open(self.path, "xb", buffering=1 << 20)  # noqa: SIM115 (closed in finish)
            self.fh.write(self.meta)
            self.fh.write(self.view[: self.size])
        except OSError as exc:
            self.error = exc

    def finish(self) -> None:
        """Close the spilled file (its last buffered bytes are written now)."""
        if self.fh is not None:
            fh, self.fh = self.fh, None
            try:
                fh.close()
            except OSError as exc:
                self.error = self.error or exc

    def discard(self) -> None:
        """Forget a data set that will never be acknowledged (the peer is gone)."""
        if self.fh is not None:
            with contextlib.suppress(OSError):
                self.fh.close()
            self.fh = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
