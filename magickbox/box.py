"""The box: receiver, grouping, job store and queue wired together, and the core
functions that every front (web API, legacy endpoints, CLIs) calls.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magickbox import config
from magickbox.announce import Announcer
from magickbox.auth.audit import AuditFilter, bucket_action
from magickbox.auth.principal import Principal
from magickbox.auth.roles import Role
from magickbox.auth.service import Authority
from magickbox.auth.sessions import Session
from magickbox.buckets import health, registry
from magickbox.buckets.runner import LocalExecutor
from magickbox.buckets.slurm import ClusterCheck, RoutingExecutor, SlurmStatus, check_cluster
from magickbox.config import Settings
from magickbox.disk import DiskStatus, guard_for
from magickbox.errors import Conflict, Invalid, NotFound
from magickbox.events import AssociationRejected, EventBus, JobDeleted, JobFinished
from magickbox.heartbeat import DOWN, OFF, Heartbeat, PartState
from magickbox.heartbeat import database as database_state
from magickbox.heartbeat import disk as disk_state
from magickbox.heartbeat import echo as echo_state
from magickbox.home import init_home
from magickbox.jobfolder import JobFolder
from magickbox.jobs import browse, measures, scratch, timing
from magickbox.jobs.db import Job, State, open_database
from magickbox.jobs.queue import Dispatcher
from magickbox.jobs.retention import Removal, Sweeper
from magickbox.jobs.store import JobFilter, JobStore, NewJob, Start
from magickbox.jobs.unzip import safe_extract
from magickbox.metrics import Metrics
from magickbox.names import BadName, check_study_uid, study_key
from magickbox.notify import Notifier
from magickbox.receive.completeness import SendPolicy, Verdict, policy_of
from magickbox.receive.grouping import Arrival, ArrivalKey, Grouper
from magickbox.receive.native import NativeReceiver
from magickbox.receive.rejections import Rejection, RejectionLog, rejection_label
from magickbox.receive.scp import Receiver, read_study_uid
from magickbox.routing import rules
from magickbox.routing.tasks import Router
from magickbox.study.classify import Classifier, RulesError, parse_rules
from magickbox.study.series import SeriesSet, collect_files
from magickbox.study.views import RulesFile, ViewStore
from magickbox.zipstream import zip_dir_entries

log = logging.getLogger(__name__)

# NotFound and Invalid stay importable from here (older callers); they are errors.py's.
__all__ = ["Box", "Conflict", "Invalid", "NotFound"]

STATS_WINDOW = 24 * 3600.0  # the Overview's throughput: jobs finished in the last day
BULK_MOST = 10_000  # jobs one bulk action may act on


@dataclass
class BulkResult:
    """What a bulk action did: per job its answer, or why it could not."""

    action: str
    done: list[tuple[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


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
        self.executor = RoutingExecutor(settings, LocalExecutor())
        self.dispatcher = Dispatcher(self.store, self.executor)
        self.grouper = Grouper(settings.incoming, settings.quiet_seconds, self._arrival_ready,
                               policy_for=self._send_policy, types_of=self._send_types)  # fmt: skip
        self.rejections = RejectionLog(self.store.sessions)
        kind = NativeReceiver if settings.receiver == "native" else Receiver
        self.receiver: NativeReceiver | Receiver = kind(
            settings, self.grouper, self.enabled_bucket, self.record_rejection, self.events
        )
        self.router = Router(settings, self.store.sessions, self.store.job_dir, events=self.events)
        # Routing evaluates a finished job on its own workers, never on the queue's thread.
        self.events.subscribe(JobFinished, lambda event: self.router.job_ended(event.scratchdir))
        self.events.subscribe(JobDeleted, self._job_deleted)
        self.auth = Authority(settings, self.store.sessions)  # users, tokens, sessions, audit
        self.metrics = Metrics(self.events, self)  # counts from the bus; gauges ask the box
        self.notifier = Notifier(settings, self.events, self._job_facts, self._study_facts)
        self.heartbeat = Heartbeat(
            self._checks(), self._repairs(), self.events, settings.heartbeat_seconds
        )
        self.archive_index = browse.ArchiveIndex(settings.archive)
        self.scratch_size = browse.ScratchSize(settings.scratch)
        self.disk_guard = guard_for(settings)  # the one answer to "may more data come?"
        self.sweeper = Sweeper(settings, self.store, self.disk_guard, self.router.unsettled_jobs,
                               lambda: registry.all_buckets(settings.streams),
                               self.events)  # fmt: skip
        self.announcer: Announcer | None = None
        self.cluster_check = ClusterCheck("off")
        self._started = False
        self._dicom = False

    def start(self, dicom: bool = True) -> None:
        """Recover what a crash left, then run every stage (the web app's lifespan calls it)."""
        self._started = True
        self.notifier.start()  # first: failures found by the recovery are told too
        adopted = self.store.adopt_orphans()
        if adopted:
            log.info("adopted %d job folders left by a crash", adopted)
        self._start_cluster_check()
        self.router.start()  # sends pending at a restart go on
        self.dispatcher.start()
        self.grouper.start()
        self._dicom = dicom
        self.sweeper.start()
        if dicom:
            self.receiver.start()
        if self.settings.announce:
            self.announcer = Announcer(self.settings)
            self.announcer.start()
        self.heartbeat.start()

    def stop(self) -> None:
        """Stop every stage; a second call (or one before start) does nothing."""
        if not self._started:
            return
        self._started = False
        self.heartbeat.stop()  # first: it must not restart what is being stopped
        if self.announcer is not None:
            self.announcer.stop()
        self.receiver.stop()
        self.sweeper.stop()
        self.grouper.stop()
        self.dispatcher.stop()
        self.router.stop()
        self.notifier.stop()

    def uses_slurm(self) -> bool:
        """Whether any job may run on Slurm: the box's default or a bucket's info.json."""
        if self.settings.executor == "slurm":
            return True
        return any(b.info.get("executor") == "slurm" for b in self.buckets(enabled_only=True))

    def _start_cluster_check(self) -> None:
        """In the background, so that a slow cluster does not hold the box's start."""
        if self.settings.slurm_check_seconds <= 0 or not self.uses_slurm():
            return
        self.cluster_check = ClusterCheck("checking", "a test job is on its way to a node")
        threading.Thread(target=self._check_cluster, name="slurm-check", daemon=True).start()

    def _check_cluster(self) -> None:
        try:
            result = check_cluster(self.settings, self.settings.slurm_check_seconds)
        except Exception as exc:  # e.g. squeue hanging: say so, never crash the box
            result = ClusterCheck("failed", f"the check itself failed: {exc}")
        self.cluster_check = result
        if result.state == "ok":
            log.info("Slurm: %s", result.message)
        else:
            log.error("Slurm is not usable for this box: %s", result.message)

    def _job_deleted(self, event: JobDeleted) -> None:
        self.router.job_deleted(event.scratchdir)  # its sends to come fail at once

    # -- health: the heartbeat's parts, their checks and repairs -------------------
    def _checks(self) -> dict[str, Callable[[], PartState]]:
        s = self.settings
        return {
            "receiver": self._receiver_state,
            "dispatcher": lambda: _problem_state(self.dispatcher.problem(s.heartbeat_timeout)),
            "router": lambda: _problem_state(self.router.problem(self._router_hang_after())),
            "database": lambda: database_state(self.store.sessions),
            "disk": lambda: disk_state(s.scratch, s.disk_warn_percent, self.disk_status),
        }

    def _repairs(self) -> dict[str, Callable[[], None]]:
        return {
            "receiver": self.receiver.restart,
            "dispatcher": self.dispatcher.restart,
            "router": lambda: self.router.restart(self._router_hang_after()),
        }

    def _router_hang_after(self) -> float:
        # A send waits at most routing_timeout per answer, and each accepted file is progress.
        return 4 * self.settings.routing_timeout + self.settings.heartbeat_timeout

    def _receiver_state(self) -> PartState:
        s = self.settings
        if not self._dicom:
            return PartState(OFF, "DICOM is not served by this box")
        if not self.receiver.running:
            return PartState(DOWN, "the DICOM listener is stopped")
        host = "127.0.0.1" if s.host in ("", "0.0.0.0", "::") else s.host
        return echo_state(host, s.dicom_port, s.aet, s.heartbeat_timeout)

    def health(self) -> dict[str, Any]:
        """Each part's state now (ok, low, down, off) and whether all are up."""
        parts = self.heartbeat.check()
        space = self.disk_status()
        return {
            "ok": not any(p.down for p in parts.values()),
            "aet": self.settings.aet,
            "dicom_port": self.settings.dicom_port,
            "pending_sends": self.pending_arrivals(),
            "parts": {name: {"state": p.state, "detail": p.detail} for name, p in parts.items()},
            # The start-up check of the Slurm cluster ("off" without Slurm buckets).
            "slurm": self.cluster_check.as_json(),
            # below disk_reserve the box refuses new data (associations, C-STOREs, uploads)
            "accepting": not space.low,
            "disk": space.view(),
        }

    def heartbeat_round(self) -> dict[str, Any]:
        """One heartbeat round now (checks and restarts), as the timer would run it."""
        parts = self.heartbeat.run_once()
        return {name: {"state": p.state, "detail": p.detail} for name, p in parts.items()}

    # -- what metrics and notifications read ---------------------------------------
    def job_counts(self) -> dict[str, dict[str, int]]:
        return self.store.state_counts()

    def open_associations(self) -> int:
        return self.receiver.open_associations()

    def disk_space(self) -> tuple[int, int]:
        usage = shutil.disk_usage(self.settings.scratch)
        return usage.free, usage.total

    def metrics_text(self) -> bytes:
        return self.metrics.text()

    def _job_facts(self, scratchdir: str) -> dict[str, Any] | None:
        job = self.store.get(scratchdir)
        if job is None:
            return None
        names = ("scratchdir", "bucket", "state", "reason", "caller_aet", "caller_ip",
                 "study_uid", "jobname", "description", "received_at", "started_at",
                 "finished_at", "attempts", "exit_code", "success")  # fmt: skip
        return {name: getattr(job, name) for name in names}

    def _study_facts(self, scratchdir: str) -> dict[str, Any]:
        job = self.store.get(scratchdir)
        folder = self.store.job_dir(job) / "INPUT" if job is not None else None
        if folder is None or not folder.is_dir():
            return {}
        return browse.study_facts(folder)

    # -- receiving -----------------------------------------------------------------
    def record_rejection(self, rejection: Rejection) -> None:
        """A refused association: kept for the API and the page, counted for the metrics."""
        self.rejections.record(rejection)
        self.events.publish(AssociationRejected(rejection_label(rejection.reason)))

    def enabled_bucket(self, aetitle: str) -> registry.Bucket | None:
        """The enabled bucket a called AE title names (the receiver asks per association)."""
        return registry.enabled_bucket(self.settings.streams, aetitle)

    # -- when a send becomes a job (the rule: receive/completeness.py) -------------------
    def _send_policy(self, aetitle: str) -> SendPolicy | None:
        """The bucket's rule for its sends (info.json), None for no enabled bucket."""
        bucket = self.enabled_bucket(aetitle)
        return policy_of(bucket.aetitle, bucket.info) if bucket else None

    def _send_types(self, arrival: Arrival) -> set[str]:
        """The ClassifyTypes of a quiet send's series, and of the held job it would join."""
        series = arrival.series if arrival.series is not None else collect_files(arrival.folder)
        classifier = self.rules.classifier()
        types = {t for view, _files in series.items() for t in view.to_json(classifier)
                 ["ClassifyType"]}  # fmt: skip
        held = self._held_for(arrival.key, arrival.policy)
        if held is not None and self.views is not None:
            types.update(t for row in self.views.job_series(held.scratchdir)
                         for t in row["classify_type"])  # fmt: skip
        return types

    def _held_for(self, key: ArrivalKey, policy: SendPolicy | None) -> Job | None:
        """The job a send of ``key`` joins (merge_seconds; never with one job per series)."""
        if policy is None or not policy.merge or policy.per_series:
            return None
        return self.store.held_job(key.called_aet, key.study_uid)

    def _arrival_ready(
        self,
        folder: Path,
        key: ArrivalKey,
        started: float,
        series: SeriesSet | None,
        verdict: Verdict | None = None,
    ) -> None:
        policy = self._send_policy(key.called_aet)
        held = self._held_for(key, policy)
        what = f"{key.caller_aet}@{key.caller_ip}"
        failed = verdict is not None and verdict.fail  # a failed send is a job of its own
        if held is not None and not failed and self.store.merge_send(held, folder, series, what):
            return
        new = NewJob(
            bucket=key.called_aet,
            caller_aet=key.caller_aet,
            caller_ip=key.caller_ip,
            study_uid=key.study_uid,
            description=f"series {key.series_uid}" if key.series_uid else "",
        )
        self.store.create_job(folder, new, received_at=started, series=series,
                              start=_start(policy, verdict))  # fmt: skip

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
        self._need_bucket(aetitle)
        args = split_arguments(arguments)
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

    def _need_bucket(self, aetitle: str) -> None:
        if registry.enabled_bucket(self.settings.streams, aetitle) is None:
            raise NotFound(f"no enabled bucket has the AE title {aetitle!r}")

    def run_studies(
        self,
        study_uids: Sequence[str],
        *,
        bucket: str,
        arguments: str | Sequence[str] = "",
        sender: str,
        caller_ip: str,
        jobname: str = "",
        description: str = "",
    ) -> list[Job]:
        """A new job of ``bucket`` per archived study (the original offered archived studies
        to buckets). Every study is checked before any job is made."""
        self._need_bucket(bucket)
        args = split_arguments(arguments)
        if not study_uids:
            raise Invalid("no study given")
        jobs = []
        for uid, folder in self._archived_studies(study_uids).items():
            new = NewJob(bucket=bucket, caller_aet=sender, caller_ip=caller_ip, study_uid=uid,
                         source="archive", jobname=jobname, description=description,
                         arguments=args)  # fmt: skip
            jobs.append(self._job_from_archive(uid, folder, new))
        return jobs

    def _archived_studies(self, study_uids: Sequence[str]) -> dict[str, Path]:
        folders: dict[str, Path] = {}
        missing: list[str] = []
        for uid in study_uids:
            try:
                folder = self.settings.archive / study_key(check_study_uid(uid))
            except BadName as exc:
                raise Invalid(f"study {uid!r}: {exc}") from exc
            if folder.is_dir() and not folder.is_symlink():
                folders[uid] = folder
            else:
                missing.append(uid)
        if missing:
            raise NotFound(f"not in the archive: {', '.join(missing)}")
        return folders

    def _job_from_archive(self, uid: str, folder: Path, new: NewJob) -> Job:
        staging = self.settings.uploads / uuid.uuid4().hex
        try:
            if scratch.link_from_archive(folder, staging) == 0:
                raise NotFound(f"study {uid!r} has no files in the archive")
            job = self.store.create_job(staging, new)
        finally:
            scratch.remove_tree(staging)  # gone already when the job took it
        log.info("job %s: study %s from the archive for %s", job.scratchdir, uid, new.bucket)
        return job

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

    def set_bucket_enabled(self, who: Principal, aetitle: str, enable: bool) -> dict[str, Any]:
        """Enable or disable a bucket (what ``magickbox buckets enable|disable`` does), in the
        audit trail; the bucket as /api/v1/buckets shows it now."""
        bucket = registry.set_enabled(self.settings.streams, aetitle, enable)
        self.audit(who, bucket_action(enable), bucket.aetitle)
        return health.view(health.check_folder(bucket.path, self.settings))

    def slurm_status(self, scratchdir: str) -> str | None:
        """The job's place in Slurm ("PENDING (Resources)", "RUNNING on node1"), if it has one."""
        return self.executor.status(scratchdir)

    def slurm_statuses(self) -> dict[str, SlurmStatus]:
        """Every job the Slurm executor holds (waiting in the box or in Slurm), by scratchdir."""
        return self.executor.statuses()

    def queue_status(self) -> list[dict[str, Any]]:
        """Per bucket: queued, running and workers (the gearman status the original showed).

        A job handed to the Slurm executor but not yet on a node (waiting in the box or
        PENDING in Slurm) counts as queued.
        """
        counts = self.store.queue_counts()
        waiting = self._slurm_waiting()
        workers = {b.aetitle: b.concurrency(self.settings.concurrency) for b in self.buckets()}
        rows = []
        for name in [*workers, *(n for n in counts if n not in workers)]:  # removed buckets last
            states = counts.get(name, {})
            held = waiting.get(name, 0)
            rows.append(
                {
                    "bucket": name,
                    "queued": states.get(State.QUEUED, 0) + held,
                    "running": states.get(State.RUNNING, 0) - held,
                    "workers": workers.get(name, 0),
                }
            )
        return rows

    def _slurm_waiting(self) -> Counter[str]:
        """Per bucket, the "running" jobs that are not yet on a Slurm node."""
        statuses = self.slurm_statuses()
        if not statuses:
            return Counter()
        return Counter(
            job.bucket
            for job in self.store.running_jobs()
            if job.scratchdir in statuses and not statuses[job.scratchdir].running
        )

    def jobs_per_day(self, days: int, utc_offset_minutes: int = 0) -> dict[str, int]:
        """{"YYYY-MM-DD": jobs received} for the last ``days`` days, in the asker's time zone."""
        shift = utc_offset_minutes * 60
        today = (time.time() + shift) // 86400
        since = (today - days + 1) * 86400 - shift
        counts = Counter((t + shift) // 86400 for t in self.store.received_times(since))
        return {_day_text(day): n for day, n in sorted(counts.items())}

    def bucket_overview(self, enabled_only: bool) -> list[dict[str, Any]]:
        """The buckets as /api/v1/buckets shows them: every folder (``enabled_only``: the
        enabled buckets) with its problems, its mean processing time and its job figures."""
        stats = self.bucket_stats()
        timings = self.store.timing.all()
        rows = []
        for found in health.survey(self.settings):
            if enabled_only and not found.enabled:
                continue
            row = health.view(found)
            figures = stats.get(row["aetitle"], {})
            row["mean_processing_seconds"] = figures.get("mean_done_seconds")
            row["stats"] = figures or None
            timed = timings.get(row["aetitle"])
            row["timing"] = timed.as_json() if timed is not None else None
            rows.append(row)
        return rows

    def bucket_stats(self, window: float = STATS_WINDOW) -> dict[str, dict[str, Any]]:
        """Per bucket: success rate, mean run and wait, and jobs an hour over ``window``."""
        stats = self.store.bucket_stats(time.time() - window)
        for figures in stats.values():
            figures["per_hour"] = round(figures["finished_recently"] * 3600 / window, 2)
            figures["window_seconds"] = window
        return stats

    # -- how long things take --------------------------------------------------------
    def bucket_timing(self, aetitle: str) -> timing.Figures | None:
        """The bucket's running processing-time figures (timing.php), None before any run."""
        return self.store.timing.of(aetitle)

    def add_timing(self, aetitle: str, seconds: float) -> timing.Figures:
        """A processing time reported by hand (timing.php's ``time=``)."""
        if not aetitle or len(aetitle) > 64:
            raise Invalid("aetitle must be 1 to 64 characters")
        if not 0 <= seconds < 10**9:
            raise Invalid("time must be a number of seconds, at least 0")
        return self.store.timing.add(aetitle, seconds)

    def job_etas(self, jobs: Sequence[Job]) -> dict[str, timing.Eta]:
        """ETAs of the queued and running ones of ``jobs``: their buckets' queues played
        forward with the running mean; a bucket without history gives none."""
        names = {j.bucket for j in jobs if j.state in (State.QUEUED, State.RUNNING)}
        figures = self.store.timing.all() if names else {}
        now, etas = time.time(), {}
        for name in names & set(figures):
            bucket = registry.enabled_bucket(self.settings.streams, name)
            workers = bucket.concurrency(self.settings.concurrency) if bucket else 0
            running, queued = self.store.bucket_queue(name)
            etas.update(timing.plan(now, running, queued, figures[name].mean, workers))
        return etas

    # -- measures --------------------------------------------------------------------
    def measures_table(self, bucket: str | None) -> measures.Table:
        """One row per job (of ``bucket``) with every measure: the table after a study."""
        kept = self.store.measures
        columns = measures.JOB_COLUMNS + measures.identity_columns(kept.series_types(bucket))
        return measures.table(kept.of_jobs(bucket), columns)

    def job_measures(self, scratchdir: str) -> Any:
        """The job's measures as its bucket wrote them, or None."""
        return self.store.measures.get(self.job(scratchdir).scratchdir)

    def reread_measures(self, scratchdir: str) -> str:
        """Read a job's measures.json again (db.php's ``parse``); what was found."""
        job = self.job(scratchdir)
        note = self.store.measures.reread(job.scratchdir, JobFolder(self.store.job_dir(job)))
        if note is None:
            raise NotFound(f"job {scratchdir} has no measures.json")
        return note

    # -- settings that change while the box runs ---------------------------------------
    def setup(self) -> dict[str, Any]:
        return config.setup_view(self.settings)

    def change_settings(self, who: Principal, changes: dict[str, object]) -> dict[str, Any]:
        """Check every change, then apply them to the running box and keep them in the
        home's magickbox.toml; a bad one changes nothing. In the audit trail with the old
        and new values."""
        if not changes:
            raise Invalid("no setting to change")
        checked = {}
        for name, value in changes.items():
            try:
                checked[name] = config.live_change(self.settings, name, value)
            except ValueError as exc:
                raise Invalid(f"{name}: {_first_line(exc)}") from exc
        old = {name: getattr(self.settings, name) for name in checked}
        for name, value in checked.items():
            setattr(self.settings, name, value)
            config.write_setting(self.settings.home / config.CONFIG_FILE, name, value)
        self.grouper.quiet = self.settings.quiet_seconds
        self.dispatcher.wake()  # more workers may be free now
        log.info("settings changed: %s", checked)
        self.audit(who, "settings_change", ", ".join(checked), old=old, new=checked)
        overridden = [n for n in checked if config.env_name(n) in os.environ]
        return {"changed": checked, "overridden_at_start": overridden}

    # -- asking --------------------------------------------------------------------

    def job_files(self, scratchdir: str, part: str) -> dict[str, Any]:
        return browse.job_files(self.job_dir(scratchdir), part)

    def job_file(self, scratchdir: str, part: str, name: str) -> Path:
        """One regular file of a job's OUTPUT or INPUT (never through a link)."""
        return browse.job_file(self.job_dir(scratchdir), part, name)

    def job_verdict(self, job: Job) -> dict[str, Any] | None:
        """The bucket's proc.json (success, message), None when there is none."""
        return JobFolder(self.store.job_dir(job)).read_verdict()

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
        self,
        flt: JobFilter,
        limit: int | None,
        offset: int,
        sort: str | None = None,
        descending: bool = True,
    ) -> tuple[list[tuple[Job, int]], int]:
        """A page of jobs matching ``flt`` (sorted by ``sort``, a field of the job; None:
        newest first), each with its log's size now; and the total."""
        jobs, total = self.store.find(flt, limit, offset, sort, descending)
        return [(job, self.store.log_size(job)) for job in jobs], total

    def log_size(self, job: Job) -> int:
        return self.store.log_size(job)

    def scratch_rows(self) -> list[dict[str, Any]]:
        """Every job as plain values, newest first (what getScratch renders), with ``slurm``:
        its Slurm status while the Slurm executor holds it, else ""."""
        rows = self.store.scratch_rows()
        statuses = self.slurm_statuses()
        for row in rows:
            found = statuses.get(row["scratchdir"])
            row["slurm"] = found.text if found else ""
        return rows

    def arrivals(self) -> list[dict[str, Any]]:
        """What is being received now and is not a job yet."""
        return self.grouper.snapshot()

    def pending_arrivals(self) -> int:
        return self.grouper.pending()

    def rejections_page(self, limit: int, offset: int) -> dict[str, Any]:
        """Refused DICOM associations, newest first (who, from where, to which AE, why)."""
        return self.rejections.page(limit, offset)

    # -- routing: its table, its log and its sends ---------------------------------
    def save_routing(self, text: str) -> dict[str, Any]:
        """Check and store a routing table (RuleError names every problem)."""
        return self.router.save_table(text)

    def routing_text(self) -> str:
        return self.router.table_text()

    def is_destination(self, host: str, port: int) -> bool:
        """Whether the routing table sends to ``host``:``port`` (placeholders resolved)."""
        ph = rules.Placeholders(self.settings.me_host, self.settings.me_port)
        try:
            table = rules.read_table(self.settings.routing_file)
        except rules.RuleError:
            return False
        return any(
            rules.resolve(dest.ip, ph) == host and rules.port_of(dest.port, ph) == port
            for rule in table.rules
            for entry in rule.sends
            for dest in entry
        )

    def routing_log(self, limit: int, offset: int) -> list[dict[str, Any]]:
        return self.router.routing_log(limit, offset)

    def sends(self, scratchdir: str | None = None) -> list[dict[str, Any]]:
        return self.router.sends(scratchdir)

    def failing_sends(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.router.failing_sends(limit)

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

    # -- who may: the fronts authenticate through these (magickbox/auth) --------------
    def first_admin(self) -> str | None:
        """A new home's admin: its one-time password (also in a 0600 file), else None."""
        return self.auth.store.ensure_first_admin(self.settings.home)

    def who_by_token(self, secret: str, address: str) -> Principal | None:
        return self.auth.by_token(secret, address)

    def who_by_session(self, sid: str, address: str) -> tuple[Principal, Session] | None:
        return self.auth.by_session(sid, address)

    def who_by_network(self, address: str) -> Principal | None:
        return self.auth.by_network(address)

    def login(self, name: str, password: str, address: str) -> tuple[str, Session]:
        return self.auth.login(name, password, address)

    def logout(self, who: Principal) -> None:
        self.auth.logout(who)

    def users(self) -> list[dict[str, Any]]:
        return self.auth.store.users()

    def add_user(self, name: str, role: Role, password: str) -> None:
        self.auth.store.add_user(name, role, password)

    def remove_user(self, name: str) -> None:
        self.auth.store.remove_user(name)
        self.auth.sessions.end_user(name)

    def set_password(self, name: str, password: str) -> None:
        self.auth.store.set_password(name, password)
        self.auth.sessions.end_user(name)

    def tokens(self) -> list[dict[str, Any]]:
        return [t.as_dict() for t in self.auth.store.tokens()]

    def create_token(
        self, name: str, role: Role, expires_at: float | None, created_by: str
    ) -> tuple[str, dict[str, Any]]:
        """A new API token: its secret (shown once) and how it is listed."""
        secret, info = self.auth.store.create_token(name, role, expires_at, created_by)
        return secret, info.as_dict()

    def revoke_token(self, which: str) -> list[dict[str, Any]]:
        return [t.as_dict() for t in self.auth.store.revoke_token(which)]

    def audit(self, who: Principal | None, action: str, target: str = "", **detail: Any) -> None:
        """Record in the audit trail that ``who`` did ``action`` to ``target``."""
        self.auth.audit(who, action, target, **detail)

    def audit_page(self, flt: AuditFilter, limit: int, offset: int) -> dict[str, Any]:
        return self.auth.audit_page(flt, limit, offset)

    def audit_lines(self, flt: AuditFilter) -> Iterator[bytes]:
        return self.auth.audit_lines(flt)

    # -- series views and classification ------------------------------------------
    def job_parts(self, job: Job) -> list[str]:
        """The other jobs of the job's study and bucket (parts of one send), oldest first."""
        return self.store.study_parts(job)

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

    # -- acting on many jobs (the console's bulk actions) ----------------------------------
    def select_jobs(self, names: Sequence[str] | None, flt: JobFilter | None) -> list[str]:
        """The jobs a bulk action acts on: the names given (each checked, duplicates once),
        or every job ``flt`` matches (at most ``BULK_MOST``, so one request stays bounded)."""
        if (names is None) == (flt is None):
            raise Invalid("give either scratchdirs or a filter")
        if flt is not None:
            return self.store.matching_names(flt, BULK_MOST)
        assert names is not None
        if len(names) > BULK_MOST:
            raise Invalid(f"at most {BULK_MOST} jobs at once, not {len(names)}")
        return list(dict.fromkeys(names))

    def bulk(self, action: str, names: Sequence[str], **run: Any) -> BulkResult:
        """``action`` (retry, delete, run) on each job of ``names``; one job that cannot is
        named with its reason and the others go on. ``run``: :meth:`run_again`'s arguments."""
        act: Callable[[str], Any] = {
            "retry": self.retry_job,
            "delete": self.delete_job,
            "run": lambda name: self.run_again(name, **run),
        }[action]
        result = BulkResult(action)
        for name in names:
            try:
                result.done.append((name, act(name)))
            except (NotFound, Conflict, Invalid) as exc:
                result.failed.append((name, str(exc)))
        log.info("bulk %s: %d jobs, %d could not", action, len(result.done), len(result.failed))
        return result

    def run_again(self, scratchdir: str, *, bucket: str, **how: Any) -> Job:
        """A new job of ``bucket`` made of the archived study of job ``scratchdir`` (the
        run-again of the archive page, reached from a job)."""
        job = self.job(scratchdir)
        if not job.study_uid:
            raise Invalid(f"job {scratchdir} has no StudyInstanceUID to find in the archive")
        return self.run_studies([job.study_uid], bucket=bucket, **how)[0]

    def outputs_zip(self, names: Sequence[str]) -> Iterator[tuple[str, Path]]:
        """Zip entries of every OUTPUT of ``names`` as ``<scratchdir>/OUTPUT/...``: what
        :func:`magickbox.zipstream.stream_zip` streams. Every job is looked up now (an
        unknown one is NotFound before a byte is sent); one deleted meanwhile is skipped."""
        folders = [(name, self.job_dir(name) / "OUTPUT") for name in names]
        return (
            entry
            for name, folder in folders
            if folder.is_dir()
            for entry in zip_dir_entries(folder, f"{name}/OUTPUT")
        )

def _start(policy: SendPolicy | None, verdict: Verdict | None) -> Start:
    """How a send's job starts: failed for missing series (on_missing "fail"), run with a
    note (on_missing "run"), held for merge_seconds so a later part can join it."""
    hold = policy.merge if policy is not None and not policy.per_series else 0.0
    if verdict is None or not verdict.missing:
        return Start(hold=hold)
    if verdict.fail:
        return Start(fail=verdict.reason)
    return Start(hold=hold, note=f"{verdict.reason}; run anyway (on_missing \"run\")")


def split_arguments(arguments: str | Sequence[str]) -> tuple[str, ...]:
    """Bucket arguments: a list as it is, a text split like a shell would (never run one)."""
    if not isinstance(arguments, str):
        return tuple(str(a) for a in arguments)
    try:
        return tuple(shlex.split(arguments))
    except ValueError as exc:
        raise Invalid(f"arguments: {exc}") from exc


def _first_line(exc: Exception) -> str:
    """pydantic's errors run over lines; the first two say what is wrong."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return " ".join(lines[:3]) if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)


def _problem_state(problem: str) -> PartState:
    return PartState(DOWN, problem) if problem else PartState("ok")


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
