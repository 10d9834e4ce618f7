"""Sends as durable tasks: made when a job finishes, tried until every file is accepted.

Each destination of a finished job becomes a row of ``sends`` (the routing log says why)
in one transaction. Worker threads claim due rows; a failed try is scheduled again with a
doubling delay until the tries are used up, then the row is *failed* with its reason and
can be retried by hand. Files a destination accepted are recorded, so a later try (or a
restart) sends only the rest. Workers wake on events: a new send, a manual retry, or the
timer of the earliest scheduled retry; nothing polls.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from magickbox.config import Settings
from magickbox.errors import Invalid
from magickbox.events import EventBus, SendEnded
from magickbox.jobs.db import FINISHED, Job
from magickbox.pulse import Pulse
from magickbox.routing import rules, sender
from magickbox.routing.errorimage import write_error_image
from magickbox.routing.models import RoutingLog, Send, SendState
from magickbox.routing.select import dicom_files, probe
from magickbox.tls import ClientFiles, client_context

log = logging.getLogger(__name__)

# A bucket that crashed wrote no proc.json: as in the original, its success value is then
# couldNotReadProcJSON, which the usual "fail" key does not match. Said where people look.
NO_VERDICT_NOTE = (
    f"no readable proc.json, so success is {rules.NO_PROC_JSON!r}: a key 'fail' does not "
    f"match it (as in the original); to route crashes, name it in a key, e.g. "
    f"'fail|{rules.NO_PROC_JSON}'"
)

ERROR_IMAGE = Path(".mb-routing") / "processing-log.dcm"  # inside the job folder
IDLE_SECONDS = 300.0  # nothing scheduled: wake now and then anyway (a safety net)
PROGRESS_EVERY = 1.0  # seconds between records of accepted files during a send
MISSED_WINDOW = 86400.0  # at a start, jobs ended this recently are checked for routing

# What a worker sends with: (target, files, on_accepted) -> report. sender.send by default;
# tests give a fake that answers as told, so no network is needed to test the task logic.
SendFunc = Callable[
    [sender.Target, Sequence[sender.DicomFile], Callable[[str], None] | None], sender.SendReport
]


DELETED = "the job was deleted"


class Router:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        job_dir: Callable[[Job], Path],
        send: SendFunc = sender.send,
        events: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.job_dir = job_dir
        self._send = send
        self.events = events or EventBus()  # SendEnded is published here
        self._wake = threading.Condition()
        self._stop = False
        self._workers: list[_Worker] = []
        self._local = threading.local()  # the current worker's pulse (progress beats it)
        self._table_lock = threading.Lock()
        self._ended: queue.SimpleQueue[str] = queue.SimpleQueue()  # jobs to evaluate

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self.route_missed()
        slots = range(max(1, self.settings.routing_workers))
        self._workers = [self._new_worker(i, 0) for i in slots]
        for worker in self._workers:
            worker.thread.start()  # in its slot first: the loop checks it is still its own

    def _new_worker(self, slot: int, generation: int) -> _Worker:
        worker = _Worker(slot, generation, Pulse())
        worker.thread = threading.Thread(
            target=self._loop, args=(worker,), name=f"routing-{slot}", daemon=True
        )
        return worker

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()

    def problem(self, hang_after: float) -> str:
        """Why the send workers are not working ("" when they are): stopped, a worker's
        thread ended, or one busy for ``hang_after`` s without any progress (hung)."""
        if self._stop:
            return "stopped"
        for worker in self._workers:
            if not worker.thread.is_alive():
                return f"worker {worker.slot}: its thread has ended"
            if worker.pulse.busy_for() > hang_after:
                return f"worker {worker.slot}: busy for {worker.pulse.busy_for():.0f} s (hung)"
        return ""

    def restart(self, hang_after: float) -> None:
        """Workers that ended or hang are replaced (a hung one ends when it comes back)."""
        with self._wake:
            self._stop = False
        for i, worker in enumerate(self._workers):
            if not worker.thread.is_alive() or worker.pulse.busy_for() > hang_after:
                self._workers[i] = self._new_worker(worker.slot, worker.generation + 1)
                self._workers[i].thread.start()
        self.wake()

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def recover(self) -> None:
        """Sends cut off by a stop or crash are due again at once (accepted files stay done)."""
        with self.sessions.begin() as s:
            s.execute(
                update(Send)
                .where(Send.state == SendState.SENDING)
                .values(state=SendState.PENDING, next_at=time.time())
            )

    def route_missed(self) -> int:
        """Route jobs that ended (in the last day) without being routed: a crash came
        between recording a job's end and evaluating the table. Called before the queue
        starts, so no job ends meanwhile."""
        since = time.time() - MISSED_WINDOW
        with self.sessions() as s:
            ended = s.execute(
                select(Job.scratchdir, Job.finished_at).where(
                    Job.finished_at >= since, Job.state.in_(FINISHED)
                )
            ).all()
            routed = dict(
                s.execute(
                    select(RoutingLog.scratchdir, func.max(RoutingLog.at))
                    .where(RoutingLog.outcome == "evaluated", RoutingLog.at >= since)
                    .group_by(RoutingLog.scratchdir)
                ).all()
            )
        missed = [name for name, end in ended if end is not None and routed.get(name, 0.0) < end]
        for name in missed:
            log.info("job %s ended before a restart without being routed: routing it now", name)
            self.job_finished(name)
        return len(missed)

    def unsettled_jobs(self) -> set[str]:
        """Jobs whose routing is not over, which the scrub must keep: sends still to come
        (pending or sending), or ended in the last day and not yet evaluated (a start
        routes those, see route_missed)."""
        since = time.time() - MISSED_WINDOW
        evaluated = (
            select(RoutingLog.id)
            .where(
                RoutingLog.scratchdir == Job.scratchdir,
                RoutingLog.outcome == "evaluated",
                RoutingLog.at >= Job.finished_at,
            )
            .exists()
        )
        with self.sessions() as s:
            to_come = Send.state.in_([SendState.PENDING, SendState.SENDING])
            sending = s.scalars(select(Send.scratchdir).where(to_come)).all()
            unrouted = s.scalars(
                select(Job.scratchdir).where(
                    Job.state.in_(FINISHED), Job.finished_at >= since, ~evaluated
                )
            ).all()
        return set(sending) | set(unrouted)

    # -- the table -----------------------------------------------------------------
    def table_text(self) -> str:
        path = self.settings.routing_file
        return path.read_text() if path.is_file() else '{"routing": []}'

    def save_table(self, text: str) -> dict[str, Any]:
        """Check ``text`` and store it (atomically); a RuleError leaves the old table."""
        table = rules.validate_text(text, self.settings.home)
        path = self.settings.routing_file
        with self._table_lock:
            partial = path.with_suffix(".json.partial")
            partial.write_text(text)
            partial.replace(path)
        count = len(table["routing"])
        self.note("", outcome="table", message=f"routing table saved: {count} rules")
        return table

    # -- a job finished ------------------------------------------------------------
    def job_ended(self, scratchdir: str) -> None:
        """A job finished: its evaluation is queued for the router's own workers, so the
        queue that reports it (and that bucket's next job) never waits for routing."""
        self._ended.put(scratchdir)
        self.wake()

    def job_finished(self, scratchdir: str) -> list[int]:
        """Evaluate the table for a job that just finished and queue its sends (their ids)."""
        job = self._job(scratchdir)
        if job is None:
            return []
        success = job.success or rules.NO_PROC_JSON
        try:
            table = rules.read_table(self.settings.routing_file)
        except rules.RuleError as exc:
            self.note(job.scratchdir, outcome="error", message=f"no routing: {exc}")
            return []
        facts = rules.JobFacts(job.bucket, job.caller_aet, job.caller_ip, success)
        ph = rules.Placeholders(self.settings.me_host, self.settings.me_port, job.caller_ip)
        routes, notes = rules.evaluate(table, facts, ph)
        if not table.rules:
            notes = ["no routing table"]  # still recorded: it marks the job as routed
        elif success == rules.NO_PROC_JSON:
            notes.append(NO_VERDICT_NOTE)
            log.info("job %s: %s", job.scratchdir, NO_VERDICT_NOTE)
        if any(r.error_image for r in routes):
            self._make_error_image(job)
        ids = self._add_sends(job, success, routes, notes)
        self.wake()
        return ids

    def _make_error_image(self, job: Job) -> None:
        job_dir = self.job_dir(job)
        try:
            write_error_image(job_dir, job_dir / ERROR_IMAGE, job.scratchdir)
        except Exception as exc:  # the sends go on without the image; the log says why
            log.exception("job %s: no error image", job.scratchdir)
            self.note(job.scratchdir, outcome="error", message=f"sendErrorAsDcm failed: {exc}")

    def _add_sends(
        self, job: Job, success: str, routes: list[rules.Route], notes: list[str]
    ) -> list[int]:
        now = time.time()
        what = f"job {job.bucket} from {job.caller_aet}@{job.caller_ip}, success={success!r}: "
        with self.sessions.begin() as s:
            s.add(
                RoutingLog(
                    at=now,
                    scratchdir=job.scratchdir,
                    outcome="evaluated",
                    message=what + ("; ".join(notes) or "no rule matched"),
                )
            )
            sends = [self._send_row(job, success, r, now) for r in routes]
            s.add_all(sends)
            s.flush()
            for row, route in zip(sends, routes, strict=True):
                s.add(
                    RoutingLog(
                        at=now,
                        scratchdir=job.scratchdir,
                        send_id=row.id,
                        rule=_rule_label(route.rule_index, route.rule_name),
                        destination=route.destination,
                        outcome="queued",
                        message=_queued_message(route),
                    )
                )
            return [row.id for row in sends]

    def _send_row(self, job: Job, success: str, route: rules.Route, now: float) -> Send:
        return Send(
            scratchdir=job.scratchdir,
            rule_index=route.rule_index,
            rule_name=route.rule_name,
            key=route.key,
            success=success,
            directory=route.directory,
            ip=route.ip,
            port=route.port,
            calling_aet=route.calling_aet,
            called_aet=route.called_aet,
            which=json.dumps(route.which) if route.which else "",
            error_image=route.error_image,
            tls=json.dumps(dataclasses.asdict(route.tls)) if route.tls else "",
            state=SendState.PENDING,
            max_attempts=1 + max(0, self.settings.routing_retries),
            next_at=now,
            created_at=now,
        )

    # -- asking and retrying ---------------------------------------------------------
    def sends(self, scratchdir: str | None = None) -> list[dict[str, Any]]:
        query = select(Send).order_by(Send.id)
        if scratchdir is not None:
            query = query.where(Send.scratchdir == scratchdir)
        with self.sessions() as s:
            return [send_view(row) for row in s.scalars(query)]

    def failing_sends(self, limit: int) -> list[dict[str, Any]]:
        """Sends that gave up, or failed at least once and wait to try again; newest first."""
        retrying = (Send.state == SendState.PENDING) & (Send.attempts > 0)
        query = (
            select(Send)
            .where((Send.state == SendState.FAILED) | retrying)
            .order_by(Send.id.desc())
            .limit(limit)
        )
        with self.sessions() as s:
            return [send_view(row) for row in s.scalars(query)]

    def send(self, send_id: int) -> dict[str, Any] | None:
        with self.sessions() as s:
            row = s.get(Send, send_id)
            return send_view(row) if row else None

    def retry(self, send_id: int) -> dict[str, Any] | None:
        """A failed (or waiting) send is tried again now, with a fresh count of tries."""
        with self.sessions.begin() as s:
            row = s.get(Send, send_id)
            if row is None:
                return None
            if row.state in (SendState.SENDING, SendState.DONE):
                raise ValueError(f"send {send_id} is {row.state}; only failed or pending ones")
            row.state, row.attempts, row.next_at = SendState.PENDING, 0, time.time()
            row.finished_at, row.reason = None, ""
            s.add(
                RoutingLog(
                    at=time.time(),
                    scratchdir=row.scratchdir,
                    send_id=row.id,
                    rule=_rule_label(row.rule_index, row.rule_name),
                    destination=_destination(row),
                    outcome="retry",
                    message="retry requested",
                )
            )
        self.wake()
        return self.send(send_id)

    def routing_log(self, limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
        query = select(RoutingLog).order_by(RoutingLog.id.desc()).offset(offset).limit(limit)
        with self.sessions() as s:
            return [log_view(row) for row in s.scalars(query)]

    def note(self, scratchdir: str, **values: Any) -> None:
        with self.sessions.begin() as s:
            s.add(RoutingLog(at=time.time(), scratchdir=scratchdir, **values))

    # -- the workers ---------------------------------------------------------------
    def _loop(self, worker: _Worker) -> None:
        self._local.pulse = worker.pulse
        while True:
            with self._wake:
                if self._stop or self._workers[worker.slot] is not worker:
                    return  # stopped, or replaced by a restart while it hung
            worker.pulse.working()
            try:
                if self.run_once():
                    continue
            except Exception:  # a busy database: the worker carries on shortly
                log.exception("routing: a worker's turn failed")
                time.sleep(1)
                continue
            with self._wake:
                worker.pulse.sleeping()
                if not self._stop and self._ended.empty():
                    self._wake.wait(self._seconds_to_next())

    def run_once(self) -> bool:
        """Run one turn: evaluate one ended job if any, else claim one due send, send it and
        record how it went. True if it did something (a worker then looks again at once)."""
        if self._evaluate_one():
            return True
        row = self._claim()
        if row is None:
            return False
        self._run(row)
        return True

    def _evaluate_one(self) -> bool:
        """Evaluate one job that ended, if any is waiting (a worker's turn)."""
        try:
            scratchdir = self._ended.get_nowait()
        except queue.Empty:
            return False
        self.job_finished(scratchdir)
        return True

    def _claim(self) -> Send | None:
        """Take the oldest due send (several workers: the state change decides who got it)."""
        now = time.time()
        with self.sessions.begin() as s:
            for row in s.scalars(
                select(Send)
                .where(Send.state == SendState.PENDING, Send.next_at <= now)
                .order_by(Send.next_at, Send.id)
                .limit(5)
            ):
                result: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                    update(Send)
                    .where(Send.id == row.id, Send.state == SendState.PENDING)
                    .values(state=SendState.SENDING, attempts=Send.attempts + 1)
                )
                taken = result.rowcount
                if taken:
                    s.refresh(row)
                    return row
        return None

    def _seconds_to_next(self) -> float:
        try:
            with self.sessions() as s:
                next_at = s.scalar(
                    select(func.min(Send.next_at)).where(Send.state == SendState.PENDING)
                )
        except Exception:  # a busy database: look again soon rather than end the worker
            log.exception("routing: could not read the next due time")
            return 1.0
        if next_at is None:
            return IDLE_SECONDS
        return min(IDLE_SECONDS, max(0.0, next_at - time.time()))

    def _run(self, row: Send) -> None:
        try:
            report, total = self._attempt(row)
        except Exception as exc:  # a bug or a full disk must not leave the send "sending"
            log.exception("send %d failed unexpectedly", row.id)
            report, total = sender.SendReport(error=f"internal error: {exc}"), 0
        self._record(row, report, total)

    def _attempt(self, row: Send) -> tuple[sender.SendReport, int]:
        job = self._job(row.scratchdir)
        if job is None:
            return sender.SendReport(error=DELETED), 0
        job_dir = self.job_dir(job)
        files = dicom_files(job_dir / row.directory, json.loads(row.which or "[]"))
        if row.error_image and (job_dir / ERROR_IMAGE).is_file():
            item = probe(job_dir / ERROR_IMAGE, job_dir / ERROR_IMAGE.parent)
            if item is not None:
                files.append(item)
        done = set(json.loads(row.accepted or "[]"))
        todo = [f for f in files if f.name not in done]
        self._set(row.id, nfiles=len(files))
        if not todo:
            return sender.SendReport(), len(files)
        try:
            tls = _tls_context(row.tls, self.settings.home)
        except Invalid as exc:  # a file gone or changed since the table was saved
            return sender.SendReport(error=f"TLS: {exc}"), len(files)
        timeout = self.settings.routing_timeout
        target = sender.Target(row.ip, row.port, row.calling_aet, row.called_aet, timeout, tls)
        progress = _Progress(self, row.id, done)
        report = self._send(target, todo, progress.accepted)
        progress.flush()
        report.accepted = sorted(done | set(report.accepted))
        return report, len(files)

    def job_deleted(self, scratchdir: str) -> int:
        """A deleted job's sends still to come end failed at once (their files are gone)."""
        now = time.time()
        with self.sessions.begin() as s:
            result: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                update(Send)
                .where(Send.scratchdir == scratchdir, Send.state == SendState.PENDING)
                .values(state=SendState.FAILED, finished_at=now, next_at=None, reason=DELETED)
            )
        if result.rowcount:
            self.note(scratchdir, outcome="failed", message=f"{result.rowcount} sends: {DELETED}")
        return result.rowcount

    def _record(self, row: Send, report: sender.SendReport, total: int) -> None:
        now = time.time()
        failed = bool(report.error or report.refused)
        if failed and self._job(row.scratchdir) is None:  # deleted while it was being sent
            report = sender.SendReport(accepted=report.accepted, error=DELETED)
        ok = not report.error and not report.refused
        values: dict[str, Any] = {
            "accepted": json.dumps(report.accepted),
            "naccepted": len(report.accepted),
        }
        if ok:
            values.update(state=SendState.DONE, finished_at=now, reason="", next_at=None)
            outcome, message = "done", f"{len(report.accepted)} of {total} files accepted"
        elif row.attempts < row.max_attempts and report.error != DELETED:
            delay = self._delay(row.attempts)
            values.update(
                state=SendState.PENDING, next_at=now + delay, reason=report.summary(total)
            )
            outcome = "retrying"
            message = f"{_try(row)}: {values['reason']}; next in {delay:g} s"
        else:
            values.update(
                state=SendState.FAILED, finished_at=now, next_at=None, reason=report.summary(total)
            )
            outcome = "failed"
            message = f"{_try(row)}: {values['reason']}; giving up"
        self._set(row.id, **values)
        self.note(
            row.scratchdir,
            send_id=row.id,
            rule=_rule_label(row.rule_index, row.rule_name),
            destination=_destination(row),
            nfiles=len(report.accepted),
            outcome=outcome,
            message=message,
        )
        log.info("send %d (%s) to %s: %s", row.id, row.scratchdir, _destination(row), message)
        reason = str(values.get("reason", ""))
        self.events.publish(SendEnded(row.id, row.scratchdir, _destination(row), outcome, reason))

    def _delay(self, attempts: int) -> float:
        s = self.settings
        return min(s.routing_max_delay, s.routing_retry_delay * 2 ** max(0, attempts - 1))

    def _job(self, scratchdir: str) -> Job | None:
        with self.sessions() as s:
            return s.scalars(select(Job).where(Job.scratchdir == scratchdir)).first()

    def _set(self, send_id: int, **values: Any) -> None:
        with self.sessions.begin() as s:
            s.execute(update(Send).where(Send.id == send_id).values(**values))


