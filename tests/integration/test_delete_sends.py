"""Deleting a job whose routing send waits for its retry: the send ends failed at once with
"the job was deleted" (not retried on files that are gone, not "the connection failed").
A real Box in this process, DICOM on a real socket, a destination port nobody listens on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from magickbox.testing.dicomgen import write_study
from tests.conftest import InProcessBox, copy_bucket, free_port
from tests.e2e.peers import send_files, wait_for


def test_deleting_a_job_ends_its_waiting_send_as_deleted(
    app_factory: Callable[..., InProcessBox], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    copy_bucket(home, "Quick", "#!/bin/sh\nexit 0\n")
    nowhere = {"IP": "127.0.0.1", "PORT": free_port(), "AETitleSender": "MB",
               "AETitleTo": "NOWHERE"}  # fmt: skip
    rule = {"name": "on", "AETitleIn": "^Quick$", "RouteDirectory": "INPUT",
            "send": [{".*": nowhere}]}  # fmt: skip
    (home / "routing.json").parent.mkdir(parents=True, exist_ok=True)
    (home / "routing.json").write_text(json.dumps({"routing": [rule]}))
    app = app_factory(home=home, dicom=True, routing_retry_delay=3600)
    study = write_study(tmp_path / "s", n_images=2, rows=16, cols=16)
    assert len(send_files(app.dicom_port, "Quick", study.paths).ok) == 2
    (job,) = wait_for("the job", lambda: app.get("/api/v1/jobs").json()["jobs"])
    sends = f"/api/v1/jobs/{job['scratchdir']}/sends"
    (waiting,) = wait_for("the failed first try", lambda: [
        s for s in app.get(sends).json() if s["attempts"] >= 1 and s["state"] == "pending"])
    assert waiting["reason"], waiting  # it failed once and waits an hour for its retry

    deleted = app.client.delete(f"/api/v1/jobs/{job['scratchdir']}")
    assert deleted.status_code == 200 and deleted.json()["freed_bytes"] >= 0, deleted.text

    after = app.get(f"/api/v1/sends/{waiting['id']}").json()
    assert (after["state"], after["reason"]) == ("failed", "the job was deleted"), after
    assert after["attempts"] == waiting["attempts"]  # not tried again on files that are gone
