"""The box: receiver, grouping, job store and queue wired together, and the core
functions that every front (web API, legacy endpoints, CLIs) calls.
"""

from __future__ import annotations

import logging
import shlex
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from magickbox.announce import Announcer
from magickbox.buckets import registry
from magickbox.buckets.runner import LocalExecutor
from magickbox.buckets.slurm import RoutingExecutor
from magickbox.config import Settings
from magickbox.errors import Conflict, Invalid, NotFound
from magickbox.events import EventBus, JobDeleted, JobFinished
from magickbox.home import init_home
from magickbox.jobs import browse, scratch
from magickbox.jobs.db import Job, State, open_database
from magickbox.jobs.disk import DiskStatus, guard_for
from magickbox.jobs.queue import Dispatcher
from magickbox.jobs.retention import Removal, Sweeper
from magickbox.jobs.store import JobFilter, JobStore, NewJob
from magickbox.jobs.unzip import safe_extract
from magickbox.names import check_study_uid
from magickbox.receive.grouping import ArrivalKey, Grouper
from magickbox.receive.scp import Receiver, read_study_uid
from magickbox.routing.tasks import Router

log = logging.getLogger(__name__)

# NotFound and Invalid stay importable from here (older callers); they are errors.py's.
__all__ = ["Box", "Conflict", "Invalid", "NotFound"]


