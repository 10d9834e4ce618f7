"""Named, typed events between the stages, and the one small bus that carries them.

The stages never call each other directly: the store publishes :class:`JobQueued`, the
queue publishes :class:`JobFinished`, and whoever cares (the queue, routing, the web's
caches) subscribes. The Box owns the bus and does the wiring (``box.py``).

Handlers run on the publisher's thread and must be quick: a handler that has real work
to do (routing evaluation, say) hands it to its own worker and returns.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """Base of every event."""


@dataclass(frozen=True)
class JobQueued(Event):
    """A job entered the queue (new, re-queued by a restart, or retried)."""

    scratchdir: str
    bucket: str


@dataclass(frozen=True)
class JobStarted(Event):
    """A queued job was handed to the executor; ``waited``: seconds it spent queued."""

    scratchdir: str
    bucket: str
    waited: float


@dataclass(frozen=True)
class JobFinished(Event):
    """A job's end (done or failed) is recorded in the database.

    ``run_seconds``: from its start to its end, when this process started it (None when
    it never ran here: failed before a start, or by a restart)."""

    scratchdir: str
    bucket: str
    state: str
    run_seconds: float | None = None


@dataclass(frozen=True)
class JobDeleted(Event):
    """A job and its folder are gone."""

    scratchdir: str


@dataclass(frozen=True)
class ImageReceived(Event):
    """C-STOREs were accepted (the files are kept): ``images`` of them (one, but for a
    receiver worker's batch), ``nbytes`` of data sets in all."""

    caller_aet: str
    called_aet: str
    nbytes: int
    images: int = 1


@dataclass(frozen=True)
class AssociationRejected(Event):
    """The receiver refused an association; ``reason`` is a short fixed label."""

    reason: str


@dataclass(frozen=True)
class SendEnded(Event):
    """One try of a routing send ended; ``outcome`` is done, retrying or failed."""

    send_id: int
    scratchdir: str
    destination: str
    outcome: str
    reason: str = ""


@dataclass(frozen=True)
class DiskLow(Event):
    """The scratch filesystem's free space fell below the warning level (once per fall)."""

    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class Scrubbed(Event):
    """Space was freed by removing ``what`` (a job, an archived study, a stale file)."""

    what: str
    nbytes: int


@dataclass(frozen=True)
class PartRestarted(Event):
    """The heartbeat found a part of the box down or hung and restarted it."""

    part: str
    reason: str


E = TypeVar("E", bound=Event)


class EventBus:
    """Synchronous publish/subscribe by event type; a failing handler is logged, never raised."""

    def __init__(self) -> None:
        self._handlers: dict[type[Event], list[Callable[[Any], None]]] = {}
        self._lock = threading.Lock()

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> None:
        with self._lock:
            self._handlers.setdefault(kind, []).append(handler)

    def publish(self, event: Event) -> None:
        with self._lock:
            handlers = list(self._handlers.get(type(event), ()))
        for handler in handlers:
            try:
                handler(event)
            except Exception:  # one subscriber's failure must not stop the publisher
                log.exception("a handler of %s failed", type(event).__name__)
