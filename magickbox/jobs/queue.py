"""The queue: runs queued jobs, first in first out per bucket, buckets side by side.

It holds no state of its own worth keeping: the database says what is queued and
running, so a restart picks up exactly where the box stopped. It wakes when a job is
queued or finishes (no polling); a slow timer is only a safety net.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from magickbox.buckets import container, registry
from magickbox.buckets.runner import (
    Executor,
    RunRequest,
    RunResult,
    build_request,
    kill_leftover,
)
from magickbox.events import JobFinished, JobQueued, JobStarted
from magickbox.jobfolder import JobFolder, RunFacts
from magickbox.jobs.db import Job, State
from magickbox.jobs.store import JobStore
from magickbox.pulse import Pulse

log = logging.getLogger(__name__)

SAFETY_NET_SECONDS = 30.0


class Dispatcher:
    def __init__(self, store: JobStore, executor: Executor) -> None:
        self.store = store
        self.settings = store.settings
        self.executor = executor
        self._running: dict[str, str] = {}  # scratchdir -> bucket, for jobs this process started
        self._started: dict[str, float] = {}  # scratchdir -> when it started (monotonic)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.pulse = Pulse()  # the heartbeat watches the loop through it
        self._generation = 0  # a restart in place abandons a hung loop: it ends when it wakes
        self._thread = self._new_thread()
        self.events = store.events  # JobFinished is published here
        self.events.subscribe(JobQueued, lambda _event: self.wake())

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._wake.set()  # jobs queued before this start (a restart) run now, not at the timer
        self._thread.start()

    def stop(self) -> None:
        """No new job starts; running ones are stopped and go back to the queue as they were
        (the executor reports them ``stopped``), so the next start runs them again."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():  # a launch under way ends before the executor stops
            self._thread.join(timeout=10)
        self.executor.shutdown()

    def wake(self) -> None:
        self._wake.set()

    def _new_thread(self) -> threading.Thread:
        gen = self._generation
        return threading.Thread(target=self._loop, args=(gen,), name="dispatcher", daemon=True)

    def problem(self, timeout: float) -> str:
        """Why the queue's loop is not working ("" when it is): dead, or it did not come
        round within ``timeout`` s of a wake-up (hung in a scheduling pass)."""
        if self._stop.is_set():
            return "stopped"
        if not self._thread.is_alive():
            return "its thread has ended"
        asked = time.monotonic()
        self.wake()
        if not self.pulse.came_round_since(asked, timeout):
            return f"busy for {self.pulse.busy_for():.0f} s without coming round (hung)"
        return ""

    def restart(self) -> None:
        """Run the loop on a new thread; a hung old one ends when it comes back."""
        self._generation += 1
        self._stop.clear()
        self._thread = self._new_thread()
        self._thread.start()
        self.wake()

    def recover(self) -> None:
        """Jobs that were running when the box died: re-run them or mark them failed."""
        interrupted = self.store.running_jobs()
        adopt = getattr(self.executor, "adopt", None)  # e.g. Slurm: jobs that outlive the box
        if adopt is not None and interrupted:
            dirs = {j.scratchdir: self.store.job_dir(j) for j in interrupted}
            adopted = adopt(dirs, self._finished)
            with self._lock:
                self._running.update(
                    {j.scratchdir: j.bucket for j in interrupted if j.scratchdir in adopted}
                )
            interrupted = [j for j in interrupted if j.scratchdir not in adopted]
        self._remove_leftover_containers(bool(interrupted))
        for job in interrupted:
            job_dir = self.store.job_dir(job)
            kill_leftover(job_dir)
            if self.settings.rerun_interrupted and job.attempts < self.settings.max_attempts:
                note = "the box restarted during this job: running it again"
                self.store.requeue_interrupted(job, note)
            else:
                self.store.fail(job.scratchdir, "interrupted by a restart of the box")
                self._publish_finished(job.scratchdir, job.bucket)  # routed like any failed job
        for job in self.store.received_jobs():  # a crash came between receipt and queueing
            self.store.queue_received(job)

    def _remove_leftover_containers(self, jobs_interrupted: bool) -> None:
        """Containers this home started before a crash: gone before a job runs again."""
        buckets = registry.all_buckets(self.settings.streams).values()
        if not jobs_interrupted and not any(b.info.get("image") for b in buckets):
            return  # no container can be left over: spare the engine call
        try:
            engine = container.find_engine(self.settings)
        except container.ContainerError:
            return
        try:
            removed = container.remove_leftovers(engine, self.settings.home)
        except Exception as exc:  # the box must start even when the engine misbehaves
            log.warning("could not look for leftover containers: %s", exc)
            return
        if removed:
            log.info("removed %d containers left by a crash: %s", len(removed), removed)

    # -- scheduling ----------------------------------------------------------------
    def _loop(self, generation: int) -> None:
        # A loop replaced while it hung ends as soon as it comes back, before it waits.
        while not self._stop.is_set() and generation == self._generation:
            self.pulse.sleeping()
            self._wake.wait(self._next_wait())
            self._wake.clear()
            if self._stop.is_set() or generation != self._generation:
                return
            self.pulse.working()
            try:
                self._schedule()
            except Exception:  # a bad moment (database busy, disk full) must not stop the queue
                log.exception("queue: scheduling failed; trying again shortly")
                time.sleep(1)
                self._wake.set()

    def _schedule(self) -> None:
        for bucket_name, states in self.store.queue_counts().items():
            if not states.get(State.QUEUED):
                continue
            bucket = registry.enabled_bucket(self.settings.streams, bucket_name)
            limit = bucket.concurrency(self.settings.concurrency) if bucket else 1
            while self._running_count(bucket_name) < limit:
                job = self.store.claim_next(bucket_name)
                if job is None:
                    break
                if bucket is None:
                    self._fail(job, f"bucket {bucket_name!r} is not installed or not enabled")
                    continue
                try:
                    self._launch(job, bucket)
                except Exception as exc:  # e.g. a full disk: the job must not stay "running"
                    log.exception("job %s: could not be started", job.scratchdir)
                    with self._lock:
                        self._running.pop(job.scratchdir, None)
                        self._started.pop(job.scratchdir, None)
                    self._fail(job, f"could not be started: {exc}")

    def _next_wait(self) -> float:
        """Until the next held job (merge_seconds) may start, at most the safety net."""
        try:
            due = self.store.next_release()
        except Exception:  # the database is busy: the safety net will do
            return SAFETY_NET_SECONDS
        if due is None:
            return SAFETY_NET_SECONDS
        return min(SAFETY_NET_SECONDS, max(0.05, due - time.time()))

    def _running_count(self, bucket: str) -> int:
        with self._lock:
            return sum(1 for b in self._running.values() if b == bucket)

    def _launch(self, job: Job, bucket: registry.Bucket) -> None:
        job_dir = self.store.job_dir(job)
        memory = self.settings.memory / bucket.aetitle
        memory.mkdir(parents=True, exist_ok=True)
        folder = JobFolder(job_dir)
        self.store.write_series_manifest(job)  # before the environment, which names it
        facts = folder.environment(
            RunFacts(
                job.scratchdir,
                job.bucket,
                job.caller_aet,
                job.caller_ip,
                job.study_uid,
                job.jobname,
            ),
            memory,
            self.settings.home,
        )
        request = build_request(
            bucket.info,
            bucket.work_sh,
            self.settings,
            facts,
            job_dir,
            json.loads(job.arguments or "[]"),
            bucket.timeout(self.settings.bucket_timeout),
        )
        with self._lock:
            self._running[job.scratchdir] = job.bucket
            self._started[job.scratchdir] = time.monotonic()
        log.info("job %s: running bucket %s", job.scratchdir, bucket.aetitle)
        waited = max(0.0, (job.started_at or 0.0) - (job.queued_at or job.received_at))
        self.events.publish(JobStarted(job.scratchdir, job.bucket, waited))
        self.executor.start(request, self._finished)

    def _fail(self, job: Job, reason: str) -> None:
        log.warning("job %s failed: %s", job.scratchdir, reason)
        self.store.fail(job.scratchdir, reason)
        self._publish_finished(job.scratchdir, job.bucket)

    def _finished(self, req: RunRequest, result: RunResult) -> None:
        with self._lock:
            started = self._started.pop(req.scratchdir, None)
        if result.stopped:
            self._put_back(req)
            return
        seconds = time.monotonic() - started if started is not None else None
        try:
            values = outcome(req.job_dir, result)
            self.store.finish(req.scratchdir, values)
            self._log_end(req.scratchdir, values)
        except Exception:
            log.exception("job %s: could not record its end", req.scratchdir)
        else:
            self._publish_finished(req.scratchdir, req.env.get("MB_AETITLE_CALLED", ""),
                                   str(values["state"]), seconds)  # fmt: skip
        finally:
            with self._lock:
                self._running.pop(req.scratchdir, None)
            self.wake()

    def _log_end(self, scratchdir: str, values: dict[str, object]) -> None:
        """One line per job in the server's log: people watching it see jobs end."""
        job = self.store.get(scratchdir)
        took = ""
        if job is not None and job.started_at is not None and job.finished_at is not None:
            took = f" in {job.finished_at - job.started_at:.1f} s"
        if values["state"] == State.DONE:
            log.info("job %s (%s) done%s", scratchdir, job.bucket if job else "?", took)
        else:
            reason = values["reason"] or "no reason given"
            log.warning("job %s (%s) failed%s: %s", scratchdir, job.bucket if job else "?",
                        took, reason)  # fmt: skip

    def _put_back(self, req: RunRequest) -> None:
        """A run the box's stop cut short: queued again, the attempt not spent, not routed."""
        try:
            job = self.store.get(req.scratchdir)
            if job is not None:
                note = "the box was stopped during this job: it runs again at the next start"
                self.store.requeue_stopped(job, note)
        except Exception:
            log.exception("job %s: could not put it back in the queue", req.scratchdir)
        finally:
            with self._lock:
                self._running.pop(req.scratchdir, None)

    def _publish_finished(
        self, scratchdir: str, bucket: str, state: str = State.FAILED, seconds: float | None = None
    ) -> None:
        self.events.publish(JobFinished(scratchdir, bucket, state, seconds))

    def cancel(self, scratchdir: str) -> bool:
        return self.executor.cancel(scratchdir)

    def is_running_here(self, scratchdir: str) -> bool:
        with self._lock:
            return scratchdir in self._running


def read_success(job_dir: Path) -> str | None:
    """proc.json's ``success`` value (the job folder knows where a bucket may put it)."""
    return JobFolder(job_dir).take_success()


def outcome(job_dir: Path, result: RunResult) -> dict[str, object]:
    """The row's new values after a run: the exit code and proc.json decide done or failed."""
    success = read_success(job_dir)
    if result.reason:
        state, reason = State.FAILED, result.reason
    elif success is None and result.exit_code != 0:
        state, reason = State.FAILED, f"work.sh exited with code {result.exit_code}"
    elif success is not None and success.lower() in ("failed", "error"):
        state, reason = State.FAILED, f"proc.json says {success}"
    else:
        state, reason = State.DONE, ""
    JobFolder(job_dir).log_line(
        f"finished: {state} (exit code {result.exit_code}) {reason}".rstrip()
    )
    return {
        "state": state,
        "exit_code": result.exit_code,
        "reason": reason,
        "success": success or "",
        "finished_at": result.finished_at,
        "log_size": JobFolder(job_dir).log_size(),
    }
