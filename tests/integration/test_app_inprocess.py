"""The real app and Box in this process (Starlette's TestClient, lifespan included).

For HTTP-only behaviour a socket and a ``magickbox serve`` child add nothing but
start-up time; the tests that need dcmtk, kill -9, curl or a browser keep the server
process (tests/e2e).
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from magickbox.box import Box
from magickbox.config import load_settings
from magickbox.testing.dicomgen import write_study
from magickbox.testing.server import free_port
from tests.conftest import InProcessBox, admin_client, copy_bucket


@pytest.fixture
def client(tmp_path: Path, app_factory: Callable[..., InProcessBox]) -> TestClient:
    copy_bucket(tmp_path / "home", "Slow", "#!/bin/sh\nsleep 30\n")
    return app_factory().client


def study_zip(tmp_path: Path) -> bytes:
    write_study(tmp_path / "study", n_images=3, rows=32, cols=32)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted((tmp_path / "study").iterdir()):
            zf.write(path, path.name)
    return buf.getvalue()


def wait_state(client: TestClient, scratchdir: str, states: set[str]) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{scratchdir}").json()
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {scratchdir} never reached {states}: {job}")


def test_an_upload_runs_the_example_bucket_and_its_output_downloads(
    client: TestClient, tmp_path: Path
) -> None:
    made = client.post(
        "/api/v1/jobs",
        files={"file": ("sub-001.zip", study_zip(tmp_path), "application/zip")},
        data={"bucket": "ProcBucket", "sender": "ip44"},
    )
    assert made.status_code == 201, made.text
    sd = made.json()["scratchdir"]
    assert wait_state(client, sd, {"done", "failed"})["state"] == "done"
    rows = client.get("/code/php/getScratch.php").json()
    assert [r["scratchdir"] for r in rows if r["AETitleCaller"] == "ip44"] == [sd]
    zipped = client.get(f"/code/php/getOutputZip.php?folder={sd}")
    names = zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
    assert any(n.startswith(f"{sd}/OUTPUT/") and n.endswith(".dcm") for n in names)
    log = client.get(f"/api/v1/jobs/{sd}/log").text
    assert "finished: done" in log


def test_errors_come_from_one_hierarchy(client: TestClient, tmp_path: Path) -> None:
    missing = client.get("/api/v1/jobs/tmp.nosuchjob")
    assert missing.status_code == 404 and "tmp.nosuchjob" in missing.json()["detail"]
    bad_name = client.get("/api/v1/jobs/..%2Fetc")
    assert bad_name.status_code in (400, 404)
    unknown_bucket = client.post(
        "/api/v1/jobs",
        files={"file": ("a.zip", study_zip(tmp_path), "application/zip")},
        data={"bucket": "NoSuchBucket"},
    )
    assert unknown_bucket.status_code == 404
    running = client.post(
        "/api/v1/jobs",
        files={"file": ("b.zip", study_zip(tmp_path / "b"), "application/zip")},
        data={"bucket": "Slow"},
    ).json()["scratchdir"]
    wait_state(client, running, {"running"})
    conflict = client.post(f"/api/v1/jobs/{running}/retry")
    assert conflict.status_code == 409 and "only finished jobs" in conflict.json()["detail"]
    assert client.delete(f"/api/v1/jobs/{running}").status_code == 200
    assert client.get(f"/api/v1/jobs/{running}").status_code == 404


def test_the_lifespan_stops_the_box(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "h", announce=False, dicom_port=free_port())
    box = Box(settings)
    with admin_client(box) as client:
        assert client.get("/api/v1/buckets").status_code == 200
        assert box.dispatcher._thread.is_alive()
    box.dispatcher._thread.join(5)
    assert not box.dispatcher._thread.is_alive()
