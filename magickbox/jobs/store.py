"""Core job functions: make a job from a folder of received files, find, list, delete.

The web API, the legacy PHP endpoints and the CLIs all call these; none of them touch
the database or the scratch folder by themselves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, Select, delete, func, literal, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from magickbox.config import Settings
from magickbox.events import EventBus, JobDeleted, JobFinished, JobQueued
from magickbox.jobfolder import JobFolder
from magickbox.jobs import scratch, timing
from magickbox.jobs.db import FINISHED, Job, JobMeasures, State
from magickbox.jobs.measures import MeasuresStore
from magickbox.names import (
    SCRATCHDIR_RE,
    BadName,
    check_scratchdir,
    check_study_uid,
    is_study_key,
    is_uid,
    study_key,
)
from magickbox.study.models import SeriesRow
from magickbox.study.series import SeriesSet, collect_files
from magickbox.study.views import ViewStore, identity, series_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewJob:
    """The facts of a send (or upload) that is about to become a job."""

    bucket: str
    caller_aet: str
    caller_ip: str
    study_uid: str = ""
    source: str = "dicom"
    jobname: str = ""
    description: str = ""
    arguments: tuple[str, ...] = ()


@dataclass(frozen=True)
class Start:
    """How a new job starts: held ``hold`` seconds first (merge_seconds), with a ``note``
    in its log, or failed at once with ``fail`` as the reason (a send that lacks series)."""

    hold: float = 0.0
    note: str = ""
    fail: str = ""


@dataclass(frozen=True)
class JobFilter:
    bucket: str | None = None
    caller_aet: str | None = None
    caller_ip: str | None = None
    study_uid: str | None = None
    state: str | None = None
    since: float | None = None
    until: float | None = None  # received before this (epoch seconds), e.g. a day's end
    q: str | None = None  # substring of any text field, case-insensitive
    patient_id: str | None = None
    accession_number: str | None = None
    study_date: str | None = None  # YYYYMMDD, or a range YYYYMMDD-YYYYMMDD
    modality: str | None = None  # one of the job's modalities
    initial: str | None = None  # first letter of the sender's AE title (the page's A–Z)


# What the jobs list may be sorted by (the API's ``sort=``): a field name of the job's view
# and the column (or expression) the database sorts; ties go by the job's id.
SORTS: dict[str, Any] = {
    "received_at": Job.received_at,
    "state": Job.state,
    "scratchdir": Job.scratchdir,
    "bucket": Job.bucket,
    "caller_aet": Job.caller_aet,
    "caller_ip": Job.caller_ip,
    "jobname": Job.jobname,
    "patient_id": Job.patient_id,
    "patient_name": Job.patient_name,
    "accession_number": Job.accession_number,
    "study_date": Job.study_date,
    "study_uid": Job.study_uid,
    "log_size": Job.log_size,
    "started_at": Job.started_at,
    "finished_at": Job.finished_at,
    # a job still waiting or running has no duration yet: NULL, sorted last either way
    "processing_seconds": Job.finished_at - func.coalesce(Job.started_at, Job.received_at),
}


class JobStore:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        events: EventBus | None = None,
        views: ViewStore | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.events = events or EventBus()  # JobQueued is published here
        self.measures = MeasuresStore(sessions)
        self.timing = timing.Timing(sessions)
        self.views = views  # None: no series views are kept (settings.series_views off)

    # -- making jobs ---------------------------------------------------------------
    def create_job(
        self,
        input_dir: Path,
        new: NewJob,
        received_at: float | None = None,
        series: SeriesSet | None = None,
        start: Start | None = None,
    ) -> Job:
        """Turn ``input_dir`` (moved, not copied) into the INPUT of a new queued job.

        ``series``: the views the receiver collected while the files arrived; without
        them (an upload, an arrival a crash left) the INPUT's headers are read once.
        ``start``: how it starts (held for a while, a note, or failed without a run).
        """
        received_at = received_at or time.time()
        facts = {**new.__dict__, "arguments": list(new.arguments), "received_at": received_at}
        folder = JobFolder.create(
            self.settings.scratch, input_dir, facts, _info_json(new, received_at)
        )
        return self._register(folder.path, new, received_at, series, start or Start())

    def _series_of(
        self, job_dir: Path, series: SeriesSet | None, study_uid: str
    ) -> tuple[list[SeriesRow], dict[str, Any]]:
        """The job's series rows and identity columns (none when views are off)."""
        if self.views is None:
            return [], {}
        if series is None:
            series = collect_files(JobFolder(job_dir).input)
        rows = self.views.rows(job_dir.name, series)
        return rows, identity((view.summary() for view, _ in series.items()), study_uid)

    def _register(
        self,
        job_dir: Path,
        new: NewJob,
        received_at: float,
        series: SeriesSet | None = None,
        start: Start | None = None,
    ) -> Job:
        """Record the job (received) with its series, archive its files, then queue it."""
        rows, facts = self._series_of(job_dir, series, new.study_uid)
        job = Job(
            scratchdir=job_dir.name,
            bucket=new.bucket,
            caller_aet=new.caller_aet,
            caller_ip=new.caller_ip,
            study_uid=new.study_uid,
            source=new.source,
            jobname=new.jobname,
            description=new.description,
            arguments=json.dumps(list(new.arguments)),
            received_text=scratch.received_stamp(received_at),
            nfiles=JobFolder(job_dir).count_input(),
            state=State.RECEIVED,
            received_at=received_at,
            **facts,
        )
        with self.sessions.begin() as s:
            s.add(job)
            s.add_all(rows)
        if self.views is not None:
            self.views.write_raw(r.study_uid for r in rows if r.study_uid)
        self.archive(job)
        log.info("job %s: %d files for bucket %s from %s@%s", job.scratchdir, job.nfiles,
                 new.bucket, new.caller_aet, new.caller_ip)  # fmt: skip
        return self._first_state(job, start or Start())

    def _first_state(self, job: Job, start: Start) -> Job:
        """received -> queued (after its hold, if any), or -> failed without a run."""
        folder = JobFolder(self.job_dir(job))
        if start.note:
            folder.log_line(start.note)
        if start.fail:
            folder.log_line(f"not run: {start.fail}")
            self.fail(job.scratchdir, start.fail)
            job.state, job.reason = State.FAILED, start.fail
            log.warning("job %s failed: %s", job.scratchdir, start.fail)
            self.events.publish(JobFinished(job.scratchdir, job.bucket, State.FAILED))
            return job
        # A held job is queued at the end of its hold: claim_next takes none before.
        job.state, job.queued_at = State.QUEUED, time.time() + start.hold
        self._update(job.scratchdir, state=job.state, queued_at=job.queued_at)
        self.events.publish(JobQueued(job.scratchdir, job.bucket))
        return job

    # -- a later send of a study joins its held job (merge_seconds) -----------------
    def held_job(self, bucket: str, study_uid: str) -> Job | None:
        """The newest job of ``bucket`` for ``study_uid`` still in its hold (not started)."""
        if not study_uid:
            return None
        query = (
            select(Job)
            .where(Job.bucket == bucket, Job.study_uid == study_uid)
            .where(Job.state == State.QUEUED, Job.queued_at > time.time())
            .order_by(Job.id.desc())
            .limit(1)
        )
        with self.sessions() as s:
            return s.scalars(query).first()

    def merge_send(self, held: Job, folder: Path, series: SeriesSet | None, what: str) -> bool:
        """Move a later send's files (``folder``) into a held job's INPUT, with its series
        rows, identity, archive and views/raw. False (nothing moved) when the job has
        started meanwhile: the send then becomes a job of its own."""
        if not self._take_back(held.scratchdir):
            return False
        try:
            job_dir = self.job_dir(held)
            if series is None and self.views is not None:
                series = collect_files(folder)
            renamed = scratch.move_files(folder, JobFolder(job_dir).input)
            self._merge_rows(held, series, renamed)
            self.archive(held)
            JobFolder(job_dir).log_line(f"a later send ({what}) joined this job (merge_seconds)")
            log.info("job %s: a later send (%s) joined it", held.scratchdir, what)
        finally:
            self._update(held.scratchdir, state=State.QUEUED)
            self.events.publish(JobQueued(held.scratchdir, held.bucket))
        return True

    def _take_back(self, scratchdir: str) -> bool:
        """queued -> received in one statement, so claim_next cannot start it meanwhile."""
        query = (
            update(Job)
            .where(Job.scratchdir == scratchdir, Job.state == State.QUEUED)
            .where(Job.queued_at > time.time())
            .values(state=State.RECEIVED)
        )
        with self.sessions.begin() as s:
            result: CursorResult[Any] = s.execute(query)  # type: ignore[assignment]
            return bool(result.rowcount)

    def _merge_rows(self, job: Job, series: SeriesSet | None, renamed: dict[str, str]) -> None:
        nfiles = JobFolder(self.job_dir(job)).count_input()
        with self.sessions.begin() as s:
            facts: dict[str, Any] = {"nfiles": nfiles}
            if self.views is not None and series is not None:
                rows = self.views.merge_rows(s, job.scratchdir, series, renamed)
                facts.update(identity((json.loads(r.tags) for r in rows), job.study_uid))
            found = s.scalars(select(Job).where(Job.scratchdir == job.scratchdir)).first()
            for key, value in facts.items():
                setattr(found, key, value)
        if self.views is not None and job.study_uid:
            self.views.write_raw([job.study_uid])

    def next_release(self) -> float | None:
        """When the next held job may start (epoch seconds), None when none is held."""
        query = select(func.min(Job.queued_at)).where(
            Job.state == State.QUEUED, Job.queued_at > time.time()
        )
        with self.sessions() as s:
            return s.scalar(query)

    def study_parts(self, job: Job) -> list[str]:
        """The other jobs of the same bucket made of the same study (a send cut in parts),
        oldest first."""
        if not job.study_uid:
            return []
        query = (
            select(Job.scratchdir)
            .where(Job.bucket == job.bucket, Job.study_uid == job.study_uid)
            .where(Job.scratchdir != job.scratchdir)
            .order_by(Job.id)
        )
        with self.sessions() as s:
            return list(s.scalars(query))

    def write_series_manifest(self, job: Job) -> None:
        """The job's series.json ($MB_SERIES_JSON), from its series rows, before a run."""
        if self.views is None:
            return
        JobFolder(self.job_dir(job)).write_series(
            series_manifest(self.views.job_series(job.scratchdir))
        )

    def archive(self, job: Job) -> None:
        """Hard-link the job's INPUT into scratch/archive/<study key>/ (repeatable)."""
        if not job.study_uid:
            return
        try:
            folder = self.settings.archive / study_key(check_study_uid(job.study_uid))
            scratch.link_into_archive(JobFolder(self.job_dir(job)).input, folder)
        except (OSError, BadName) as exc:
            log.warning("job %s: not archived: %s", job.scratchdir, exc)

    # -- reading -------------------------------------------------------------------
    def get(self, scratchdir: str) -> Job | None:
        check_scratchdir(scratchdir)
        with self.sessions() as s:
            return s.scalars(select(Job).where(Job.scratchdir == scratchdir)).first()

    def job_dir(self, job: Job) -> Path:
        return self.settings.scratch / check_scratchdir(job.scratchdir)

    def find(
        self,
        flt: JobFilter = JobFilter(),
        limit: int | None = None,
        offset: int = 0,
        sort: str | None = None,
        descending: bool = True,
    ) -> tuple[list[Job], int]:
        """A page of the jobs ``flt`` matches, sorted by ``sort`` (a key of :data:`SORTS`;
        None: newest first), and how many match in all. Both are one SQL query each."""
        query = _filtered(flt)
        with self.sessions() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            ordered = query.order_by(*_order(sort, descending))
            rows = s.scalars(ordered.offset(offset).limit(limit)).all()
        return list(rows), total

    def matching_names(self, flt: JobFilter, most: int) -> list[str]:
        """The scratchdirs of up to ``most`` jobs ``flt`` matches, newest first (what a bulk
        action over "all matching the filter" acts on)."""
        query = _filtered(flt).with_only_columns(Job.scratchdir).order_by(Job.id.desc())
        with self.sessions() as s:
            return list(s.scalars(query.limit(most)).all())

    def scratch_rows(self) -> list[dict[str, Any]]:
        """Every job as plain values, newest first, in one query (getScratch serves 10,000s).

        A Core query on a plain connection: ORM rows cost twice as much at that count.
        ``measures`` is the job's measures JSON text, or None.
        """
        cols = [Job.scratchdir, Job.bucket, Job.caller_aet, Job.caller_ip, Job.received_text,
                Job.study_uid, Job.state, Job.started_at, Job.finished_at, Job.log_size,
                Job.jobname, Job.received_at, Job.patient_id, Job.patient_name,
                Job.accession_number, Job.study_date, Job.study_description, Job.modalities,
                Job.series_count]  # fmt: skip
        names = [c.key for c in cols] + ["measures"]
        query = select(*cols, JobMeasures.data).outerjoin(
            JobMeasures, JobMeasures.scratchdir == Job.scratchdir
        )
        with self.sessions() as s:
            result = s.connection().execute(query.order_by(Job.id.desc()))
            return [dict(zip(names, row, strict=True)) for row in result]

    def queue_counts(self) -> dict[str, dict[str, int]]:
        """{bucket: {state: count}} for the states that are not finished."""
        query = (
            select(Job.bucket, Job.state, func.count())
            .where(Job.state.in_([State.QUEUED, State.RUNNING]))
            .group_by(Job.bucket, Job.state)
        )
        counts: dict[str, dict[str, int]] = {}
        with self.sessions() as s:
            for bucket, state, n in s.execute(query):
                counts.setdefault(bucket, {})[state] = n
        return counts

    def bucket_queue(
        self, bucket: str
    ) -> tuple[list[tuple[str, float]], list[tuple[str, float | None]]]:
        """The bucket's running jobs (scratchdir, started_at) and its queued ones
        (scratchdir, queued_at: not before, a held job's is ahead) in the order
        claim_next takes them."""
        query = (
            select(Job.scratchdir, Job.state, Job.started_at, Job.queued_at)
            .where(Job.bucket == bucket, Job.state.in_([State.QUEUED, State.RUNNING]))
            .order_by(Job.queued_at, Job.id)
        )
        running: list[tuple[str, float]] = []
        queued: list[tuple[str, float | None]] = []
        with self.sessions() as s:
            for scratchdir, state, started, queued_at in s.connection().execute(query):
                if state == State.RUNNING:
                    running.append((scratchdir, started or time.time()))
                else:
                    queued.append((scratchdir, queued_at))
        return running, queued

    def state_counts(self) -> dict[str, dict[str, int]]:
        """{bucket: {state: count}} over every job (the metrics' jobs by state)."""
        query = select(Job.bucket, Job.state, func.count()).group_by(Job.bucket, Job.state)
        counts: dict[str, dict[str, int]] = {}
        with self.sessions() as s:
            for bucket, state, n in s.execute(query):
                counts.setdefault(bucket, {})[state] = n
        return counts

    def received_times(self, since: float) -> list[float]:
        """When each job since ``since`` was received (the calendar counts them per local day)."""
        with self.sessions() as s:
            query = select(Job.received_at).where(Job.received_at >= since)
            return [row[0] for row in s.connection().execute(query)]

    def mean_processing(self) -> dict[str, float]:
        """{bucket: mean seconds from start to end} over the jobs that finished well."""
        query = (
            select(Job.bucket, func.avg(Job.finished_at - Job.started_at))
            .where(Job.state == State.DONE, Job.started_at.is_not(None))
            .group_by(Job.bucket)
        )
        with self.sessions() as s:
            return {bucket: float(avg) for bucket, avg in s.execute(query) if avg is not None}

    def bucket_stats(self, since: float) -> dict[str, dict[str, Any]]:
        """Per bucket: done and failed jobs, mean run of each, mean wait in the queue, and
        the jobs that finished since ``since`` (for a rate). One query, grouped in SQL."""
        run = Job.finished_at - Job.started_at
        finished = Job.state.in_([State.DONE, State.FAILED])
        query = (
            select(
                Job.bucket,
                func.count().filter(Job.state == State.DONE),
                func.count().filter(Job.state == State.FAILED),
                func.avg(run).filter(Job.state == State.DONE),
                func.avg(run).filter(Job.state == State.FAILED),
                func.avg(Job.started_at - func.coalesce(Job.queued_at, Job.received_at)),
                func.count().filter(finished, Job.finished_at >= since),
            )
            .where(finished)
            .group_by(Job.bucket)
        )
        with self.sessions() as s:
            rows = s.execute(query).all()
        return {row[0]: _stats(*row[1:]) for row in rows}

    def log_size(self, job: Job) -> int:
        """Bytes of the job's processing log: the row's once finished, else the file's now."""
        if job.state in FINISHED and job.finished_at is not None:
            return job.log_size
        return JobFolder(self.job_dir(job)).log_size()

    def study_jobs(self, study_uid: str) -> Sequence[Job]:
        with self.sessions() as s:
            return s.scalars(select(Job).where(Job.study_uid == study_uid)).all()

    # -- changing: the named transitions of a job's state ----------------------------
    def queue_received(self, job: Job) -> None:
        """received -> queued, for a job whose queueing a crash interrupted (archived again)."""
        self.archive(job)
        self._update(job.scratchdir, state=State.QUEUED, queued_at=time.time())
        self.events.publish(JobQueued(job.scratchdir, job.bucket))

    def finish(self, scratchdir: str, outcome: dict[str, Any]) -> None:
        """running -> done or failed, with what the run left (see ``jobs.queue.outcome``).

        The bucket's measures.json is kept (a bad one is only a line in the log), and a run
        that ended well adds its processing time to the bucket's running figures.
        """
        folder = JobFolder(self.settings.scratch / check_scratchdir(scratchdir))
        try:
            note = self.measures.take(scratchdir, folder)
        except Exception as exc:  # e.g. a busy database: the job's end must still be recorded
            log.exception("job %s: measures not kept", scratchdir)
            note = f"measures.json could not be kept: {exc}"
        if note:
            folder.log_line(note)
            outcome = {**outcome, "log_size": folder.log_size()}
        with self.sessions.begin() as s:
            job = s.scalars(select(Job).where(Job.scratchdir == scratchdir)).first()
            if job is None:
                return
            for key, value in outcome.items():
                setattr(job, key, value)
            if job.state == State.DONE and job.started_at and job.finished_at:
                timing.add_sample(s, job.bucket, job.finished_at - job.started_at, job.finished_at)

    def fail(self, scratchdir: str, reason: str) -> None:
        """-> failed without a run's outcome (no bucket, could not start, interrupted)."""
        job = self.get(scratchdir)
        size = JobFolder(self.job_dir(job)).log_size() if job else 0
        self._update(
            scratchdir, state=State.FAILED, finished_at=time.time(), reason=reason, log_size=size
        )

    def requeue_interrupted(self, job: Job, note: str) -> None:
        """running -> queued after a restart: a fresh OUTPUT, the attempt already counted."""
        self.reset_for_run(job, note)
        self._update(job.scratchdir, state=State.QUEUED, started_at=None)
        self.events.publish(JobQueued(job.scratchdir, job.bucket))

    def requeue_stopped(self, job: Job, note: str) -> None:
        """running -> queued because the box was stopped: not a crash, so no attempt is spent.

        claim_next counted this run as an attempt; a stop takes it back, so any number of
        stops during one long job never fails it.
        """
        self.reset_for_run(job, note)
        self._update(
            job.scratchdir,
            state=State.QUEUED,
            started_at=None,
            attempts=max(0, job.attempts - 1),
        )
        self.events.publish(JobQueued(job.scratchdir, job.bucket))

    def _update(self, scratchdir: str, **values: Any) -> None:
        with self.sessions.begin() as s:
            job = s.scalars(select(Job).where(Job.scratchdir == scratchdir)).first()
            if job is not None:
                for key, value in values.items():
                    setattr(job, key, value)

    def claim_next(self, bucket: str) -> Job | None:
        """Mark the oldest queued job of ``bucket`` running and return it (first in, first out)."""
        with self.sessions.begin() as s:
            job = s.scalars(
                select(Job)
                .where(Job.bucket == bucket, Job.state == State.QUEUED)
                .where(or_(Job.queued_at.is_(None), Job.queued_at <= time.time()))  # held
                .order_by(Job.queued_at, Job.id)
                .limit(1)
            ).first()
            if job is None:
                return None
            job.state, job.started_at, job.finished_at = State.RUNNING, time.time(), None
            job.attempts += 1
            return job

    def requeue(self, scratchdir: str, note: str) -> bool:
        """Put a finished job back in the queue with a fresh OUTPUT (the retry of the API)."""
        job = self.get(scratchdir)
        if job is None or job.state not in FINISHED:
            return False
        self.reset_for_run(job, note)
        self._update(
            scratchdir,
            state=State.QUEUED,
            queued_at=time.time(),
            finished_at=None,
            exit_code=None,
            reason="",
            success="",
            attempts=0,
        )
        self.events.publish(JobQueued(job.scratchdir, job.bucket))
        return True

    def reset_for_run(self, job: Job, note: str) -> None:
        """A fresh OUTPUT, and the last run's measures gone with it."""
        JobFolder(self.job_dir(job)).fresh_output(note)
        with self.sessions.begin() as s:
            self.measures.forget(s, job.scratchdir)

    def delete(self, scratchdir: str, only_finished: bool = False) -> int | None:
        """Remove a job's row and folder: the bytes that freed, None when there was none
        (or, with ``only_finished``, when it is not finished: a retry may have just queued
        it again, and the row's state decides in the same statement)."""
        job = self.get(scratchdir)
        if job is None:
            return None
        query = delete(Job).where(Job.scratchdir == scratchdir)
        if only_finished:
            query = query.where(Job.state.in_(FINISHED))
        with self.sessions.begin() as s:
            result: CursorResult[Any] = s.execute(query)  # type: ignore[assignment]
            if result.rowcount:
                self.measures.forget(s, scratchdir)
                s.execute(delete(SeriesRow).where(SeriesRow.scratchdir == scratchdir))
        if not result.rowcount:
            return None
        folder = self.job_dir(job)
        freed = scratch.freed_by(folder)
        scratch.remove_tree(folder)
        self.events.publish(JobDeleted(scratchdir))
        return freed

    def delete_archive_study(self, study_uid: str) -> int | None:
        """Remove a study's archive folder: the bytes that freed, None when there was none."""
        freed = self.delete_archive_folder(study_key(check_study_uid(study_uid)))
        if self.views is not None:
            self.views.study_deleted(study_uid)
        return freed

    def delete_archive_folder(self, key: str) -> int | None:
        folder = self.settings.archive / key
        if not is_study_key(key) or not folder.is_dir():
            return None
        freed = scratch.freed_by(folder)
        scratch.remove_tree(folder)
        return freed

    def finished_jobs(self, before: float | None = None) -> Sequence[Job]:
        """Done or failed jobs (that ended before ``before``), the earliest ended first:
        what retention and the scrub look at."""
        query = select(Job).where(Job.state.in_(FINISHED))
        if before is not None:
            query = query.where(Job.finished_at < before)
        with self.sessions() as s:
            return s.scalars(query.order_by(Job.finished_at, Job.id)).all()

    def study_keys_in_use(self) -> set[str]:
        """Archive folder names that some job refers to."""
        with self.sessions() as s:
            uids = s.scalars(select(Job.study_uid).distinct()).all()
        keys = set()
        for uid in uids:
            with contextlib.suppress(BadName):
                keys.add(study_key(check_study_uid(uid)))
        return keys

    def study_key_in_use(self, key: str) -> bool:
        """Whether some job refers to the archive folder ``key`` (asked just before it goes:
        a send of the study may have made a job since)."""
        if not is_uid(key):  # a hashed key: the UIDs must be hashed to compare
            return key in self.study_keys_in_use()
        with self.sessions() as s:
            return s.scalar(select(Job.id).where(Job.study_uid == key).limit(1)) is not None

    # -- after a restart -----------------------------------------------------------
    def adopt_orphans(self) -> int:
        """Job folders that a crash left without a row get one; half-made ones are removed."""
        known = set(self.scratchdirs())
        adopted = 0
        for entry in os.scandir(self.settings.scratch):
            if not SCRATCHDIR_RE.fullmatch(entry.name) or entry.name in known:
                continue
            job_dir = Path(entry.path)
            try:
                facts = JobFolder(job_dir).read_facts()
                received_at = float(facts.pop("received_at"))
                facts["arguments"] = tuple(facts.get("arguments", ()))
                new = NewJob(**facts)
            except (OSError, ValueError, TypeError, KeyError):
                new = None
            if new is None or not JobFolder(job_dir).is_complete():
                log.warning("removing half-made job folder %s", entry.name)
                scratch.remove_tree(job_dir)
                continue
            self._register(job_dir, new, received_at)
            adopted += 1
        return adopted

    def scratchdirs(self) -> list[str]:
        """The folder names of every job."""
        with self.sessions() as s:
            return list(s.scalars(select(Job.scratchdir)))

    def running_jobs(self) -> Sequence[Job]:
        with self.sessions() as s:
            return s.scalars(select(Job).where(Job.state == State.RUNNING)).all()

    def received_jobs(self) -> Sequence[Job]:
        with self.sessions() as s:
            return s.scalars(select(Job).where(Job.state == State.RECEIVED)).all()