class Box:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        init_home(settings)
        self.events = EventBus()  # the stages talk through it: see magickbox/events.py
        self.store = JobStore(settings, open_database(settings.db_url), self.events)
        self.dispatcher = Dispatcher(self.store, RoutingExecutor(settings, LocalExecutor()))
        self.grouper = Grouper(settings.incoming, settings.quiet_seconds, self._arrival_ready)
        self.receiver = Receiver(settings, self.grouper, self.accepts)
        self.router = Router(settings, self.store.sessions, self.store.job_dir)
        # Routing evaluates a finished job on its own workers, never on the queue's thread.
        self.events.subscribe(JobFinished, lambda event: self.router.job_ended(event.scratchdir))
        self.events.subscribe(JobDeleted, self._job_deleted)
        self.archive_index = browse.ArchiveIndex(settings.archive)
        self.scratch_size = browse.ScratchSize(settings.scratch)
        self.disk_guard = guard_for(settings)  # the one answer to "may more data come?"
        self.sweeper = Sweeper(settings, self.store, self.disk_guard, self.router.unsettled_jobs,
                               lambda: registry.all_buckets(settings.streams))  # fmt: skip
        self.announcer: Announcer | None = None
        self._started = False

    def start(self, dicom: bool = True) -> None:
        """Recover what a crash left, then run every stage (the web app's lifespan calls it)."""
        self._started = True
        adopted = self.store.adopt_orphans()
        if adopted:
            log.info("adopted %d job folders left by a crash", adopted)
        self.router.start()  # sends pending at a restart go on
        self.dispatcher.start()
        self.grouper.start()
        self.sweeper.start()
        if dicom:
            self.receiver.start()
        if self.settings.announce:
            self.announcer = Announcer(self.settings)
            self.announcer.start()

    def stop(self) -> None:
        """Stop every stage; a second call (or one before start) does nothing."""
        if not self._started:
            return
        self._started = False
        if self.announcer is not None:
            self.announcer.stop()
        self.receiver.stop()
        self.sweeper.stop()
        self.grouper.stop()
        self.dispatcher.stop()
        self.router.stop()

    def _job_deleted(self, event: JobDeleted) -> None:
        self.router.job_deleted(event.scratchdir)  # its sends to come fail at once

    # -- receiving -----------------------------------------------------------------
    def accepts(self, aetitle: str) -> bool:
        return registry.enabled_bucket(self.settings.streams, aetitle) is not None

    def _arrival_ready(self, folder: Path, key: ArrivalKey, started: float) -> None:
        new = NewJob(
            bucket=key.called_aet,
            caller_aet=key.caller_aet,
            caller_ip=key.caller_ip,
            study_uid=key.study_uid,
        )
        self.store.create_job(folder, new, received_at=started)

    def upload(
        self,
        zip_path: Path,
        *,
        aetitle: str,
        sender: str,
        caller_ip: str,
        jobname: str = "",
        arguments: str = "",
        description: str = "",
    ) -> Job:
        """A zip of DICOM files becomes a job for bucket ``aetitle`` (processZip, mb push)."""
        if registry.enabled_bucket(self.settings.streams, aetitle) is None:
            raise NotFound(f"no enabled bucket has the AE title {aetitle!r}")
        try:
            args = tuple(shlex.split(arguments or ""))  # split like a shell would; never run one
        except ValueError as exc:
            raise Invalid(f"arguments: {exc}") from exc
        staging = self.settings.uploads / uuid.uuid4().hex
        staging.mkdir(parents=True)
        try:
            files = safe_extract(zip_path, staging)
            study_uid = _first_study_uid(files)
            new = NewJob(
                bucket=aetitle,
                caller_aet=sender,
                caller_ip=caller_ip,
                study_uid=study_uid,
                source="upload",
                jobname=jobname,
                description=description,
                arguments=args,
            )
            return self.store.create_job(staging, new)
        finally:
            scratch.remove_tree(staging)  # gone already when the job took it

    def check_upload_room(self, length: int | None) -> None:
        """StorageFull (507) when the disk is below its reserve or ``length`` bytes
        (None: not known) would take it there; asked before an upload's body is read."""
        self.disk_guard.check_upload(length)

    def new_upload_path(self) -> Path:
        """Where an upload's body is written as it arrives (scratch/.uploads/<id>.zip)."""
        self.settings.uploads.mkdir(parents=True, exist_ok=True)
        return self.settings.uploads / f"{uuid.uuid4().hex}.zip"

    # -- asking --------------------------------------------------------------------
    def job(self, scratchdir: str) -> Job:
        job = self.store.get(scratchdir)
        if job is None:
            raise NotFound(f"no job {scratchdir!r}")
        return job

    def job_dir(self, scratchdir: str) -> Path:
        return self.store.job_dir(self.job(scratchdir))

    def buckets(self, enabled_only: bool = True) -> list[registry.Bucket]:
        found = registry.all_buckets(self.settings.streams).values()
        return [b for b in found if b.enabled or not enabled_only]

    def queue_status(self) -> list[dict[str, Any]]:
        """Per bucket: queued, running and workers (the gearman status the original showed)."""
        counts = self.store.queue_counts()
        rows = []
        for bucket in self.buckets():
            states = counts.pop(bucket.aetitle, {})
            rows.append(
                {
                    "bucket": bucket.aetitle,
                    "queued": states.get(State.QUEUED, 0),
                    "running": states.get(State.RUNNING, 0),
                    "workers": bucket.concurrency(self.settings.concurrency),
                }
            )
        for name, states in counts.items():  # jobs of buckets removed since
            rows.append(
                {
                    "bucket": name,
                    "queued": states.get(State.QUEUED, 0),
                    "running": states.get(State.RUNNING, 0),
                    "workers": 0,
                }
            )
        return rows

    def jobs_per_day(self, days: int, utc_offset_minutes: int = 0) -> dict[str, int]:
        """{"YYYY-MM-DD": jobs received} for the last ``days`` days, in the asker's time zone."""
        shift = utc_offset_minutes * 60
        today = (time.time() + shift) // 86400
        since = (today - days + 1) * 86400 - shift
        counts = Counter((t + shift) // 86400 for t in self.store.received_times(since))
        return {_day_text(day): n for day, n in sorted(counts.items())}

    def bucket_overview(self, enabled_only: bool) -> list[dict[str, Any]]:
        """The buckets as /api/v1/buckets shows them, with their mean processing time."""
        means = self.store.mean_processing()
        return [
            {
                "aetitle": b.aetitle,
                "enabled": b.enabled,
                "folder": b.path.name,
                "info": b.info,
                "mean_processing_seconds": means.get(b.aetitle),
            }
            for b in self.buckets(enabled_only=enabled_only)
        ]

    def job_files(self, scratchdir: str, part: str) -> dict[str, Any]:
        return browse.job_files(self.job_dir(scratchdir), part)

    def disk(self, with_scratch_size: bool) -> dict[str, Any]:
        """Space on the scratch disk, the reserve and whether data is accepted now."""
        usage = browse.disk_usage(
            self.settings.scratch, self.scratch_size if with_scratch_size else None
        )
        return {**usage, **self.disk_status().view()}

    def disk_status(self) -> DiskStatus:
        return self.disk_guard.status()

    def archived_studies(self, limit: int, offset: int) -> dict[str, Any]:
        return self.archive_index.page(limit, offset)

    def find_jobs(
        self, flt: JobFilter, limit: int | None, offset: int
    ) -> tuple[list[tuple[Job, int]], int]:
        """A page of jobs matching ``flt``, each with its log's size now; and the total."""
        jobs, total = self.store.find(flt, limit=limit, offset=offset)
        return [(job, self.store.log_size(job)) for job in jobs], total

    def log_size(self, job: Job) -> int:
        return self.store.log_size(job)

    def scratch_rows(self) -> list[dict[str, Any]]:
        """Every job as plain values, newest first (what getScratch renders)."""
        return self.store.scratch_rows()

    def arrivals(self) -> list[dict[str, Any]]:
        """What is being received now and is not a job yet."""
        return self.grouper.snapshot()

    def pending_arrivals(self) -> int:
        return self.grouper.pending()

    # -- routing: its table, its log and its sends ---------------------------------
    def save_routing(self, text: str) -> dict[str, Any]:
        """Check and store a routing table (RuleError names every problem)."""
        return self.router.save_table(text)

    def routing_text(self) -> str:
        return self.router.table_text()

    def routing_log(self, limit: int, offset: int) -> list[dict[str, Any]]:
        return self.router.routing_log(limit, offset)

    def sends(self, scratchdir: str | None = None) -> list[dict[str, Any]]:
        return self.router.sends(scratchdir)

    def send(self, send_id: int) -> dict[str, Any]:
        row = self.router.send(send_id)
        if row is None:
            raise NotFound(f"no send {send_id}")
        return row

    def retry_send(self, send_id: int) -> dict[str, Any]:
        """Try a failed send again now (files already accepted are not sent twice)."""
        try:
            row = self.router.retry(send_id)
        except ValueError as exc:
            raise Conflict(str(exc)) from exc
        if row is None:
            raise NotFound(f"no send {send_id}")
        return row

    # -- changing ------------------------------------------------------------------
    def delete_job(self, scratchdir: str) -> dict[str, Any]:
        """Delete a job (a running one is stopped first): its name and the bytes freed.

        Its INPUT files are hard links into the archive, which keeps them: deleting the
        study (:meth:`delete_study`) frees those too.
        """
        job = self.job(scratchdir)
        if self.dispatcher.cancel(job.scratchdir):
            deadline = time.monotonic() + 15
            while self.dispatcher.is_running_here(job.scratchdir) and time.monotonic() < deadline:
                time.sleep(0.05)
        freed = self.store.delete(job.scratchdir) or 0
        log.info("job %s deleted: freed %d bytes", job.scratchdir, freed)
        return {"deleted": job.scratchdir, "freed_bytes": freed}

    def delete_study(self, study_uid: str) -> dict[str, Any]:
        """Delete every job of a study and its archive folder; the bytes that freed."""
        check_study_uid(study_uid)
        jobs = [j.scratchdir for j in self.store.study_jobs(study_uid)]
        freed = sum(self.delete_job(name)["freed_bytes"] for name in jobs)
        archived = self.store.delete_archive_study(study_uid)
        if not jobs and archived is None:
            raise NotFound(f"no study {study_uid!r} in the archive or the jobs")
        freed += archived or 0
        log.info("study %s deleted (%d jobs, archive %s): freed %d bytes", study_uid, len(jobs),
                 "too" if archived is not None else "none", freed)  # fmt: skip
        return {"SIUID": study_uid, "deleted_jobs": jobs, "archive_deleted": archived is not None,
                "freed_bytes": freed}  # fmt: skip

    def sweep(self) -> list[Removal]:
        """Run the sweep now: leftovers, retention and the scrub (it also runs by itself)."""
        return self.sweeper.sweep()

    def retry_job(self, scratchdir: str) -> Job:
        job = self.job(scratchdir)
        if not self.store.requeue(job.scratchdir, "retry requested: running again"):
            raise Conflict(f"job {scratchdir} is {job.state}; only finished jobs can be retried")
        return self.job(scratchdir)


def _day_text(day: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


def _first_study_uid(files: list[Path]) -> str:
    for path in files:
        try:
            return read_study_uid(path)
        except Exception:  # not DICOM or no study: the next file may tell
            continue
    return ""
