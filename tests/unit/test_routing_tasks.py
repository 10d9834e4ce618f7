"""Durable sends without a network: the sender is replaced by a fake that answers as told."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from magickbox.config import Settings
from magickbox.jobs.db import Job, State, open_database
from magickbox.routing import sender, tasks
from magickbox.routing.tasks import Router
from magickbox.testing.dicomgen import write_study


@pytest.fixture
def router(tmp_path: Path) -> Router:
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
    return Router(settings, sessions, lambda job: tmp_path / "scratch" / job.scratchdir)


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
    router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_job(router, "tmp.aaaaaaaa", time.time())
    (send_id,) = router.job_finished("tmp.aaaaaaaa")
    offered: list[list[str]] = []

    def refuse_one(target, files, on_accepted=None):  # type: ignore[no-untyped-def]
        offered.append([f.name for f in files])
        report = sender.SendReport(refused={files[0].name: "status 0xA700"})
        for f in files[1:]:
            report.accepted.append(f.name)
        return report

    monkeypatch.setattr(tasks.sender, "send", refuse_one)
    delays = []
    for _ in range(3):
        row = router._claim()
        assert row is not None and row.id == send_id
        router._run(row)
        view = router.send(send_id)
        assert view is not None
        if view["state"] == "pending":
            delays.append(round(view["next_at"] - time.time()))
            router._set(send_id, next_at=time.time())  # due now: no waiting in a test
    assert delays == [10, 15]  # 10 s, then doubled but capped at 15 s
    assert (view["state"], view["attempts"], view["accepted"]) == ("failed", 3, 2)
    assert "1 refused" in view["reason"]
    assert [len(names) for names in offered] == [3, 1, 1]  # only the refused file again
    assert router._claim() is None  # failed sends are not picked up again

    monkeypatch.setattr(
        tasks.sender,
        "send",
        lambda t, files, cb=None: sender.SendReport(accepted=[f.name for f in files]),
    )
    router.retry(send_id)
    router._run(router._claim())  # type: ignore[arg-type]
    view = router.send(send_id)
    assert view is not None and (view["state"], view["accepted"]) == ("done", 3)
    outcomes = [e["outcome"] for e in router.routing_log()]
    assert outcomes[:3] == ["done", "retry", "failed"]  # newest first
