"""The heartbeat: every ``heartbeat_seconds`` the box looks at each of its parts and
restarts in place one that is down or hung, with a log line and a ``PartRestarted`` event.

A part is checked by a function answering a :class:`PartState`; the Box names the parts
(receiver, dispatcher, router, database, disk) and how each is repaired. The receiver is
checked from outside, as a PACS would: a C-ECHO to the box's own AE title. The same
checks answer ``GET /api/v1/health`` (without the repairs).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from magickbox.disk import DiskStatus
from magickbox.events import DiskLow, EventBus, PartRestarted
from magickbox.routing import dimse

log = logging.getLogger(__name__)

OK, LOW, DOWN, OFF = "ok", "low", "down", "off"  # low: works, but look; off: not started


@dataclass(frozen=True)
class PartState:
    state: str
    detail: str = ""
    facts: dict[str, int] = field(default_factory=dict)  # e.g. the disk's free and total bytes

    @property
    def down(self) -> bool:
        return self.state == DOWN


Check = Callable[[], PartState]
Repair = Callable[[], None]


class Heartbeat:
    def __init__(
        self,
        checks: dict[str, Check],
        repairs: dict[str, Repair],
        events: EventBus,
        interval: float,
    ) -> None:
        self.checks, self.repairs, self.events = checks, repairs, events
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._disk_low = False  # a disk_low event goes out once per fall below the mark
        self.last_round = time.monotonic()  # the watchdog asks whether rounds go on

    def check(self) -> dict[str, PartState]:
        """Each part's state now; a check that raises counts as that part down."""
        states: dict[str, PartState] = {}
        for name, check in self.checks.items():
            try:
                states[name] = check()
            except Exception as exc:
                states[name] = PartState(DOWN, f"the check failed: {exc}")
        return states

    def run_once(self) -> dict[str, PartState]:
        """One round: check, restart what is down and can be restarted, check that again."""
        states = self.check()
        for name, state in states.items():
            if state.down and name in self.repairs:
                states[name] = self._repair(name, state)
        self._watch_disk(states.get("disk"))
        self.last_round = time.monotonic()
        return states

    def _repair(self, name: str, state: PartState) -> PartState:
        log.error("heartbeat: %s is down (%s): restarting it", name, state.detail)
        try:
            self.repairs[name]()
        except Exception:
            log.exception("heartbeat: restarting %s failed", name)
            return state
        self.events.publish(PartRestarted(name, state.detail))
        after = self.checks[name]()
        log.warning("heartbeat: %s restarted: now %s %s", name, after.state, after.detail)
        return after

    def _watch_disk(self, state: PartState | None) -> None:
        # Low: under disk_warn_percent, or below the reserve (down, but a disk still there).
        low = state is not None and (state.state == LOW or bool(state.facts.get("low")))
        if low and not self._disk_low and state is not None:
            log.warning("heartbeat: the scratch disk is low: %s", state.detail)
            self.events.publish(DiskLow(state.facts.get("free", 0), state.facts.get("total", 0)))
        self._disk_low = low

    # -- the thread ----------------------------------------------------------------
    def start(self) -> None:
        if self.interval <= 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def alive(self) -> bool:
        """Whether rounds go on (the systemd watchdog is fed only then)."""
        if self._thread is None:
            return True  # no heartbeat configured: nothing to vouch for
        overdue = time.monotonic() - self.last_round > 3 * self.interval + 60
        return self._thread.is_alive() and not overdue

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:  # the heartbeat itself must keep beating
                log.exception("heartbeat: a round failed")


# -- the checks ----------------------------------------------------------------------


def echo(host: str, port: int, aet: str, timeout: float, tries: int = 2) -> PartState:
    """C-ECHO the box's own AE title, asked again before it counts as down: pynetdicom 3.0's
    requestor can lose a quick answer (its reactor thread may take the response that
    ``send_c_echo`` waits for), and one lost answer must not restart a working receiver."""
    state = _echo_once(host, port, aet, timeout)
    for _ in range(tries - 1):
        if not state.down:
            break
        state = _echo_once(host, port, aet, timeout)
    return state


def _echo_once(host: str, port: int, aet: str, timeout: float) -> PartState:
    """One C-ECHO: a refused association still proves the receiver listens."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    assoc = ae.associate(host, port, ae_title=aet)
    if assoc.is_established:
        dimse.park_reactor(assoc)  # or pynetdicom's own thread may take a quick answer
        status = assoc.send_c_echo()
        assoc.release()
        if status and status.Status == 0:
            return PartState(OK, f"C-ECHO {aet}@{host}:{port} answered")
        return PartState(DOWN, f"C-ECHO {aet}@{host}:{port}: no success status")
    if dimse.rejected(assoc):  # e.g. too many associations or the disk reserve: it listens
        return PartState(OK, f"{aet}@{host}:{port} listens (association refused now)")
    return PartState(DOWN, f"no DICOM answer from {host}:{port} within {timeout:g} s")


def database(sessions: sessionmaker[Session]) -> PartState:
    try:
        with sessions() as s:
            s.execute(text("SELECT 1"))
    except Exception as exc:
        return PartState(DOWN, f"the database does not answer: {exc}")
    return PartState(OK)


def disk(
    scratch: Path, warn_percent: float, reserve: Callable[[], DiskStatus] | None = None
) -> PartState:
    """The scratch folder's filesystem: missing or read-only is down, and so is a disk below
    the box's reserve (``reserve``: the DiskGuard's answer, the very one the receiver and
    uploads ask, so health says down exactly while new data is refused); under
    ``warn_percent`` free it is low."""
    if not scratch.is_dir():
        return PartState(DOWN, f"the scratch folder {scratch} is missing")
    if not os.access(scratch, os.W_OK):
        return PartState(DOWN, f"the scratch folder {scratch} is not writable")
    usage = shutil.disk_usage(scratch)
    percent = 100.0 * usage.free / usage.total if usage.total else 0.0
    detail = f"{usage.free} of {usage.total} bytes free ({percent:.1f} %)"
    facts = {"free": usage.free, "total": usage.total}
    status = reserve() if reserve is not None else None
    if status is not None and status.low:
        detail = (f"{status.free} of {status.total} bytes free, below the reserve of "
                  f"{status.reserve} (disk_reserve): refusing associations, C-STOREs and "
                  "uploads")  # fmt: skip
        return PartState(DOWN, detail, {"free": status.free, "total": status.total, "low": 1})
    return PartState(LOW if percent < warn_percent else OK, detail, facts)
