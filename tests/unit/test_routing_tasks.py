"""Durable sends without a network or threads: the Router gets a fake sender that answers as
told, and the test runs the workers' turns itself with run_once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from sqlalchemy import delete

from magickbox.config import Settings
from magickbox.jobs.db import Job, State, open_database
from magickbox.routing import sender
from magickbox.routing.tasks import Router
from magickbox.testing.dicomgen import write_study


class FakeSender:
    """Stands in for sender.send: accepts every file, or refuses the first one offered."""

    def __init__(self) -> None:
        self.offered: list[list[str]] = []
        self.targets: list[sender.Target] = []
        self.refuse_first = False
        self.crash = False
        self.before_send: Callable[..., None] | None = None  # e.g. the job vanishes mid-send

    def __call__(
        self,
        target: sender.Target,
        files: Sequence[sender.DicomFile],
        on_accepted: Callable[[str], None] | None = None,
    ) -> sender.SendReport:
        if self.crash:
            raise OSError("disk on fire")
        if self.before_send is not None:
            self.before_send(target)
        self.targets.append(target)
        self.offered.append([f.name for f in files])
        report = sender.SendReport()
        for i, item in enumerate(files):
            if i == 0 and self.refuse_first:
                report.refused[item.name] = "status 0xA700"
                continue
            report.accepted.append(item.name)
            if on_accepted:
                on_accepted(item.name)
        return report


@pytest.fixture
def fake() -> FakeSender:
    return FakeSender()


@pytest.fixture
def router(tmp_path: Path, fake: FakeSender) -> Router:
    settings = Settings(
        home=tmp_path, routing_retries=2, routing_retry_delay=10.0, routing_max_delay=15.0
    )
    sessions = open_database(f"sqlite:///{tmp_path / 'mb.db'}")
    (tmp_path / "routing.json").write_text(
        json.dumps(
            {
                "routing": [
                    {
                        "send": [
                            {
                                "succ": {
                                    "IP": "127.0.0.1",
                                    "PORT": 104,
                                    "AETitleSender": "A",
                                    "AETitleTo": "B",
                                }
                            }
                        ]
                    }
                ]
            }
        )
    )
    return Router(settings, sessions, lambda job: tmp_path / "scratch" / job.scratchdir, fake)


def add_job(router: Router, name: str, finished_at: float, success: str = "success") -> None:
    job_dir = router.settings.home / "scratch" / name
    write_study(job_dir / "OUTPUT", n_images=3, rows=8, cols=8)
    with router.sessions.begin() as s:
        s.add(
            Job(
                scratchdir=name,
                bucket="P",
                state=State.DONE,
                received_at=1.0,
                finished_at=finished_at,
                success=success,
            )
        )


def test_a_job_that_ended_unrouted_before_a_crash_is_routed_at_start(router: Router) -> None:
    add_job(router, "tmp.aaaaaaaa", time.time() - 60)
    add_job(router, "tmp.bbbbbbbb", time.time() - 60)
    router.job_finished("tmp.bbbbbbbb")  # routed before the crash
    add_job(router, "tmp.cccccccc", time.time() - 3 * 86400)  # long ago: left alone
    assert router.route_missed() == 1
    assert [s["scratchdir"] for s in router.sends()] == ["tmp.bbbbbbbb", "tmp.aaaaaaaa"]
    assert router.route_missed() == 0  # evaluated once only


def test_failed_tries_back_off_then_fail_and_accepted_files_are_not_resent(
    router: Router, fake: FakeSender
) -> None:
    add_job(router, "tmp.aaaaaaaa", time.time())
    (send_id,) = router.job_finished("tmp.aaaaaaaa")
    fake.refuse_first = True
    delays = []
    for _ in range(3):
        assert router.run_once()
        view = router.send(send_id)
        assert view is not None
        if view["state"] == "pending":
            delays.append(round(view["next_at"] - time.time()))
            assert not router.run_once()  # not due yet: nothing to do
            router._set(send_id, next_at=time.time())  # due now: no waiting in a test
    assert delays == [10, 15]  # 10 s, then doubled but capped at 15 s
    assert view is not None
    assert (view["state"], view["attempts"], view["accepted"]) == ("failed", 3, 2)
    assert "1 refused" in view["reason"]
    assert [len(names) for names in fake.offered] == [3, 1, 1]  # only the refused file again
    assert not router.run_once()  # failed sends are not picked up again

    fake.refuse_first = False
    router.retry(send_id)
    assert router.run_once()
    view = router.send(send_id)
    assert view is not None and (view["state"], view["accepted"]) == ("done", 3)
    outcomes = [e["outcome"] for e in router.routing_log()]
    assert outcomes[:3] == ["done", "retry", "failed"]  # newest first


def test_an_ended_job_is_evaluated_in_one_turn_and_sent_in_the_next(
    router: Router, fake: FakeSender
) -> None:
    add_job(router, "tmp.aaaaaaaa", time.time())
    router.job_ended("tmp.aaaaaaaa")
    assert router.sends() == []  # job_ended only queues: the reporting thread never waits
    assert router.run_once()  # evaluates the table
    (view,) = router.sends()
    assert (view["state"], fake.offered) == ("pending", [])
    assert router.run_once()  # sends
    assert not router.run_once()  # nothing left
    (view,) = router.sends()
    assert (view["state"], view["files"], view["accepted"]) == ("done", 3, 3)
    assert [len(names) for names in fake.offered] == [3]
    assert fake.targets[0] == sender.Target("127.0.0.1", 104, "A", "B", 30.0)


def test_a_sender_that_raises_leaves_the_send_to_be_retried_not_stuck_sending(
    router: Router, fake: FakeSender
) -> None:
    add_job(router, "tmp.aaaaaaaa", time.time())
    (send_id,) = router.job_finished("tmp.aaaaaaaa")
    fake.crash = True
    assert router.run_once()
    view = router.send(send_id)
    assert view is not None and view["state"] == "pending"
    assert "internal error: disk on fire" in view["reason"]


def test_a_send_of_a_deleted_job_fails_at_once(router: Router, fake: FakeSender) -> None:
    add_job(router, "tmp.aaaaaaaa", time.time())
    (send_id,) = router.job_finished("tmp.aaaaaaaa")
    with router.sessions.begin() as s:
        s.execute(delete(Job).where(Job.scratchdir == "tmp.aaaaaaaa"))
    assert router.run_once()
    view = router.send(send_id)
    assert view is not None and (view["state"], view["attempts"]) == ("failed", 1)
    assert fake.offered == []


def test_deleting_a_job_fails_its_pending_sends_at_once(router: Router, fake: FakeSender) -> None:
    add_job(router, "tmp.aaaaaaaa", time.time())
    (send_id,) = router.job_finished("tmp.aaaaaaaa")
    fake.refuse_first = True
    assert router.run_once()  # one file refused: pending, to be tried again later
    assert router.send(send_id)["state"] == "pending"  # type: ignore[index]
    with router.sessions.begin() as s:
        s.execute(delete(Job).where(Job.scratchdir == "tmp.aaaaaaaa"))
    assert router.job_deleted("tmp.aaaaaaaa") == 1
    view = router.send(send_id)
    assert view is not None and (view["state"], view["reason"]) == ("failed", "the job was deleted")
    assert router.job_deleted("tmp.aaaaaaaa") == 0  # finished sends are left as they are
    assert router.routing_log()[0]["message"] == "1 sends: the job was deleted"


def test_a_send_whose_job_goes_while_it_is_sent_is_not_retried(
    router: Router, fake: FakeSender
) -> None:
    add_job(router, "tmp.aaaaaaaa", time.time())
    (send_id,) = router.job_finished("tmp.aaaaaaaa")

    def vanish(*_args: object) -> None:
        with router.sessions.begin() as s:
            s.execute(delete(Job).where(Job.scratchdir == "tmp.aaaaaaaa"))

    fake.refuse_first, fake.before_send = True, vanish
    assert router.run_once()
    view = router.send(send_id)
    assert view is not None and view["state"] == "failed"
    assert "the job was deleted" in view["reason"]