def _filtered(flt: JobFilter) -> Select[Any]:
    """The jobs ``flt`` matches, as a query to count, sort and page."""
    query = select(Job)
    for column, value in (
        (Job.bucket, flt.bucket),
        (Job.caller_aet, flt.caller_aet),
        (Job.caller_ip, flt.caller_ip),
        (Job.study_uid, flt.study_uid),
        (Job.state, flt.state),
        (Job.patient_id, flt.patient_id),
        (Job.accession_number, flt.accession_number),
    ):
        if value is not None:
            query = query.where(column == value)
    query = _identity_filters(query, flt)
    if flt.since is not None:
        query = query.where(Job.received_at >= flt.since)
    if flt.until is not None:
        query = query.where(Job.received_at < flt.until)
    if flt.q:
        fields = (Job.scratchdir, Job.bucket, Job.caller_aet, Job.caller_ip, Job.study_uid,
                  Job.jobname, Job.state, Job.patient_id, Job.patient_name,
                  Job.accession_number)  # fmt: skip
        query = query.where(or_(*(f.icontains(flt.q, autoescape=True) for f in fields)))
    if flt.initial:
        query = query.where(Job.caller_aet.istartswith(flt.initial, autoescape=True))
    return query


def _order(sort: str | None, descending: bool) -> list[Any]:
    """ORDER BY terms: the sort column (NULLs last in both directions, as on every
    database), then the id, so that pages never share or skip a row."""
    tie = Job.id.desc() if descending else Job.id.asc()
    if sort is None:
        return [tie]
    column = SORTS[sort]
    return [(column.desc() if descending else column.asc()).nulls_last(), tie]


