"""What happens to a received data set once it is on disk, whichever receiver wrote it.

It is checked (a walk over its element headers, values untouched), named by its SOP
Instance UID, and added to its arrival; the answer is the C-STORE status the sender gets.
Both receivers (the native one and the pynetdicom one) call :meth:`Intake.store`, so the
rules of what is kept live here once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from magickbox.buckets.registry import Bucket
from magickbox.config import Settings
from magickbox.events import EventBus, ImageReceived
from magickbox.jobs.scratch import StrPath, remove_file
from magickbox.names import BadName, check_study_uid, check_uid
from magickbox.receive.grouping import ArrivalKey, Grouper, Placed
from magickbox.receive.rejections import Rejection
from magickbox.receive.structure import Header, Malformed, dataset_bytes, walk_stored_file
from magickbox.study.series import VIEW_TAGS, RawHeader

log = logging.getLogger(__name__)

STUDY_UID_TAG = 0x0020000D
SOP_UID_TAG = 0x00080018
# C-STORE statuses (PS3.4 B.2.3)
SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700
# What makes a received data set one that is not kept (answered C000)
NOT_KEPT = (ValueError, BadName, Malformed, OSError, EOFError)


@dataclass(frozen=True)
class Peer:
    """Who sent a data set: the association's two titles and the caller's address."""

    calling: str
    called: str
    address: str


def study_uid_of(raw: bytes) -> str:
    uid = raw.decode("ascii", "replace").strip(" \0")
    if not uid:
        raise ValueError("dataset has no StudyInstanceUID")
    return check_study_uid(uid)  # need not be a proper UID: the archive folder is its key


def sop_uid_of(raw: bytes | None, requested: str) -> str:
    """The SOP Instance UID to name a stored file by: the data set's own, else the request's.

    The data set is what is kept, so its (0008,0018) wins; dcmtk puts garbage such as "31"
    into the request for files whose elements are all VR UN.
    """
    for candidate in (raw.decode("ascii", "replace") if raw else "", requested):
        try:
            return check_uid(candidate.strip(" \0"))
        except BadName:
            continue
    raise ValueError(f"no valid SOP Instance UID in the data set or the request ({requested!r})")


class Keeper(Protocol):
    """Where kept files go: the grouper itself, or (in a receiver's worker process) its
    messenger to the box (``workers.py``)."""

    def place(
        self, assoc_id: int, key: ArrivalKey, src: StrPath, name: str, header: RawHeader | None
    ) -> Placed: ...

    def record(self, placed: Placed) -> None: ...

    def association_closed(self, assoc_id: int) -> None: ...


@dataclass(frozen=True)
class Checked:
    """A data set whose structure passed: where it goes and under which name."""

    key: ArrivalKey
    sop_uid: str
    header: RawHeader | None  # the series views' elements (None: views are off)
    size: int  # bytes of the data set as it came on the wire


@dataclass(frozen=True)
class Kept:
    """A checked data set in its arrival, acknowledged or about to be: what is left to do
    for it (its count, views and metrics) can wait until the sender has its answer."""

    checked: Checked
    placed: Placed


class Intake:
    def __init__(self, own_aet: str, grouper: Keeper, events: EventBus, views: bool) -> None:
        self.own_aet = own_aet
        self.grouper = grouper
        self.events = events  # ImageReceived, for the metrics
        # The one walk over each data set also keeps the series views' tags (raw bytes,
        # decoded only for a series' first file: see study.series.RawHeader).
        self.views = views
        self.capture = frozenset((STUDY_UID_TAG, SOP_UID_TAG, *(VIEW_TAGS if views else ())))

    def store(self, file: StrPath, syntax: str, requested: str, peer: Peer, assoc_id: int) -> int:
        """Check and keep the Part 10 file at ``file``; the status to answer with.

        The file is gone from ``file`` afterwards: moved into its arrival, or removed.
        """
        path = Path(file)
        try:
            checked = self.examine(walk_stored_file(path, syntax, self.capture), requested,
                                   peer, dataset_bytes(path))  # fmt: skip
        except NOT_KEPT as exc:
            refused(peer, requested, exc, logging.WARNING)
            path.unlink(missing_ok=True)
            return CANNOT_UNDERSTAND
        kept = self.keep(path, checked, peer, assoc_id)
        if kept is None:
            return OUT_OF_RESOURCES
        self.received(kept, peer)
        return SUCCESS

    def examine(self, walked: Header, requested: str, peer: Peer, size: int) -> Checked:
        """What a walked data set is kept as; raises ValueError (or BadName) when it is
        not to be kept (no StudyInstanceUID, no usable SOP Instance UID, own title)."""
        found = walked.values
        study_uid = study_uid_of(found.get(STUDY_UID_TAG, b""))
        # The SOP Instance UID names the file and is no series element: the header (which
        # a worker compares with its series' last one) goes without it.
        sop_uid = sop_uid_of(found.pop(SOP_UID_TAG, None), requested)
        walked.vrs.pop(SOP_UID_TAG, None)
        if peer.called == self.own_aet:  # an association to the own title stores nothing
            raise ValueError("the box's own AE title names no bucket")
        key = ArrivalKey(
            caller_aet=peer.calling,
            called_aet=peer.called,
            caller_ip=peer.address,
            study_uid=study_uid,
        )
        header = (
            RawHeader(found, walked.vrs, walked.implicit, walked.little) if self.views else None
        )
        return Checked(key, sop_uid, header, size)

    def keep(self, path: StrPath, checked: Checked, peer: Peer, assoc_id: int) -> Kept | None:
        """Move the checked file at ``path`` into its arrival: answered SUCCESS once it is
        there (a kill -9 from then on loses nothing: a restart makes the arrival a job);
        None when it could not be moved (answered A700). :meth:`received` must follow."""
        try:
            placed = self.grouper.place(assoc_id, checked.key, path, f"{checked.sop_uid}.dcm",
                                        checked.header)  # fmt: skip
        except OSError as exc:  # disk full or gone: the sender is told and may try again
            refused(peer, checked.sop_uid, exc, logging.ERROR)
            remove_file(path)
            return None
        return Kept(checked, placed)

    def received(self, kept: Kept, peer: Peer) -> None:
        """The count, series views and metrics of a kept data set, once its answer is out
        (nothing in that answer depends on them)."""
        self.grouper.record(kept.placed)
        self.events.publish(ImageReceived(peer.calling, peer.called, kept.checked.size))


def refused(peer: Peer, sop_uid: str, reason: Exception, level: int) -> None:
    """One log line per refused C-STORE naming who sent what to whom and why."""
    log.log(
        level,
        "C-STORE refused: calling AE %r at %s, called AE %r, SOP Instance UID %r: %s",
        peer.calling,
        peer.address,
        peer.called,
        sop_uid,
        reason,
    )


class ReceiverBase:
    """What both receivers (native.py, scp.py) are made of: the settings, where arrivals go,
    who may associate (``bucket_of`` and the admission rule), where refusals are recorded,
    and the intake that keeps what arrives."""

    def __init__(
        self,
        settings: Settings,
        grouper: Grouper,
        bucket_of: Callable[[str], Bucket | None],
        rejected: Callable[[Rejection], None],
        events: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.grouper = grouper
        self.bucket_of = bucket_of  # the enabled bucket of a called AE title
        self.rejected = rejected  # records a refused association
        self.intake = Intake(settings.aet, grouper, events or EventBus(), settings.series_views)
        self._prepare()

    def _prepare(self) -> None:
        """The receiver's own state (listeners, servers), set up once it is built."""
