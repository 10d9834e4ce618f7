"""From files to arrivals: group received files by (calling AE, called AE, peer IP, study).

An arrival is what a peer sent of one study ("send" is routing's word, for what the box
sends out). It is ready to become a job when none of its associations is still open and
nothing arrived for ``quiet`` seconds; so several associations of one study (OsiriX sends
a series per association) make one job, while one association carrying N studies makes N.
A bucket's own rule (its quiet window, one job per series, the series types it requires:
``completeness.py``) is asked through ``policy_for`` and ``types_of``.

Each arrival lives in ``scratch/.incoming/<id>/`` beside ``<id>.json`` (its key) from its
first file on, so a crash loses nothing: a restart takes every such folder up again as a
send that has been quiet since its last file, and the same rule decides when it is a job.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from magickbox.jobs.scratch import StrPath, place_file
from magickbox.receive.completeness import SendPolicy, Verdict, decide
from magickbox.study.series import RawHeader, SeriesSet, collect_files, series_uid_of_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArrivalKey:
    caller_aet: str
    called_aet: str
    caller_ip: str
    study_uid: str
    series_uid: str = ""  # only for a bucket with grouping "series": a send per series


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
    policy: SendPolicy | None = None  # its bucket's rule, read at its first file


@dataclass(frozen=True)
class Where:
    """Where the files of an association go: the arrival's key and folder, and whether the
    bucket makes a job per series (then another series may go to another arrival)."""

    key: ArrivalKey
    folder: Path
    per_series: bool


@dataclass(frozen=True)
class Placed:
    """A file moved into its arrival (``kept``) whose count and series views are still to
    be recorded: that waits until the sender has its answer, which does not depend on it."""

    assoc_id: int
    key: ArrivalKey  # the arrival's (with its series UID for a bucket with a job per series)
    kept: str
    header: RawHeader | None


def place_in(where: Where, src: StrPath, name: str) -> str:
    """Move a received file into its arrival's folder as ``name`` (``scratch.place_file``:
    never over another acknowledged data set); the path it got. A second, different data
    set under a SOP Instance UID of the send is logged (both are kept)."""
    kept = place_file(src, where.folder, name)
    if kept != name:
        log.warning(
            "two different data sets with SOP Instance UID %s from calling AE %r (%s) "
            "in one send: both kept, the later as %s",
            os.path.splitext(name)[0], where.key.caller_aet, where.key.caller_ip, kept,
        )  # fmt: skip
    return f"{where.folder}/{kept}"


# on_ready(folder, key, started, series[, verdict=...]): the arrival is quiet (and
# complete, or waited long enough), make it a job. ``verdict`` is passed only when it
# names missing series.
Ready = Callable[..., None]
# policy_for(called AE title) -> the bucket's rule (None: the box's quiet window only)
PolicyFor = Callable[[str], SendPolicy | None]
# types_of(arrival) -> the ClassifyTypes its series have now (for ``requires``)
TypesOf = Callable[["Arrival"], set[str]]
POLICY_TTL = 2.0  # seconds a bucket's rule is reused before info.json is read again


def _sooner(a: float | None, b: float | None) -> float | None:
    """The shorter of two waits (None: no wait, i.e. until woken)."""
    return b if a is None else a if b is None else min(a, b)


class Grouper:
    def __init__(
        self,
        incoming: Path,
        quiet: float,
        on_ready: Ready,
        retry: float = 30.0,
        policy_for: PolicyFor | None = None,
        types_of: TypesOf | None = None,
    ) -> None:
        self.incoming = incoming
        self.quiet = quiet
        self.on_ready = on_ready
        self.policy_for = policy_for
        self.types_of = types_of
        # Per called AE title: (valid until, rule), so a file costs no info.json read.
        self._policies: dict[str, tuple[float, SendPolicy | None]] = {}
        self._changes = 0  # closed associations: a round that saw none may sleep
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

    # -- called from the receiver's association threads (or its worker processes) --
    def place(
        self, assoc_id: int, key: ArrivalKey, src: StrPath, name: str, header: RawHeader | None
    ) -> Placed:
        """Move a fully received file into its arrival's folder (before it is acknowledged)."""
        series_uid = header.series_uid if header is not None else None
        where = self.open_arrival(assoc_id, key, series_uid, src)
        # The arrival cannot become a job while this association is open, so the rename is
        # safe outside the lock and concurrent associations do not wait on each other.
        return Placed(assoc_id, where.key, place_in(where, src, name), header)

    def record(self, placed: Placed) -> None:
        """A placed file counts in its arrival; ``header`` (the elements the receiver captured)
        goes into the arrival's series views."""
        self.file_added(placed.key, placed.kept, placed.header)

    def open_arrival(
        self, assoc_id: int, key: ArrivalKey, series_uid: str | None, src: StrPath
    ) -> Where:
        """The arrival a file of ``key`` goes to (made at its first file), held open by
        ``assoc_id`` until that association closes. ``series_uid`` (None: not known; read
        from the file at ``src`` if the bucket groups by series) picks the arrival of a
        bucket with one job per series."""
        policy = self._policy(key.called_aet)
        per_series = policy is not None and policy.per_series
        if per_series:
            key = replace(key, series_uid=series_uid or series_uid_of_file(Path(src)))
        with self._cond:
            arrival = self._arrivals.get(key)
            if arrival is None:
                arrival = self._arrivals[key] = self._new_arrival(key)
                arrival.policy = policy
            arrival.open_assocs.add(assoc_id)
            self._assoc_arrivals.setdefault(assoc_id, set()).add(key)
            arrival.last = time.monotonic()
            return Where(key, arrival.folder, per_series)

    def file_added(self, key: ArrivalKey, kept: str, header: RawHeader | None) -> None:
        """A file of an open arrival is in its folder (as ``kept``): count it and add it to
        the arrival's series views."""
        with self._cond:
            arrival = self._arrivals.get(key)
            if arrival is None:  # cannot happen while its association is open
                log.error("file %s came for no open arrival (%s)", kept, key)
                return
            arrival.last = time.monotonic()
            arrival.nfiles += 1
            if header is None:  # a file without its header: the job reads every header
                arrival.series = None
            series = arrival.series
        if header is not None and series is not None:
            try:
                series.add(header, os.path.basename(kept))  # the set has its own lock
            except Exception:  # a view is a summary: it never costs the sender its image
                log.exception("series view of %s not updated", kept)

    def association_lost(self, assoc_id: int) -> None:
        """An association whose files may not all have been announced (its worker process
        died): its arrivals' series views are dropped (the job reads the headers), then it
        is closed."""
        with self._cond:
            for key in self._assoc_arrivals.get(assoc_id, ()):
                arrival = self._arrivals.get(key)
                if arrival:
                    arrival.series = None
        self.association_closed(assoc_id)

    def _policy(self, called_aet: str) -> SendPolicy | None:
        if self.policy_for is None:
            return None
        now = time.monotonic()
        cached = self._policies.get(called_aet)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            policy = self.policy_for(called_aet)
        except Exception:  # an unreadable bucket folder: the box's quiet window
            log.exception("bucket %s: its send rule could not be read", called_aet)
            policy = None
        self._policies[called_aet] = (now + POLICY_TTL, policy)
        return policy

    def association_closed(self, assoc_id: int) -> None:
        with self._cond:
            self._changes += 1
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
                ready, wait, unsure = self._take_ready()
                changes = self._changes
            # The series types of quiet sends that need some are found outside the lock
            # (classification, maybe a read of the files): the receiver never waits on it.
            types = {id(arrival): self._types(arrival) for arrival in unsure}
            with self._cond:
                typed, left = self._take_typed(unsure, types)
                ready += typed
                wait = _sooner(wait, left)
                if not ready:
                    if changes == self._changes:  # else a send closed meanwhile: look again
                        self._cond.wait(wait)
                    continue
            for arrival, verdict in ready:
                if not self._hand_over(
                    arrival.folder, arrival.key, arrival.started, arrival.series, verdict
                ):
                    self._try_again_later(arrival)

    def _try_again_later(self, arrival: Arrival) -> None:
        if arrival.folder.is_dir():  # else a job folder took it: a restart adopts that
            with self._cond:
                self._retries.append((time.monotonic() + self.retry, arrival))

    def _take_ready(
        self,
    ) -> tuple[list[tuple[Arrival, Verdict | None]], float | None, list[Arrival]]:
        """Quiet sends that are ready, how long until the next may be, and the quiet sends
        whose bucket requires series types (decided by ``_take_typed``)."""
        now = time.monotonic()
        ready: list[tuple[Arrival, Verdict | None]] = [
            (arrival, None) for due, arrival in self._retries if due <= now
        ]
        self._retries = [(due, arrival) for due, arrival in self._retries if due > now]
        wait = min((due - now for due, _arrival in self._retries), default=None)
        unsure: list[Arrival] = []
        for key, arrival in list(self._arrivals.items()):
            if arrival.open_assocs:
                continue
            policy = self._policy_of(arrival)
            verdict = decide(policy, now - arrival.last, None)
            if not verdict.ready and not verdict.missing:  # not quiet yet
                wait = verdict.left if wait is None else min(wait, verdict.left)
            elif policy.requires:
                unsure.append(arrival)
            else:
                ready.append((self._arrivals.pop(key), verdict))
        return ready, wait, unsure

    def _take_typed(
        self, unsure: list[Arrival], types: dict[int, set[str]]
    ) -> tuple[list[tuple[Arrival, Verdict | None]], float | None]:
        """completeness.decide with the types; a send that changed meanwhile is left for
        the next round (a new file made it not quiet: decide says so)."""
        now = time.monotonic()
        ready: list[tuple[Arrival, Verdict | None]] = []
        wait: float | None = None
        for arrival in unsure:
            if self._arrivals.get(arrival.key) is not arrival or arrival.open_assocs:
                continue
            verdict = decide(self._policy_of(arrival), now - arrival.last, types[id(arrival)])
            if verdict.ready:
                ready.append((self._arrivals.pop(arrival.key), verdict))
            else:
                wait = verdict.left if wait is None else min(wait, verdict.left)
        return ready, wait

    def _policy_of(self, arrival: Arrival) -> SendPolicy:
        policy = arrival.policy or SendPolicy()
        if policy.quiet is None:
            policy = replace(policy, quiet=self.quiet)  # the box's window, as it is now
        return policy

    def _types(self, arrival: Arrival) -> set[str]:
        try:
            return self.types_of(arrival) if self.types_of is not None else set()
        except Exception:  # classification must never lose a send: decide without types
            log.exception("arrival %s: series types not known", arrival.folder.name)
            return set()

    def _hand_over(
        self,
        folder: Path,
        key: ArrivalKey,
        started: float,
        series: SeriesSet | None = None,
        verdict: Verdict | None = None,
    ) -> bool:
        extra: dict[str, Any] = {"verdict": verdict} if verdict and verdict.missing else {}
        try:
            self.on_ready(folder, key, started, series, **extra)
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
        """Sends a previous run had not yet turned into jobs are taken up again, each as
        quiet since its last file arrived: the loop's rule (completeness.decide) makes them
        jobs, so a bucket's ``requires`` wait goes on where it was instead of being skipped
        or starting again from zero, and a per-series send stays its series' own."""
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
            arrival = self._recovered(folder, key, started)
            with self._cond:
                if key in self._arrivals:  # two sends of one key (one had failed to hand
                    self._retries.append((0.0, arrival))  # over): the later goes as it is
                else:
                    self._arrivals[key] = arrival

    def _recovered(self, folder: Path, key: ArrivalKey, started: float) -> Arrival:
        """An arrival for a folder a previous run left, quiet since its last file. Its
        views are read from the files once if its rule needs the series types (else the
        job reads them, as for any send whose headers the receiver did not keep)."""
        files = [entry for entry in os.scandir(folder) if entry.is_file()]
        last_file = max([folder.stat().st_mtime, *(e.stat().st_mtime for e in files)])
        policy = self._policy(key.called_aet)
        series: SeriesSet | None = None
        if policy is not None and policy.requires:
            try:
                series = collect_files(folder)
            except Exception:  # the views are a summary: types_of reads the files itself
                log.exception("arrival %s: series views not read", folder.name)
        return Arrival(
            key=key,
            folder=folder,
            started=started,
            last=time.monotonic() - max(0.0, time.time() - last_file),
            nfiles=len(files),
            series=series,
            policy=policy,
        )
