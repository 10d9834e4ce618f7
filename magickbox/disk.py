"""Disk protection: the one place that decides whether the box takes more data.

The scratch filesystem holds everything the box keeps (jobs, archive, incoming sends,
uploads, the database by default). Below the reserve (``disk_reserve``: bytes or a
percentage of the filesystem) the receiver refuses new associations (transient, "local
limit exceeded") and answers C-STOREs with A700, uploads are answered 507 before their
body is read, and the page and ``/api/v1/health`` say so. Nothing is latched: every
question reads the filesystem anew (the receiver's per-image question may reuse a look
of the last 0.1 s while far above the reserve), so freeing space resumes everything
without a restart.

A full disk while pynetdicom writes an incoming data set (ENOSPC) must not kill the
association's thread: :class:`GuardedTemporaryFile` takes pynetdicom's temporary file's
place, swallows the error, gives the space back, and the C-STORE is answered A700.

This module imports only the bottom modules, so the receiver, the web front and the
scrub may all ask it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magickbox.config import Settings
from magickbox.errors import StorageFull
from magickbox.jobs.scratch import StrPath, remove_file

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (PS3.8 9.3.4): rejected-transient, by the service provider (presentation
# related function), local limit exceeded. A sender will try again later.
REJECT_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED = 0x02, 0x03, 0x02
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
RESUME_MARGIN = 10  # once low, data is taken again at reserve + reserve / RESUME_MARGIN free
# The receiver asks before every C-STORE answer. Far above the reserve a look this recent
# answers for it (less what the receiver wrote since): a statvfs per image costs more than
# the rest of the check, and another writer can fill FAR_ABOVE bytes in LOOK_SECONDS only
# at 640 MB/s.
LOOK_SECONDS = 0.1
FAR_ABOVE = 64 << 20


@dataclass(frozen=True)
class DiskStatus:
    """One look at the scratch filesystem and the reserve the box keeps on it."""

    path: str
    total: int
    used: int
    free: int
    reserve: int
    low: bool

    @property
    def used_percent(self) -> float:
        """Percent in use as df(1) shows it: of the space a user may have, used + free."""
        room = self.used + self.free
        return 100.0 * self.used / room if room else 0.0

    def room_for(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more still leave the reserve free."""
        return self.free - nbytes >= self.reserve

    def view(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "total": self.total,
            "used": self.used,
            "free": self.free,
            "reserve": self.reserve,
            "used_percent": round(self.used_percent, 2),
            "low": self.low,
            "accepting": not self.low,
        }

    def message(self) -> str:
        return (
            f"the disk of {self.path} is below the box's reserve: {self.free} bytes free, "
            f"{self.reserve} kept in reserve (disk_reserve); try again later"
        )


class DiskGuard:
    """Answers "may more data come?" for one scratch folder; logs each change of answer."""

    def __init__(self, path: Path, reserve: tuple[int, float]) -> None:
        self.path = path
        self.reserve_bytes, self.reserve_percent = reserve
        self._was_low = False
        self._lock = threading.Lock()
        self._look = (-LOOK_SECONDS, 0)  # (monotonic time, bytes free above the reserve)
        self._since = 0  # bytes the receiver wrote since that look

    def status(self) -> DiskStatus:
        usage = shutil.disk_usage(self.path)  # one statvfs: cheap enough for every C-STORE
        reserve = self.reserve_bytes or int(usage.total * self.reserve_percent / 100)
        with self._lock:
            # Once low, stay low until a tenth of the reserve more is free: a refused data
            # set's file is removed at once, which alone would lift the box just above the
            # reserve and let the next association in to be refused image by image.
            resume = reserve + reserve // RESUME_MARGIN
            low = usage.free < (resume if self._was_low else reserve)
            changed, self._was_low = low != self._was_low, low
            self._look, self._since = (time.monotonic(), usage.free - reserve), 0
        status = DiskStatus(str(self.path), usage.total, usage.used, usage.free, reserve, low)
        if changed:
            self._note(status)
            if on_change is not None:  # a receiver worker: the box's guard learns it too
                on_change(low)
        return status

    def learn(self, low: bool) -> None:
        """Another process's guard of this folder (a receiver worker's) changed its answer:
        take it over, so the box's own answers (health, associations) agree."""
        with self._lock:
            self._was_low = low
            self._look = (-LOOK_SECONDS, 0)

    def still_free(self, written: int) -> bool:
        """Whether a look of the last LOOK_SECONDS left so much room above the reserve that
        ``written`` more bytes since (and the others' writes) cannot have used it up."""
        with self._lock:
            when, room = self._look
            if self._was_low or time.monotonic() - when > LOOK_SECONDS:
                return False
            self._since += written
            return room - self._since > FAR_ABOVE

    @staticmethod
    def _note(status: DiskStatus) -> None:
        if status.low:
            log.warning("disk low: %s; refusing new data until space is freed", status.message())
        else:
            log.info("disk space is back above the reserve (%d bytes free): accepting data",
                     status.free)  # fmt: skip

    def check_upload(self, length: int | None) -> None:
        """Raise StorageFull when an upload of ``length`` bytes (None: unknown) cannot come."""
        status = self.status()
        if status.low:
            raise StorageFull(status.message())
        if length is not None and not status.room_for(length):
            raise StorageFull(
                f"an upload of {length} bytes would leave less than the reserve of "
                f"{status.reserve} bytes free on {status.path} ({status.free} free)"
            )


