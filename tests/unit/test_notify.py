"""The notifier's choices (which events, what a message holds, retries) with a fake POST;
the real HTTP delivery is in tests/integration/test_monitoring.py."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from magickbox.config import Settings
from magickbox.events import DiskLow, EventBus, JobFinished, SendEnded
from magickbox.notify import OUTBOX, Notifier

JOB = {
    "scratchdir": "tmp.abc",
    "bucket": "Seg",
    "state": "failed",
    "reason": "2 of 4 files accepted (e.g. 1.2.840.99.1.2.3.dcm: status 0xA700)",
    "study_uid": "1.2.840.99.7",
    "jobname": "Doe^John",
    "description": "knee",
}
STUDY = {"PatientID": "P-1", "PatientName": "Doe^John"}


class FakeHooks:
    """Answers each POST with the next status of ``answers`` (then 200) and records it."""

    def __init__(self, *answers: int) -> None:
        self.answers = list(answers)
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.seen = threading.Condition()

    def __call__(self, url: str, message: dict[str, Any], _timeout: float) -> int:
        with self.seen:
            self.posts.append((url, message))
            self.seen.notify_all()
        return self.answers.pop(0) if self.answers else 200

    def wait(self, n: int) -> list[tuple[str, dict[str, Any]]]:
        with self.seen:
            assert self.seen.wait_for(lambda: len(self.posts) >= n, timeout=10), self.posts
            return list(self.posts)


def notifier(tmp_path: Path, hooks: FakeHooks, **settings: Any) -> tuple[Notifier, EventBus]:
    values = {"home": tmp_path, "notify": ["http://a.example/x", "http://b.example/y"],
              "notify_retry_delay": 0.01, **settings}  # fmt: skip
    bus = EventBus()
    n = Notifier(Settings(**values), bus, lambda _sd: dict(JOB), lambda _sd: dict(STUDY), hooks)
    n.start()
    return n, bus


def test_without_phi_no_patient_or_study_data(tmp_path: Path) -> None:
    hooks = FakeHooks()
    n, bus = notifier(tmp_path, hooks)
    bus.publish(JobFinished("tmp.abc", "Seg", "failed"))
    posts = hooks.wait(2)
    n.stop()
    assert sorted(url for url, _ in posts) == ["http://a.example/x", "http://b.example/y"]
    job = posts[0][1]["job"]
    assert posts[0][1]["event"] == "job_failed" and job["bucket"] == "Seg"
    assert {"study_uid", "jobname", "description", "study"}.isdisjoint(job)
    assert "1.2.840" not in job["reason"] and "<uid>.dcm: status 0xA700" in job["reason"]


def test_with_phi_the_study_comes_along(tmp_path: Path) -> None:
    hooks = FakeHooks()
    n, bus = notifier(tmp_path, hooks, notify_phi=True, notify=["http://a.example/x"])
    bus.publish(JobFinished("tmp.abc", "Seg", "done"))
    (_url, message), = hooks.wait(1)  # fmt: skip
    n.stop()
    assert message["event"] == "job_done"
    assert message["job"]["study_uid"] == JOB["study_uid"]
    assert message["job"]["study"] == STUDY and message["job"]["reason"] == JOB["reason"]


def test_events_not_chosen_and_retrying_sends_are_not_told(tmp_path: Path) -> None:
    hooks = FakeHooks()
    n, bus = notifier(tmp_path, hooks, notify=["http://a.example/x"],
                      notify_events=["send_failed", "disk_low"])  # fmt: skip
    bus.publish(JobFinished("tmp.abc", "Seg", "failed"))
    bus.publish(SendEnded(1, "tmp.abc", "PACS@10.0.0.5:104", "retrying", "refused"))
    bus.publish(SendEnded(1, "tmp.abc", "PACS@10.0.0.5:104", "failed", "refused"))
    bus.publish(DiskLow(5, 100))
    posts = hooks.wait(2)
    n.stop()
    assert [m["event"] for _, m in posts] == ["send_failed", "disk_low"]
    assert posts[0][1]["send"]["destination"] == "PACS@10.0.0.5:104"
    assert posts[1][1]["disk"]["free_percent"] == 5.0


def test_a_failing_webhook_is_retried_then_given_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = FakeHooks(500, 503, 500, 500)
    n, bus = notifier(tmp_path, hooks, notify=["http://a.example/x"], notify_retries=2)
    bus.publish(DiskLow(5, 100))
    hooks.wait(3)
    n.stop()
    assert len(hooks.posts) == 3 and n.delivered == 0  # the first try and two retries
    assert "giving up after 3 tries" in caplog.text


def test_no_url_no_worker(tmp_path: Path) -> None:
    hooks = FakeHooks()
    n, bus = notifier(tmp_path, hooks, notify=[])
    bus.publish(DiskLow(5, 100))
    n.stop()
    assert hooks.posts == [] and n._thread is None


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [("notify", ["ftp://x"], "not an http:// or https:// URL"),
     ("notify_events", ["job_lost"], "unknown ['job_lost']")],
)  # fmt: skip
def test_bad_settings_are_named(tmp_path: Path, name: str, value: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        Settings(home=tmp_path, **{name: value})


def test_the_outbox_keeps_what_is_undelivered_for_the_urls_still_configured(
    tmp_path: Path,
) -> None:
    first = FakeHooks(500, 500)
    n, bus = notifier(tmp_path, first, notify_retry_delay=3600)
    bus.publish(DiskLow(5, 100))
    first.wait(2)  # each URL refused once; the retries wait an hour
    n.stop()
    kept = json.loads((tmp_path / OUTBOX).read_text())
    assert sorted(row["url"] for row in kept) == ["http://a.example/x", "http://b.example/y"]
    assert {row["tries"] for row in kept} == {1}

    again = FakeHooks()
    n, _bus = notifier(tmp_path, again, notify=["http://b.example/y"])  # a was removed
    ((url, message),) = again.wait(1)
    assert url == "http://b.example/y" and message == kept[1]["message"]
    wait_until(lambda: not (tmp_path / OUTBOX).exists())
    n.stop()
    assert len(again.posts) == 1


def wait_until(probe: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