@dataclass
class _Worker:
    """A send worker's slot: a restart replaces a hung worker by a newer generation."""

    slot: int
    generation: int
    pulse: Pulse
    thread: threading.Thread = field(default_factory=threading.Thread)


class _Progress:
    """Records accepted files while a send runs, so a crash mid-send does not resend them."""

    def __init__(self, router: Router, send_id: int, done: set[str]) -> None:
        self.router, self.send_id, self.done = router, send_id, set(done)
        self.last = time.monotonic()

    def accepted(self, name: str) -> None:
        self.done.add(name)
        pulse = getattr(self.router._local, "pulse", None)
        if pulse is not None:  # a long send is progress, not a hang
            pulse.working()
        if time.monotonic() - self.last >= PROGRESS_EVERY:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        self.router._set(
            self.send_id, accepted=json.dumps(sorted(self.done)), naccepted=len(self.done)
        )


def _tls_context(stored: str, home: Path) -> ssl.SSLContext | None:
    """The TLS context of a send row (its JSON "TLS" object), made afresh for each try."""
    if not stored:
        return None
    return client_context(ClientFiles(**json.loads(stored)), home)


def _queued_message(route: rules.Route) -> str:
    text = f"key {route.key!r}: {route.directory}"
    if route.error_image:
        text += " with the log image"
    if route.which:
        text += f", which {json.dumps(route.which)}"
    if route.tls:
        text += ", over TLS"
    return text