# Told when a guard of this process changes its answer (set in a receiver worker).
on_change: Callable[[bool], None] | None = None
_guards: dict[tuple[Path, str], DiskGuard] = {}
_guards_lock = threading.Lock()


def _forked() -> None:
    """A forked child (a receiver worker) makes its own guards: the box's locks may have
    been held by one of its threads at the fork."""
    global _guards_lock
    _guards_lock = threading.Lock()
    _guards.clear()


os.register_at_fork(after_in_child=_forked)


def guard_for(settings: Settings) -> DiskGuard:
    """The one guard of a scratch folder and reserve, shared by everyone who asks."""
    key = (settings.home, settings.disk_reserve)  # cheap to hash: asked per C-STORE
    with _guards_lock:
        guard = _guards.get(key)
        if guard is None:
            guard = _guards[key] = DiskGuard(settings.scratch, settings.reserve)
        return guard


# -- the receiver's questions (each one line in receive/scp.py) ----------------------------
def association_refusal(settings: Settings) -> str:
    """Why a new association must be refused now ("" when it may come): any receiver
    answers a reason with A-ASSOCIATE-RJ rejected-transient / provider / local limit."""
    status = guard_for(settings).status()
    return status.message() if status.low else ""


def refused_association(assoc: Any, settings: Settings) -> bool:
    """pynetdicom's EVT_REQUESTED: reject (transient, local limit exceeded) while low."""
    reason = association_refusal(settings)
    if not reason:
        return False
    rq = assoc.requestor
    log.warning("rejected association from %s@%s calling %r: %s",
                str(rq.ae_title).strip(), rq.address,
                str(getattr(rq.primitive, "called_ae_title", "")).strip(), reason)  # fmt: skip
    assoc.acse.send_reject(REJECT_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED)
    assoc.kill()
    return True


def refused_store(path: StrPath, settings: Settings, event: Any = None) -> bool:
    """Whether a received data set is refused with A700: its write hit a full disk, or the
    disk went below the reserve. A refused data set's file is removed at once; the log
    line names who sent what to whom (from pynetdicom's C-STORE ``event``)."""
    failed = _failed_writes.pop(str(path), None)
    if failed is None:
        status = guard_for(settings).status()
        if not status.low:
            return False
        reason = status.message()
    else:
        reason = f"the disk filled up while it was written: {failed}"
    log.warning("C-STORE refused with A700 (out of resources)%s: %s", _who(event), reason)
    remove_file(path)
    return True


def refused_write(path: StrPath, written: int, settings: Settings) -> bool:
    """:func:`refused_store` for a data set of ``written`` bytes that the native receiver
    wrote itself (its write errors it answers on its own): a recent look far above the
    reserve answers without a statvfs."""
    if guard_for(settings).still_free(written):
        return False
    return refused_store(path, settings)


def _who(event: Any) -> str:
    if event is None:
        return ""
    assoc = event.assoc
    sop_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "").strip()
    return (f": calling AE {str(assoc.requestor.ae_title).strip()!r} at "
            f"{assoc.requestor.address}, called AE {str(assoc.acceptor.ae_title).strip()!r}, "
            f"SOP Instance UID {sop_uid!r}")  # fmt: skip


_failed_writes: dict[str, OSError] = {}


class GuardedTemporaryFile:
    """pynetdicom's temporary file of an incoming data set, surviving a full disk.

    pynetdicom calls ``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")``, then
    ``write``, ``file.flush`` and ``close``. A full disk there would raise in pynetdicom's
    reader thread and drop the association with nothing said; here the error is kept,
    the file emptied (the space goes back at once), the rest of the data set read and
    discarded, and :func:`refused_store` answers the C-STORE with A700.
    """

    def __init__(self, *, suffix: str = "", **_ignored: Any) -> None:
        fd, self.name = tempfile.mkstemp(suffix=suffix)
        self._fd: int | None = fd
        self.file = self  # pynetdicom flushes ``.file``: writes go straight to the fd
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        if self.error is None and self._fd is not None:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def _fail(self, exc: OSError) -> None:
        if exc.errno not in FULL_ERRNOS:
            log.error("writing a received data set to %s failed: %s", self.name, exc)
        self.error = exc
        _failed_writes[self.name] = exc
        if self._fd is not None:
            os.ftruncate(self._fd, 0)

    def flush(self) -> None:
        """Nothing is buffered: each write went to the file already."""

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.error is not None:
            # Never acknowledged: nothing of it is kept, even when no C-STORE asked.
            _failed_writes.pop(self.name, None)
            Path(self.name).unlink(missing_ok=True)


def guard_dataset_writes() -> None:
    """Make pynetdicom write incoming data sets through :class:`GuardedTemporaryFile`."""
    from pynetdicom import dimse_messages

    dimse_messages.NamedTemporaryFile = GuardedTemporaryFile  # type: ignore[assignment,misc]
