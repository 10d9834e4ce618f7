"""Health's disk part and the disk reserve give one answer: on a 60 MB tmpfs home, the disk
part is down (and /api/v1/health 503) exactly while dcmtk's echoscu is rejected with "local
limit exceeded" and an upload is answered 507, through the reserve's margin on the way back
too; above it again all three resume with no restart. A fall below the reserve is a
disk_low webhook even when the free percentage is above ``disk_warn_percent``."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import InProcessBox, copy_bucket, dcmtk, in_process_box, tmpfs
from tests.e2e.peers import wait_for
from tests.integration.test_monitoring import Webhook

MB = 1 << 20
RESERVE = 20 * MB


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk") as mount:
        yield mount


@pytest.fixture
def hook() -> Iterator[tuple[Webhook, str]]:
    hook = Webhook(fail_first=0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), hook.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield hook, f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


@pytest.fixture
def app(disk: Path, hook: tuple[Webhook, str]) -> Iterator[InProcessBox]:
    home = disk / "home"
    copy_bucket(home, "Keep", "#!/bin/sh\nexit 0\n")
    settings = {"disk_reserve": "20M", "heartbeat_seconds": 0, "notify": [hook[1]],
                "disk_warn_percent": 1.0}  # 20 MB of 60 is far above 1 % free  # fmt: skip
    with in_process_box(home, dicom=True, **settings) as app:
        yield app


def fill_to(disk: Path, free: int) -> None:
    """Grow or shrink the ballast file until ``free`` bytes of ``disk`` are free."""
    path = disk / "ballast"
    size = (path.stat().st_size if path.exists() else 0) + shutil.disk_usage(disk).free - free
    with path.open("ab") as fh:
        while fh.tell() < size:
            fh.write(b"\0" * min(MB, size - fh.tell()))
        fh.truncate(size)
        os.fsync(fh.fileno())


def echoscu(app: InProcessBox) -> subprocess.CompletedProcess[str]:
    cmd = [dcmtk("echoscu"), "-aec", "Keep", "127.0.0.1", str(app.dicom_port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def upload(app: InProcessBox) -> int:
    body = io.BytesIO()
    with zipfile.ZipFile(body, "w") as zf:
        zf.writestr("a.bin", b"x" * 1000)
    files = {"theFile": ("a.zip", body.getvalue(), "application/zip")}
    return app.client.post("/code/php/processZip.php", data={"aetitle": "Keep"},
                           files=files).status_code  # fmt: skip


def answers(app: InProcessBox) -> tuple[int, str, bool, bool]:
    """(health status, disk part state, echoscu accepted, upload accepted)."""
    res = app.get("/api/v1/health")
    echo = echoscu(app)
    refused = "Local Limit Exceeded" in echo.stdout + echo.stderr
    assert refused == (echo.returncode != 0), echo.stderr
    return res.status_code, res.json()["parts"]["disk"]["state"], not refused, upload(app) == 200


def test_the_disk_part_is_down_exactly_while_new_data_is_refused(
    app: InProcessBox, disk: Path, hook: tuple[Webhook, str]
) -> None:
    assert answers(app) == (200, "ok", True, True)

    fill_to(disk, RESERVE - 2 * MB)
    status, state, echoed, uploaded = answers(app)
    assert (status, state, echoed, uploaded) == (503, "down", False, False)
    detail = app.get("/api/v1/health").json()["parts"]["disk"]["detail"]
    assert "below the reserve" in detail and "refusing" in detail, detail
    assert app.box.heartbeat_round()["disk"]["state"] == "down"
    (low,) = wait_for("the disk_low webhook", lambda: hook[0].events("disk_low"))
    assert low["disk"]["free_bytes"] < RESERVE

    # Just above the reserve, within its margin: still refused, and health still says so.
    fill_to(disk, RESERVE + RESERVE // 20)
    assert answers(app) == (503, "down", False, False)

    fill_to(disk, RESERVE + 5 * MB)  # past the margin: everything resumes, no restart
    assert answers(app) == (200, "ok", True, True)
