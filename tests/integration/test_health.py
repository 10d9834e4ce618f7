"""/api/v1/health per part, and the heartbeat restarting a part that is down or hung.

The box runs in this process with DICOM on a real socket; dcmtk's echoscu checks from
outside that a restarted receiver answers again.
"""

from __future__ import annotations

import io
import logging
import subprocess
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from magickbox.testing.dicomgen import write_study
from tests.conftest import InProcessBox, copy_bucket, dcmtk
from tests.e2e.peers import wait_for

QUICK = "#!/bin/sh\necho fine\n"
PARTS = {"receiver", "dispatcher", "router", "database", "disk"}
# Manual heartbeat rounds, a disk that never counts as low, short answers expected.
MANUAL = {"heartbeat_seconds": 0, "disk_warn_percent": 0.0, "heartbeat_timeout": 1.0}


def health(app: InProcessBox) -> tuple[int, dict]:
    res = app.get("/api/v1/health")
    return res.status_code, res.json()


def echoscu(app: InProcessBox) -> subprocess.CompletedProcess[str]:
    cmd = [dcmtk("echoscu"), "-aec", app.box.settings.aet, "127.0.0.1", str(app.dicom_port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def restarts(app: InProcessBox, part: str) -> str:
    """The part_restarts counter's line of /metrics."""
    text = app.get("/metrics").text
    return next((line for line in text.splitlines() if f'part="{part}"' in line), "")


def test_health_reports_every_part_up(app_factory: Callable[..., InProcessBox]) -> None:
    app = app_factory(dicom=True, **MANUAL)
    status, report = health(app)
    assert status == 200 and report["ok"] is True, report
    assert set(report["parts"]) == PARTS
    assert {p["state"] for p in report["parts"].values()} == {"ok"}, report
    assert "answered" in report["parts"]["receiver"]["detail"]  # a real C-ECHO to itself


def test_health_without_dicom_says_the_receiver_is_off(app_client: InProcessBox) -> None:
    status, report = health(app_client)
    assert status == 200 and report["parts"]["receiver"]["state"] == "off"


def test_health_503_with_the_router_stopped_and_the_heartbeat_restarts_it(
    app_factory: Callable[..., InProcessBox], caplog: pytest.LogCaptureFixture
) -> None:
    app = app_factory(**MANUAL)
    app.box.router.stop()
    status, report = health(app)
    assert status == 503 and report["ok"] is False
    assert report["parts"]["router"] == {"state": "down", "detail": "stopped"}
    assert report["parts"]["dispatcher"]["state"] == "ok"

    with caplog.at_level(logging.WARNING, logger="magickbox.heartbeat"):
        after = app.box.heartbeat_round()
    assert after["router"]["state"] == "ok", after
    assert "router is down (stopped): restarting it" in caplog.text
    assert health(app)[0] == 200
    assert restarts(app, "router").endswith(" 1.0")
    assert app.box.router.problem(60) == ""


def test_heartbeat_restarts_a_stopped_receiver(
    app_factory: Callable[..., InProcessBox], caplog: pytest.LogCaptureFixture
) -> None:
    app = app_factory(dicom=True, **MANUAL)
    app.box.receiver.stop()
    assert echoscu(app).returncode != 0  # nothing listens
    status, report = health(app)
    assert status == 503 and report["parts"]["receiver"]["state"] == "down"

    with caplog.at_level(logging.WARNING, logger="magickbox.heartbeat"):
        assert app.box.heartbeat_round()["receiver"]["state"] == "ok"
    assert "receiver is down" in caplog.text
    done = echoscu(app)
    assert done.returncode == 0, done.stderr
    assert health(app)[0] == 200 and restarts(app, "receiver").endswith(" 1.0")


def study_zip(tmp_path: Path) -> bytes:
    write_study(tmp_path / "study", n_images=1, rows=16, cols=16)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted((tmp_path / "study").iterdir()):
            zf.write(path, path.name)
    return buf.getvalue()


def test_heartbeat_replaces_a_hung_queue_loop(
    app_factory: Callable[..., InProcessBox], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_bucket(tmp_path / "home", "Quick", QUICK)
    app = app_factory(**{**MANUAL, "heartbeat_timeout": 0.3})
    store, release, hung = app.box.store, threading.Event(), threading.Event()
    real_counts = store.queue_counts

    def hangs_once() -> dict[str, dict[str, int]]:  # the first scheduling pass never ends
        if not hung.is_set():
            hung.set()
            release.wait(60)
        return real_counts()

    monkeypatch.setattr(store, "queue_counts", hangs_once)
    app.box.dispatcher.wake()
    wait_for("the queue's loop to hang", hung.is_set)
    status, report = health(app)
    assert status == 503 and "hung" in report["parts"]["dispatcher"]["detail"], report

    assert app.box.heartbeat_round()["dispatcher"]["state"] == "ok"
    made = app.client.post(
        "/api/v1/jobs",
        files={"file": ("s.zip", study_zip(tmp_path), "application/zip")},
        data={"bucket": "Quick"},
    )
    assert made.status_code == 201, made.text
    sd = made.json()["scratchdir"]
    wait_for("the job to run on the new loop",
             lambda: app.get(f"/api/v1/jobs/{sd}").json()["state"] == "done")  # fmt: skip
    release.set()  # the old loop comes back, sees it was replaced and ends
    wait_for("one queue loop", lambda: [t.name for t in threading.enumerate()
                                        if t.name == "dispatcher"] == ["dispatcher"])  # fmt: skip
    assert app.get(f"/api/v1/jobs/{sd}").json()["attempts"] == 1


def test_the_heartbeat_timer_repairs_without_being_asked(
    app_factory: Callable[..., InProcessBox],
) -> None:
    app = app_factory(**{**MANUAL, "heartbeat_seconds": 0.2})
    app.box.router.stop()
    wait_for("the timer's round to restart the router", lambda: health(app)[0] == 200)
    assert restarts(app, "router").endswith(" 1.0")