def _identity_filters(query: Select[Any], flt: JobFilter) -> Select[Any]:
    """StudyDate (one day or a range ``A-B``, DICOM's form) and one of the modalities."""
    if flt.study_date:
        first, _, last = flt.study_date.partition("-")
        if last:
            query = query.where(Job.study_date >= first, Job.study_date <= last)
        else:
            query = query.where(Job.study_date == first)
    if flt.modality:
        # modalities is "CT\\MR": a whole name between backslashes, never a part of one
        padded = literal("\\") + Job.modalities + literal("\\")
        query = query.where(padded.contains(f"\\{flt.modality}\\", autoescape=True))
    return query


def _info_json(new: NewJob, received_at: float) -> dict[str, str]:
    return {
        "CallerIP": new.caller_ip,
        "AETitleCalled": new.bucket,
        "AETitleCaller": new.caller_aet,
        "received": scratch.received_stamp(received_at),
    }


def _stats(
    done: int, failed: int, run_done: Any, run_failed: Any, wait: Any, recent: int
) -> dict[str, Any]:
    finished = done + failed
    number = lambda v: None if v is None else round(float(v), 3)  # noqa: E731
    return {
        "done": done,
        "failed": failed,
        "success_rate": round(done / finished, 4) if finished else None,
        "mean_done_seconds": number(run_done),
        "mean_failed_seconds": number(run_failed),
        "mean_wait_seconds": number(wait),
        "finished_recently": recent,
    }

