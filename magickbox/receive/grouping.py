"""From files to arrivals: group received files by (calling AE, called AE, peer IP, study).

An arrival is what a peer sent of one study ("send" is routing's word, for what the box
sends out). It is ready to become a job when none of its associations is still open and
nothing arrived for ``quiet`` seconds; so several associations of one study (OsiriX sends
a series per association) make one job, while one association carrying N studies makes N.

Each arrival lives in ``scratch/.incoming/<id>/`` beside ``<id>.json`` (its key) from its
first file on, so a crash loses nothing: a restart turns every such folder into a job.
"""

from __future__ import annotations

import filecmp
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from magickbox.study.series import RawHeader, SeriesSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArrivalKey:
    caller_aet: str
    called_aet: str
    caller_ip: str
    study_uid: str


@dataclass
class Arrival:
    key: ArrivalKey
    folder: Path
    started: float = field(default_factory=time.time)
    open_assocs: set[int] = field(default_factory=set)
    last: float = field(default_factory=time.monotonic)
    nfiles: int = 0
    # The series views, updated file by file from the receiver's walk (None: a crash left
    # this arrival, or a file came without its header; the job reads the headers once).
    series: SeriesSet | None = field(default_factory=SeriesSet)


# on_ready(folder, key, started, series): the arrival is quiet, make it a job.
Ready = Callable[[Path, ArrivalKey, float, SeriesSet | None], None]


def place_file(src: Path, folder: Path, name: str) -> str:
    """Move ``src`` into ``folder`` as ``name``, never over another acknowledged data set.

    A second data set under a name already taken gets a suffix (``<uid>-2.dcm``); the same
    bytes sent again (a retry) just take the old one's place. Returns the name it got.
    """
    stem, suffix = os.path.splitext(name)
    for n in itertools.count(1):
        target = folder / (name if n == 1 else f"{stem}-{n}{suffix}")
        try:
            os.link(src, target)  # atomic and never replaces, unlike a rename
        except FileExistsError:
            if filecmp.cmp(src, target, shallow=False):
                os.replace(src, target)
                return target.name
            continue
        except OSError:  # a filesystem without hard links: no race-free check, rename
            if target.exists():
                continue
            os.replace(src, target)
            return target.name
        src.unlink()
        return target.name
    raise AssertionError("unreachable")


