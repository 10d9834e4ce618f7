"""Webhooks: a JSON POST to each ``notify`` URL when a job fails or is done, a send fails
for good, or the disk runs low (``notify_events`` chooses which).

Handlers only queue the event (they run on the publisher's thread); one worker builds the
message and delivers it, retrying a URL that fails with a doubling delay. A message not
yet delivered is kept in ``<home>/notify-outbox.json`` (rewritten whenever that changes),
so its tries go on after a stop, a crash or an upgrade, to the URLs still configured. Without
``notify_phi`` a message carries only the box's own facts: no patient or study data (no
study UID, job name or description; UIDs in reasons are masked).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from magickbox.config import Settings
from magickbox.events import DiskLow, EventBus, JobFinished, SendEnded

log = logging.getLogger(__name__)

OUTBOX = "notify-outbox.json"  # in the home: messages still to be delivered
UID_LIKE = re.compile(r"\b\d+(?:\.\d+){3,}\b")  # SOP/Study UIDs, e.g. in file names of reasons

# What the notifier needs of a job: its facts as plain values (None: gone), and with
# notify_phi its patient and study tags.
JobFacts = Callable[[str], dict[str, Any] | None]
StudyFacts = Callable[[str], dict[str, Any]]
Post = Callable[[str, dict[str, Any], float], int]  # (url, message, timeout) -> HTTP status


def http_post(url: str, message: dict[str, Any], timeout: float) -> int:
    return httpx.post(url, json=message, timeout=timeout).status_code


@dataclass(order=True)
class _Delivery:
    """A message for one URL, or (no URL yet) an event whose message is still to be built."""

    due: float
    seq: int
    url: str = field(compare=False)
    message: dict[str, Any] = field(compare=False)
    tries: int = field(default=0, compare=False)
    kind: str = field(default="", compare=False)
    build: Callable[[], dict[str, Any]] | None = field(default=None, compare=False)


class Notifier:
    def __init__(
        self,
        settings: Settings,
        events: EventBus,
        job_facts: JobFacts,
        study_facts: StudyFacts,
        post: Post = http_post,
    ) -> None:
        self.settings = settings
        self.job_facts, self.study_facts, self._post = job_facts, study_facts, post
        self._todo: list[_Delivery] = []  # a heap by due time
        self._outbox = Path(settings.home) / OUTBOX
        self._undelivered: dict[int, _Delivery] = {}  # built messages not yet delivered, by seq
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.delivered = 0  # messages a webhook accepted (2xx)
        if settings.notify:
            events.subscribe(JobFinished, self._job_finished)
            events.subscribe(SendEnded, self._send_ended)
            events.subscribe(DiskLow, self._disk_low)

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        if not self.settings.notify:
            return
        self._stop = False
        self._load_outbox()
        self._thread = threading.Thread(target=self._loop, name="notify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            left = len(self._todo)
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.notify_timeout + 5)
        self._build_left()
        if left:
            log.warning("notify: %d notifications not delivered before the stop; kept in %s "
                        "for the next start", left, self._outbox)  # fmt: skip

    # -- events in (quick: they only queue) ------------------------------------------
    def _job_finished(self, event: JobFinished) -> None:
        kind = "job_failed" if event.state == "failed" else "job_done"
        self._queue(kind, lambda: {"job": self._job(event.scratchdir)})

    def _send_ended(self, event: SendEnded) -> None:
        if event.outcome != "failed":
            return  # a retrying send is not news yet
        send = {"id": event.send_id, "destination": event.destination,
                "reason": self._clean(event.reason)}  # fmt: skip
        self._queue("send_failed", lambda: {"send": send, "job": self._job(event.scratchdir)})

    def _disk_low(self, event: DiskLow) -> None:
        percent = 100.0 * event.free_bytes / event.total_bytes if event.total_bytes else 0.0
        disk = {"path": str(self.settings.scratch), "free_bytes": event.free_bytes,
                "total_bytes": event.total_bytes, "free_percent": round(percent, 2)}  # fmt: skip
        self._queue("disk_low", lambda: {"disk": disk})

    def _queue(self, kind: str, facts: Callable[[], dict[str, Any]]) -> None:
        if kind not in self.settings.notify_events:
            return
        # Built by the worker (a database read, a DICOM header): the publisher moves on.
        item = _Delivery(time.time(), next(self._seq), "", {}, kind=kind, build=facts)
        with self._cond:
            heapq.heappush(self._todo, item)
            self._cond.notify_all()

    # -- the message -----------------------------------------------------------------
    def message(self, kind: str, facts: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        box = {"aet": s.aet, "host": socket.gethostname(), "web_port": s.web_port,
               "dicom_port": s.dicom_port}  # fmt: skip
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return {"event": kind, "time": when, "box": box, **facts}

    def _job(self, scratchdir: str) -> dict[str, Any] | None:
        job = self.job_facts(scratchdir)
        if job is None:
            return {"scratchdir": scratchdir}
        if not self.settings.notify_phi:
            for key in ("study_uid", "jobname", "description"):
                job.pop(key, None)
            job["reason"] = self._clean(str(job.get("reason", "")))
            return job
        return {**job, "study": self.study_facts(scratchdir)}

    def _clean(self, text: str) -> str:
        return text if self.settings.notify_phi else UID_LIKE.sub("<uid>", text)

    # -- the worker ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._todo or self._todo[0].due > time.time()):
                    wait = self._todo[0].due - time.time() if self._todo else None
                    self._cond.wait(wait)
                if self._stop:
                    return
                item = heapq.heappop(self._todo)
            try:
                self._handle(item)
            except Exception:  # one bad message must not end the notifier
                log.exception("notify: a notification failed")

    def _handle(self, item: _Delivery) -> None:
        if item.build is not None:  # a new event: one delivery per URL
            for delivery in self._built(item):
                self._deliver(delivery)
            return
        self._deliver(item)

    def _built(self, item: _Delivery) -> list[_Delivery]:
        """The event's message, one delivery per URL, kept in the outbox until delivered."""
        assert item.build is not None
        message = self.message(item.kind, item.build())
        deliveries = [_Delivery(time.time(), next(self._seq), url, message)
                      for url in self.settings.notify]  # fmt: skip
        with self._cond:
            self._undelivered.update((d.seq, d) for d in deliveries)
            self._save_outbox()
        return deliveries

    def _deliver(self, item: _Delivery) -> None:
        item.tries += 1
        try:
            status = self._post(item.url, item.message, self.settings.notify_timeout)
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = str(exc) or type(exc).__name__
        what = f"notify {item.message['event']} to {item.url}"
        if not error:
            self.delivered += 1
            log.info("%s: delivered", what)
            self._settled(item)
            return
        if item.tries > self.settings.notify_retries:
            log.error("%s: %s; giving up after %d tries", what, error, item.tries)
            self._settled(item)
            return
        delay = self.settings.notify_retry_delay * 2 ** (item.tries - 1)
        log.warning("%s: %s; try %d again in %g s", what, error, item.tries + 1, delay)
        with self._cond:
            item.due = time.time() + delay
            heapq.heappush(self._todo, item)
            self._save_outbox()  # its count of tries
            self._cond.notify_all()

    def _settled(self, item: _Delivery) -> None:
        """Delivered or given up: out of the outbox."""
        with self._cond:
            self._undelivered.pop(item.seq, None)
            self._save_outbox()

    # -- the outbox: what is not delivered survives the process -----------------------
    def _save_outbox(self) -> None:
        """Write the undelivered messages (caller holds ``_cond``); a failed write is a
        warning, the messages stay in memory."""
        rows = [{"url": d.url, "message": d.message, "tries": d.tries}
                for d in sorted(self._undelivered.values(), key=lambda d: d.seq)]  # fmt: skip
        try:
            if not rows:
                self._outbox.unlink(missing_ok=True)
                return
            part = self._outbox.with_name(f".{OUTBOX}.part")
            part.write_text(json.dumps(rows))
            os.replace(part, self._outbox)
        except OSError as exc:
            log.warning("notify: cannot keep undelivered messages in %s: %s", self._outbox, exc)

    def _load_outbox(self) -> None:
        """Queue what a previous run left undelivered, to the URLs still configured."""
        try:
            rows = json.loads(self._outbox.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("notify: %s is unreadable (%s): its messages are lost", self._outbox, exc)
            return
        now, kept = time.time(), 0
        with self._cond:
            for row in rows if isinstance(rows, list) else []:
                if not _outbox_row(row) or row["url"] not in self.settings.notify:
                    continue  # not one of ours, or a URL no longer configured
                item = _Delivery(now, next(self._seq), row["url"], row["message"],
                                 tries=row.get("tries", 0))  # fmt: skip
                self._undelivered[item.seq] = item
                heapq.heappush(self._todo, item)
                kept += 1
            self._save_outbox()
        log.info("notify: %d undelivered notifications from before the start to deliver", kept)

    def _build_left(self) -> None:
        """At the stop: events whose message was not built yet go into the outbox too."""
        with self._cond:
            unbuilt = [item for item in self._todo if item.build is not None]
            self._todo = [item for item in self._todo if item.build is None]
        for item in unbuilt:
            try:
                self._built(item)
            except Exception:  # e.g. the database gone: that one is lost, say so
                log.exception("notify: a %s notification could not be kept", item.kind)


def _outbox_row(row: Any) -> bool:
    """Whether ``row`` of the outbox is a delivery: a URL, a message with its event, tries."""
    return (
        isinstance(row, dict)
        and isinstance(row.get("url"), str)
        and isinstance(row.get("message"), dict)
        and "event" in row["message"]
        and isinstance(row.get("tries", 0), int)
    )
