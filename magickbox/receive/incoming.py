"""The data set of one C-STORE while it arrives on the native receiver.

Each data set goes to its file in ``scratch/.partial`` as it comes, in ``FLUSH``-sized
writes (the first one led by the file meta we write), so the disk works while the rest is
still on the wire and nothing is written twice. Its first ``MEMORY`` bytes (every CT and
MR slice) also stay in one buffer that the association reuses: the structure walk reads
them there instead of reading the file back. A larger data set *spills*: the buffer is
left behind, its file is walked once it is complete, and the memory of an association
stays bounded whatever length a peer declares.

The file a data set fills is made before its request comes (a :class:`Spare`, created
while the association waits for the peer), so creating it costs the sender no time. It is
an unnamed file (O_TMPFILE, see ``jobs.scratch``) where the filesystem has them: it gets
its one name in its arrival when it is complete and checked, and a kill -9 before that
leaves nothing behind. A data set that spills is named in ``.partial`` then (it is walked
from its file); so is every data set where unnamed files are not to be had. A named file
is complete in ``.partial`` before it moves into its arrival, and a start removes whatever
is left there (nothing in it was ever acknowledged).
"""

from __future__ import annotations

import contextlib
import itertools
import os

from magickbox.jobs.scratch import UNNAMED, StrPath, is_unnamed, name_unnamed, remove_file

MEMORY = 1 << 21  # bytes of a data set held in memory; larger ones are walked from their file
FLUSH = 1 << 16  # bytes gathered before a write: few system calls, the disk kept busy
FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
UNNAMED_FLAGS = os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC
_serial = itertools.count(1)  # next() on a count is atomic under the GIL
_pid = os.getpid()  # getpid() is a system call each time; a forked child learns its own


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def partial_path(folder: StrPath) -> str:
    """A new name in ``.partial`` (unique in this process; a start empties the folder)."""
    return f"{folder}/{_pid}-{next(_serial)}.part"


def write_all(fd: int, parts: list[memoryview]) -> None:
    """Write ``parts`` (byte views) to ``fd`` in order: one writev for the usual case."""
    views = list(parts)
    while views:
        done = os.writev(fd, views)
        while views and done >= len(views[0]):
            done -= len(views[0])
            views.pop(0)
        if views:
            views[0] = views[0][done:]


def _link(fd: int) -> str:
    """The /proc link an unnamed file is read (and named) by while ``fd`` is open."""
    return f"{UNNAMED}{_pid}/fd/{fd}"


_unnamed_in: dict[str, bool] = {}  # folder -> whether unnamed files can be made and named


def unnamed_files(folder: StrPath) -> bool:
    """Whether ``folder``'s filesystem makes unnamed files that we can name (asked once per
    folder, by making one: a kernel, filesystem or /proc without them says so here)."""
    key = str(folder)
    known = _unnamed_in.get(key)
    if known is None:
        known = _unnamed_in[key] = _try_unnamed(key)
    return known


def _try_unnamed(folder: str) -> bool:
    try:
        fd = os.open(folder, UNNAMED_FLAGS, 0o600)
    except OSError:
        return False
    probe = partial_path(folder)
    try:
        name_unnamed(_link(fd), probe)
        os.unlink(probe)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class Spare:
    """An empty file, made ahead for the next data set to fill: unnamed where it can be,
    else in ``.partial``. ``path`` reads it either way (an unnamed file's is its /proc link,
    valid while the file is open)."""

    def __init__(self, folder: StrPath) -> None:
        self.folder = folder
        self.error: OSError | None = None  # the file could not be made: answered A700
        self.fd, self.path = -1, ""
        try:
            if unnamed_files(folder):
                self.fd = os.open(folder, UNNAMED_FLAGS, 0o600)
                self.path = _link(self.fd)
            else:
                self.path = partial_path(folder)
                self.fd = os.open(self.path, FLAGS, 0o600)
        except OSError as exc:
            self.error = exc

    @property
    def unnamed(self) -> bool:
        return is_unnamed(self.path)

    def name(self) -> None:
        """Give an unnamed file its name in ``.partial`` (a data set walked from its file)."""
        if self.unnamed and self.fd >= 0:
            named = partial_path(self.folder)
            name_unnamed(self.path, named)
            self.path = named

    def close(self) -> None:
        """Close the file (once). A named one stays where it is; an unnamed one is gone
        unless it was named (placed into its arrival) first."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def discard(self) -> None:
        """Close and remove the file: it will never hold an acknowledged data set."""
        with contextlib.suppress(OSError):
            self.close()
        remove_file(self.path)


class Incoming:
    """One data set as its fragments arrive, written to ``spare``'s file as they come.

    A write that fails (ENOSPC and the like) is kept in ``error``: the rest of the data set
    is read and dropped, and the C-STORE is answered A700.
    """

    def __init__(self, memory: bytearray, meta: bytes, spare: Spare) -> None:
        self.view = memoryview(memory)
        self.meta = memoryview(meta)
        self.spare = spare
        self.size = 0  # bytes of the data set so far
        self.flushed = 0  # of which written to the file
        self.meta_written = False
        self.spilled = False  # larger than memory: walked from its file
        self.error = spare.error

    @property
    def path(self) -> str:
        return self.spare.path

    @property
    def data(self) -> memoryview:
        """The data set held in memory (only while it has not spilled)."""
        return self.view[: self.size]

    def room(self, n: int) -> memoryview | None:
        """Where the next ``n`` bytes can be received straight into, if they fit in memory."""
        if not self.spilled and self.size + n <= len(self.view):
            return self.view[self.size : self.size + n]
        return None

    def advance(self, n: int) -> None:
        """``n`` bytes were received into :meth:`room`."""
        self.size += n
        if self.size - self.flushed >= FLUSH:
            self._write(self.view[self.flushed : self.size])
            self.flushed = self.size

    def put(self, chunk: memoryview) -> None:
        """The next bytes of the data set, from the association's inbox."""
        end = self.size + len(chunk)
        if not self.spilled and end <= len(self.view):
            self.view[self.size : end] = chunk
            self.advance(len(chunk))
            return
        if not self.spilled:  # what memory holds goes first; from now on straight to disk
            self.spilled = True
            self._name()  # it will be walked from its file
            self._write(self.view[self.flushed : self.size])
        self._write(chunk)
        self.size = self.flushed = end

    def _name(self) -> None:
        if self.error is None:
            try:
                self.spare.name()
            except OSError as exc:  # read on; answered A700 once the data set is complete
                self.error = exc

    def _write(self, part: memoryview) -> None:
        if self.error is not None:
            return
        parts = [part] if self.meta_written else [self.meta, part]
        try:
            write_all(self.spare.fd, parts)
        except OSError as exc:  # read on; answered A700 once the data set is complete
            self.error = exc
        self.meta_written = True

    def finish(self) -> None:
        """The data set is complete: write what is left and close a named file (an
        unnamed one stays open until it is placed: :meth:`release`)."""
        if self.size > self.flushed or not self.meta_written:
            self._write(self.view[self.flushed : self.size])
            self.flushed = self.size
        if self.spare.unnamed:
            return
        try:
            self.spare.close()
        except OSError as exc:
            self.error = self.error or exc

    def release(self) -> None:
        """Once it is answered: close the file (an unnamed one lives on only if it was
        placed in its arrival)."""
        with contextlib.suppress(OSError):
            self.spare.close()

    def discard(self) -> None:
        """Forget a data set that will never be acknowledged."""
        self.spare.discard()