class Grouper:
    def __init__(self, incoming: Path, quiet: float, on_ready: Ready, retry: float = 30.0) -> None:
        self.incoming = incoming
        self.quiet = quiet
        self.on_ready = on_ready
        # An arrival that could not become a job (a full disk) is tried again this much
        # later, so it becomes one without a restart once space is back.
        self.retry = retry
        self._retries: list[tuple[float, Arrival]] = []
        self._arrivals: dict[ArrivalKey, Arrival] = {}
        self._assoc_arrivals: dict[int, set[ArrivalKey]] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="grouper", daemon=True)

    def start(self) -> None:
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.recover()
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # -- called from the receiver's association threads ----------------------------
    def add_file(
        self,
        assoc_id: int,
        key: ArrivalKey,
        src: Path,
        name: str,
        header: RawHeader | None = None,
    ) -> None:
        """Move a fully received file into its arrival's folder; ``header`` (the elements
        the receiver captured) goes into the arrival's series views."""
        with self._cond:
            arrival = self._arrivals.get(key)
            if arrival is None:
                arrival = self._arrivals[key] = self._new_arrival(key)
            arrival.open_assocs.add(assoc_id)
            self._assoc_arrivals.setdefault(assoc_id, set()).add(key)
            arrival.last = time.monotonic()
            arrival.nfiles += 1
            if header is None:  # a file without its header: the job reads every header
                arrival.series = None
            folder, series = arrival.folder, arrival.series
        # The arrival cannot become a job while this association is open, so the rename is
        # safe outside the lock and concurrent associations do not wait on each other.
        kept = place_file(src, folder, name)
        if header is not None and series is not None:
            try:
                series.add(header, kept)  # the set has its own lock
            except Exception:  # a view is a summary: it never costs the sender its image
                log.exception("series view of %s not updated", kept)
        if kept != name:
            log.warning(
                "two different data sets with SOP Instance UID %s from calling AE %r (%s) "
                "in one send: both kept, the later as %s",
                Path(name).stem, key.caller_aet, key.caller_ip, kept,
            )  # fmt: skip

    def association_closed(self, assoc_id: int) -> None:
        with self._cond:
            for key in self._assoc_arrivals.pop(assoc_id, ()):
                arrival = self._arrivals.get(key)
                if arrival:
                    arrival.open_assocs.discard(assoc_id)
                    arrival.last = time.monotonic()
            self._cond.notify_all()

    def _new_arrival(self, key: ArrivalKey) -> Arrival:
        arrival_id = uuid.uuid4().hex
        folder = self.incoming / arrival_id
        meta = {**asdict(key), "started": time.time()}
        tmp = self.incoming / f".{arrival_id}.json"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.incoming / f"{arrival_id}.json")
        folder.mkdir()
        return Arrival(key=key, folder=folder, started=meta["started"])

    # -- turning quiet arrivals into jobs ------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                ready, wait = self._take_ready()
                if not ready:
                    self._cond.wait(wait)
                    continue
            for arrival in ready:
                if not self._hand_over(
                    arrival.folder, arrival.key, arrival.started, arrival.series
                ):
                    self._try_again_later(arrival)

    def _try_again_later(self, arrival: Arrival) -> None:
        if arrival.folder.is_dir():  # else a job folder took it: a restart adopts that
            with self._cond:
                self._retries.append((time.monotonic() + self.retry, arrival))

    def _take_ready(self) -> tuple[list[Arrival], float | None]:
        now = time.monotonic()
        ready = [arrival for due, arrival in self._retries if due <= now]
        self._retries = [(due, arrival) for due, arrival in self._retries if due > now]
        wait = min((due - now for due, _arrival in self._retries), default=None)
        for key, arrival in list(self._arrivals.items()):
            if arrival.open_assocs:
                continue
            left = arrival.last + self.quiet - now
            if left <= 0:
                ready.append(self._arrivals.pop(key))
            else:
                wait = left if wait is None else min(wait, left)
        return ready, wait

    def _hand_over(
        self, folder: Path, key: ArrivalKey, started: float, series: SeriesSet | None = None
    ) -> bool:
        try:
            self.on_ready(folder, key, started, series)
        except Exception:
            # The folder stays in .incoming: tried again later, and at the next start.
            log.exception("arrival %s (%s) could not become a job (tried again in %g s)",
                          folder.name, key, self.retry)  # fmt: skip
            return False
        (folder.parent / f"{folder.name}.json").unlink(missing_ok=True)
        return True

    def pending(self) -> int:
        with self._cond:
            return len(self._arrivals)

    def snapshot(self) -> list[dict[str, object]]:
        """The arrivals still being received (not yet jobs), oldest first, for the web page."""
        with self._cond:
            arrivals = sorted(self._arrivals.values(), key=lambda arrival: arrival.started)
            return [
                {
                    **asdict(arrival.key),
                    "started": arrival.started,
                    "files": arrival.nfiles,
                    "series": len(arrival.series) if arrival.series is not None else None,
                    "open_associations": len(arrival.open_assocs),
                }
                for arrival in arrivals
            ]

    def recover(self) -> None:
        """Arrivals a previous run had not yet turned into jobs become jobs now."""
        for meta_path in sorted(self.incoming.glob("*.json")):
            folder = meta_path.with_suffix("")
            try:
                meta = json.loads(meta_path.read_text())
                started = float(meta.pop("started", time.time()))
                key = ArrivalKey(**meta)
            except (OSError, ValueError, TypeError):
                log.error("unreadable arrival record %s: left for inspection", meta_path)
                continue
            if not folder.is_dir():
                meta_path.unlink(missing_ok=True)  # the job was made; only the record was left
                continue
            log.info("recovering arrival %s of study %s", folder.name, key.study_uid)
            self._hand_over(folder, key, started)
