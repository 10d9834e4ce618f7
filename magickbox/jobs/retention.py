"""Retention and the scrub: what the box removes by itself, in one periodic sweep.

Every ``sweep_seconds`` the :class:`Sweeper` removes, in this order:

1. **leftovers** untouched for :data:`STALE_SECONDS`: upload bodies and their unpacked
   folders (``scratch/.uploads``), data sets cut off on the wire (``scratch/.partial``),
   arrival folders without their record and records without their folder
   (``scratch/.incoming``), and half-made job folders without a job (``scratch/tmp.*``
   without INPUT; a complete one is adopted at the next start);
2. **expired jobs**: finished jobs that ended more than ``keep_days`` ago (failed ones:
   ``keep_failed_days``); a bucket's info.json may say its own;
3. **the scrub**: above ``scrub_high`` percent of the scratch filesystem in use, the
   oldest finished jobs and the archived studies no job refers to, oldest first, until
   less than ``scrub_low`` percent is in use. A job's INPUT shares its files with the
   archive, so removing the last job of a study removes its archive folder with it.

Never removed: a job that is not finished, a job whose routing is not over (sends to come,
or not yet evaluated: the Router says), an arrival that is still a send to come, and the
audit trail (the routing log, magickbox.log). Each removal is logged with what it freed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from magickbox.buckets.registry import Bucket
from magickbox.config import Settings
from magickbox.disk import DiskGuard
from magickbox.events import EventBus, Scrubbed
from magickbox.jobfolder import JobFolder
from magickbox.jobs import scratch
from magickbox.jobs.db import Job, State
from magickbox.jobs.store import JobStore
from magickbox.names import SCRATCHDIR_RE, BadName, check_study_uid, is_study_key, study_key

log = logging.getLogger(__name__)

STALE_SECONDS = 3600.0  # a leftover untouched this long belongs to no running work
DAY = 86400.0


@dataclass(frozen=True)
class Removal:
    """One thing the sweep removed: what, its name, the bytes it freed, and why."""

    kind: str  # "job", "study" (an archive folder) or "leftover"
    name: str
    freed: int
    reason: str


class Sweeper:
    """Runs :meth:`sweep` every ``sweep_seconds`` on its own thread."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        guard: DiskGuard,
        unsettled: Callable[[], set[str]],
        buckets: Callable[[], dict[str, Bucket]],
        events: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.events = events  # each removal is a Scrubbed event (the scrubbed bytes metric)
        self.store = store
        self.guard = guard
        self.unsettled = unsettled  # jobs whose routing is not over (Router.unsettled_jobs)
        self.buckets = buckets
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one sweep at a time (the thread's, or a caller's)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.sweep_seconds):
            try:
                self.sweep()
            except Exception:  # the next sweep tries again; the box carries on
                log.exception("the sweep failed")

    def sweep(self) -> list[Removal]:
        """One pass: leftovers, expired jobs, then the scrub (see the module docstring)."""
        with self._lock:
            removed = self.remove_leftovers()
            removed += self.expire()
            removed += self.scrub()
        if self.events is not None:
            for removal in removed:
                self.events.publish(Scrubbed(removal.name, removal.freed))
        return removed

    # -- 1. leftovers --------------------------------------------------------------
    def remove_leftovers(self, now: float | None = None) -> list[Removal]:
        cutoff = (now or time.time()) - STALE_SECONDS
        removed = []
        for path in self._leftovers():
            if _newest_mtime(path) < cutoff:
                removed.append(self._remove_leftover(path))
        return removed

    def _leftovers(self) -> Iterator[Path]:
        s = self.settings
        for folder in (s.uploads, s.partial):
            yield from _entries(folder)
        # An arrival is a folder and its record <id>.json: a pair stays (a restart makes the
        # job of it); a lone half is a leftover.
        yield from (entry for entry in _entries(s.incoming) if not _paired(entry))
        known = set(self.store.scratchdirs())
        for entry in _entries(s.scratch):
            # A complete job folder without its row (a full disk failed the insert) holds
            # acknowledged images: the next start adopts it. Only half-made ones go.
            orphan = SCRATCHDIR_RE.fullmatch(entry.name) and entry.name not in known
            if orphan and not JobFolder(entry).is_complete():
                yield entry

    def _remove_leftover(self, path: Path) -> Removal:
        if path.is_dir() and not path.is_symlink():
            freed = scratch.freed_by(path)
            scratch.remove_tree(path)
        else:
            freed = _size(path)
            path.unlink(missing_ok=True)
        where = path.relative_to(self.settings.scratch)
        log.info("sweep: removed %s, left behind and untouched for an hour: freed %d bytes",
                 where, freed)  # fmt: skip
        return Removal("leftover", str(where), freed, "stale")

    # -- 2. retention --------------------------------------------------------------
    def expire(self, now: float | None = None) -> list[Removal]:
        now = now or time.time()
        buckets = self.buckets()
        shortest = self._shortest_keep(buckets.values())
        if not shortest:
            return []  # everything is kept for ever: nothing to look at
        busy = self.unsettled()
        removed = []
        for job in self.store.finished_jobs(before=now - shortest * DAY):
            days = self._keep_days(job, buckets.get(job.bucket))
            ended = job.finished_at or job.received_at
            if days > 0 and ended < now - days * DAY and job.scratchdir not in busy:
                reason = f"kept {days:g} days after it ended ({job.state})"
                removed += self.remove_job(job, reason, with_study=False)
        return removed

    def _shortest_keep(self, buckets: Iterable[Bucket]) -> float:
        """The fewest days any job is kept (0: all are kept for ever)."""
        s = self.settings
        days = [s.keep_days, s.keep_failed_days]
        for bucket in buckets:
            days += [bucket.keep_days(False, 0), bucket.keep_days(True, 0)]
        return min((d for d in days if d > 0), default=0.0)

    def _keep_days(self, job: Job, bucket: Bucket | None) -> float:
        failed = job.state == State.FAILED
        box_days = self.settings.keep_days
        if failed and self.settings.keep_failed_days:
            box_days = self.settings.keep_failed_days
        if bucket is None:
            return box_days
        days = bucket.keep_days(False, box_days)
        return bucket.keep_days(True, days) if failed else days

    # -- 3. the scrub --------------------------------------------------------------
    def scrub(self) -> list[Removal]:
        high, low = self.settings.scrub_high, self.settings.scrub_low
        start = self.guard.status().used_percent
        if not high or start < high:
            return []
        log.warning("scrub: %.1f%% of %s in use, above scrub_high %g%%: freeing down to %g%%",
                    start, self.settings.scratch, high, low)  # fmt: skip
        removed: list[Removal] = []
        for _when, job, key in self._scrub_candidates():
            if self.guard.status().used_percent < low:
                break
            if job is not None:
                removed += self.remove_job(job, "scrub: disk above scrub_high", with_study=True)
            else:
                removed += self._remove_study(key, "no job refers to it")
        end = self.guard.status().used_percent
        if end >= low:
            log.warning("scrub: still %.1f%% in use: nothing more may be removed (jobs not "
                        "finished, sends still to come)", end)  # fmt: skip
        return removed

    def _scrub_candidates(self) -> list[tuple[float, Job | None, str]]:
        """(when, job, "") for finished jobs whose routing is over and (when, None, key)
        for archived studies no job refers to, the oldest first (a job by its end, a study
        by its folder's last change)."""
        busy = self.unsettled()
        dated: list[tuple[float, Job | None, str]] = [
            (job.finished_at or job.received_at, job, "")
            for job in self.store.finished_jobs()
            if job.scratchdir not in busy
        ]
        in_use = self.store.study_keys_in_use()
        for entry in _entries(self.settings.archive):
            if entry.is_dir() and is_study_key(entry.name) and entry.name not in in_use:
                dated.append((_mtime(entry), None, entry.name))
        dated.sort(key=lambda item: item[0])
        return dated

    # -- removing ------------------------------------------------------------------
    def remove_job(self, job: Job, reason: str, with_study: bool) -> list[Removal]:
        """Remove a finished job (never one queued again meanwhile), logged with what it
        freed; ``with_study``: its archive folder too when no other job refers to it."""
        freed = self.store.delete(job.scratchdir, only_finished=True)
        if freed is None:
            return []  # gone meanwhile (deleted by hand) or queued again (a retry)
        log.info("%s: removed job %s (bucket %s, %s, study %s): freed %d bytes",
                 reason, job.scratchdir, job.bucket, job.state, job.study_uid or "-",
                 freed)  # fmt: skip
        removed = [Removal("job", job.scratchdir, freed, reason)]
        key = _key_of(job.study_uid)
        if with_study and key:
            removed += self._remove_study(key, f"its last job {job.scratchdir} went")
        return removed

    def _remove_study(self, key: str, reason: str) -> list[Removal]:
        if self.store.study_key_in_use(key):
            return []  # a job refers to it (a new send of the study, just now)
        freed = self.store.delete_archive_folder(key)
        if freed is None:
            return []
        log.info("scrub: removed archived study %s (%s): freed %d bytes", key, reason, freed)
        return [Removal("study", key, freed, f"scrub: {reason}")]


def _key_of(study_uid: str) -> str:
    with contextlib.suppress(BadName):
        return study_key(check_study_uid(study_uid)) if study_uid else ""
    return ""


def _paired(entry: Path) -> bool:
    if entry.suffix == ".json":
        return entry.with_suffix("").is_dir()
    return entry.with_name(f"{entry.name}.json").exists()


def _entries(folder: Path) -> list[Path]:
    try:
        return [Path(entry.path) for entry in os.scandir(folder)]
    except FileNotFoundError:
        return []


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return time.time()  # gone or unreadable: never "old"


def _newest_mtime(path: Path) -> float:
    """The latest change in ``path`` or anything under it (a folder being written is new)."""
    newest = _mtime(path)
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirs, names in os.walk(path):
            for name in dirs + names:
                newest = max(newest, _mtime(Path(dirpath) / name))
    return newest


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0