def _try(row: Send) -> str:
    return f"try {row.attempts}/{row.max_attempts}"


def _rule_label(index: int, name: str) -> str:
    return f"#{index} {name}".strip()


def _destination(row: Send) -> str:
    return f"{row.called_aet}@{row.ip}:{row.port}"


def send_view(row: Send) -> dict[str, Any]:
    return {
        "id": row.id,
        "scratchdir": row.scratchdir,
        "rule": row.rule_index,
        "rule_name": row.rule_name,
        "key": row.key,
        "success": row.success,
        "directory": row.directory,
        "destination": {
            "IP": row.ip,
            "PORT": row.port,
            "AETitleSender": row.calling_aet,
            "AETitleTo": row.called_aet,
        },
        "which": json.loads(row.which) if row.which else None,
        "sendErrorAsDcm": bool(row.error_image),
        "TLS": json.loads(row.tls) if row.tls else None,
        "state": row.state,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "next_at": row.next_at if row.state == SendState.PENDING else None,
        "created_at": row.created_at,
        "finished_at": row.finished_at,
        "files": row.nfiles,
        "accepted": row.naccepted,
        "reason": row.reason,
    }


def log_view(row: RoutingLog) -> dict[str, Any]:
    return {
        "id": row.id,
        "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.at)),
        "at": row.at,
        "scratchdir": row.scratchdir,
        "send": row.send_id,
        "rule": row.rule,
        "destination": row.destination,
        "files": row.nfiles,
        "outcome": row.outcome,
        "message": row.message,
    }
