"""The box: receiver, grouping, job store and queue wired together, and the core
functions that every front (web API, legacy endpoints, CLIs) calls.
"""

from __future__ import annotations

import json
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
from magickbox.jobs.queue import Dispatcher
from magickbox.jobs.store import JobFilter, JobStore, NewJob
from magickbox.jobs.unzip import safe_extract
from magickbox.names import check_study_uid
from magickbox.receive.grouping import ArrivalKey, Grouper
from magickbox.receive.scp import Receiver, read_study_uid
from magickbox.routing.tasks import Router
from magickbox.study.classify import Classifier, RulesError, parse_rules
from magickbox.study.series import SeriesSet, collect_files
from magickbox.study.views import RulesFile, ViewStore

log = logging.getLogger(__name__)

# NotFound and Invalid stay importable from here (older callers); they are errors.py's.
__all__ = ["Box", "Conflict", "Invalid", "NotFound"]


class Box:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        init_home(settings)
        self.events = EventBus()  # the stages talk through it: see magickbox/events.py
        sessions = open_database(settings.db_url)
        self.rules = RulesFile(settings.classify_rules_file)
        self.rules.ensure()  # the default set, copied at the first start, to edit
        self.views = (
            ViewStore(settings.views, sessions, self.rules) if settings.series_views else None
        )
        self.store = JobStore(settings, sessions, self.events, self.views)
        self.dispatcher = Dispatcher(self.store, RoutingExecutor(settings, LocalExecutor()))
        self.grouper = Grouper(settings.incoming, settings.quiet_seconds, self._arrival_ready)
        self.receiver = Receiver(settings, self.grouper, self.accepts)
        self.router = Router(settings, self.store.sessions, self.store.job_dir)
        # Routing evaluates a finished job on its own workers, never on the queue's thread.
        self.events.subscribe(JobFinished, lambda event: self.router.job_ended(event.scratchdir))
        self.events.subscribe(JobDeleted, self._job_deleted)
        self.archive_index = browse.ArchiveIndex(settings.archive)
        self.scratch_size = browse.ScratchSize(settings.scratch)
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
        self.grouper.stop()
        self.dispatcher.stop()
        self.router.stop()

    def _job_deleted(self, event: JobDeleted) -> None:
        self.router.job_deleted(event.scratchdir)  # its sends to come fail at once

    # -- receiving -----------------------------------------------------------------
    def accepts(self, aetitle: str) -> bool:
        return registry.enabled_bucket(self.settings.streams, aetitle) is not None

    def _arrival_ready(
        self, folder: Path, key: ArrivalKey, started: float, series: SeriesSet | None
    ) -> None:
        new = NewJob(
            bucket=key.called_aet,
            caller_aet=key.caller_aet,
            caller_ip=key.caller_ip,
            study_uid=key.study_uid,
        )
        self.store.create_job(folder, new, received_at=started, series=series)

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
        staging = self.settings.scratch / ".uploads" / uuid.uuid4().hex
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
        return browse.disk_usage(
            self.settings.scratch, self.scratch_size if with_scratch_size else None
        )

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

    # -- series views and classification ------------------------------------------
    def job_series(self, scratchdir: str) -> list[dict[str, Any]]:
        """The series of a job's INPUT, as they were when the job was made."""
        job = self.job(scratchdir)
        return self.views.job_series(job.scratchdir) if self.views else []

    def classify_rules_text(self) -> str:
        return self.rules.text()

    def save_classify_rules(self, text: str) -> dict[str, Any]:
        """Check and store classifyRules.json (RulesError names every problem by place)."""
        rules = self.rules.save(text)
        return {"ok": True, "types": len(rules.types)}

    def classify_test(
        self,
        *,
        files: list[Path] | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
        rules_text: str | None = None,
    ) -> dict[str, Any]:
        """Classify uploaded files or a stored series and say, per type, which rule held or
        failed and why; ``rules_text`` tries rules that are not saved (checked first)."""
        if rules_text:
            try:
                parsed = parse_rules(json.loads(rules_text))
            except json.JSONDecodeError as exc:
                raise RulesError([f"rules: not JSON: {exc}"]) from exc
            classifier = Classifier(parsed)
        else:
            classifier = self.rules.classifier()
        if files:
            summaries = _summaries_of_files(files)
        elif study_uid:
            summaries = self._stored_summaries(study_uid, series_uid)
        else:
            raise Invalid("give a file, or study_uid (and series_uid) of a stored series")
        return {"series": [_explained(s, classifier) for s in summaries]}

    def _stored_summaries(self, study_uid: str, series_uid: str | None) -> list[dict[str, Any]]:
        if self.views is None:
            raise Conflict("series views are off on this box (setting series_views)")
        check_study_uid(study_uid)
        summaries = self.views.stored_summaries(study_uid, series_uid)
        if not summaries:
            what = f"series {series_uid!r} of study" if series_uid else "series of study"
            raise NotFound(f"no {what} {study_uid!r}")
        return summaries

    def archive_listing(self) -> list[dict[str, Any]]:
        """getArchive.php: every archived study with its patient and study tags."""
        studies = self.archive_index.page(limit=10**9, offset=0)["studies"]
        return [
            {
                "PatientID": s.get("PatientID", ""),
                "AccessionNumber": s.get("AccessionNumber", ""),
                "SIUID": s.get("StudyInstanceUID", ""),
                "StudyDate": s.get("StudyDate", ""),
                "PatientName": s.get("PatientName", ""),
                "StudyDescription": s.get("StudyDescription", ""),
            }
            for s in studies
        ]

    # -- changing ------------------------------------------------------------------
    def delete_job(self, scratchdir: str) -> None:
        job = self.job(scratchdir)
        if self.dispatcher.cancel(job.scratchdir):
            deadline = time.monotonic() + 15
            while self.dispatcher.is_running_here(job.scratchdir) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.store.delete(job.scratchdir)
        log.info("job %s deleted", job.scratchdir)

    def delete_study(self, study_uid: str) -> dict[str, Any]:
        check_study_uid(study_uid)
        jobs = [j.scratchdir for j in self.store.study_jobs(study_uid)]
        for name in jobs:
            self.delete_job(name)
        archived = self.store.delete_archive_study(study_uid)
        if not jobs and not archived:
            raise NotFound(f"no study {study_uid!r} in the archive or the jobs")
        return {"SIUID": study_uid, "deleted_jobs": jobs, "archive_deleted": archived}

    def retry_job(self, scratchdir: str) -> Job:
        job = self.job(scratchdir)
        if not self.store.requeue(job.scratchdir, "retry requested: running again"):
            raise Conflict(f"job {scratchdir} is {job.state}; only finished jobs can be retried")
        return self.job(scratchdir)


def _day_text(day: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


def _summaries_of_files(files: list[Path]) -> list[dict[str, Any]]:
    """Views of uploaded files, one per series; a file that is not DICOM is refused."""
    found = collect_files(Path("/"), [f.resolve() for f in files])
    if not len(found):
        raise Invalid("no DICOM file with a SeriesInstanceUID was given")
    return [view.summary() for view, _files in found.items()]


def _first_study_uid(files: list[Path]) -> str:
    for path in files:
        try:
            return read_study_uid(path)
        except Exception:  # not DICOM or no study: the next file may tell
            continue
    return ""


def _explained(summary: dict[str, Any], classifier: Classifier) -> dict[str, Any]:
    """One series: its view, the types it got, and per type each rule's result and reason."""
    summary = {k: v for k, v in summary.items() if k != "ClassifyType"}
    results = classifier.explain(summary)
    return {
        "series_uid": summary.get("SeriesInstanceUID"),
        "study_uid": summary.get("StudyInstanceUID"),
        "view": summary,
        "ClassifyType": classifier.classify(summary),
        "types": [
            {
                "type": r.type,
                "matched": r.matched,
                "rules": [
                    {
                        "held": rr.held,
                        "rule": str(rr),
                        "tag": str(rr.rule.tag),
                        "operator": rr.rule.operator,
                        "value": rr.rule.value,
                        "negate": rr.rule.negate,
                        "via": list(rr.via),
                        "reason": rr.reason,
                    }
                    for rr in r.rules
                ],
            }
            for r in results
        ],
    }
