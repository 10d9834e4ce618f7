"""Hostile HTTP input over the real app in this process: log paths and zip uploads.

Nothing outside the home is read or written, nothing passes through a shell, every refusal is
a JSON error with a 4xx status, and the box carries on serving. The attacks that need a DICOM
send or peer stay in tests/e2e/test_hostile.py (whose helpers these tests share).
"""

from __future__ import annotations

import io
import json
import os
import shlex
import stat
import subprocess
import time
import urllib.parse
import zipfile
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from magickbox.testing.dicomgen import dataset_bytes, make_dataset, write_study
from tests.conftest import InProcessBox, dcmtk
from tests.e2e.peers import QUICK, install_buckets
from tests.e2e.test_hostile import ARGS, EVIL, SECRET, assert_json_error


@pytest.fixture
def app(app_factory: Callable[..., InProcessBox], tmp_path: Path) -> InProcessBox:
    home = tmp_path / "home"
    install_buckets(home, Recv=QUICK, Evil=EVIL, Args=ARGS)
    # Canaries beside the home: a traversal that reaches them must not read or delete them.
    (tmp_path / "canary.txt").write_text(SECRET)
    for folder in ("x", "etc"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "processing.log").write_text(SECRET)
    # The DICOM receiver too: after the attacks it must still answer an echo.
    return app_factory(home=home, dicom=True)


def canaries_intact(tmp_path: Path, app: InProcessBox) -> None:
    assert (tmp_path / "canary.txt").read_text() == SECRET
    assert (tmp_path / "x" / "processing.log").read_text() == SECRET
    assert (tmp_path / "etc" / "processing.log").read_text() == SECRET
    assert (app.home / "magickbox.db").is_file()
    assert (app.home / "scratch" / "archive").is_dir()
    assert (app.home / "streams" / "bucketRecv" / "work.sh").is_file()


def raw_get(app: InProcessBox, target: str) -> tuple[int, bytes, str]:
    """GET ``target`` exactly as written, as uvicorn hands it to the app: the client
    (httpx) would remove ``..`` segments before they reach it."""
    raw_path, _, query = target.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": urllib.parse.unquote(raw_path), "raw_path": raw_path.encode(),
        "query_string": query.encode(), "root_path": "", "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }  # fmt: skip
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def call() -> None:
        await app.client.app(scope, receive, send)

    app.client.portal.call(call)  # type: ignore[union-attr]
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], body, headers.get("content-type", "")


def echoscu(app: InProcessBox, called: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-aec", called, "127.0.0.1", str(app.dicom_port)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip


def wait_one_job(app: InProcessBox, timeout: float = 60.0) -> dict:
    """The box's only job, once finished."""
    deadline = time.monotonic() + timeout
    jobs: list[dict] = []
    while time.monotonic() < deadline:
        jobs = app.get("/api/v1/jobs").json()["jobs"]
        assert len(jobs) <= 1, jobs
        if jobs and jobs[0]["state"] in ("done", "failed"):
            return jobs[0]
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for one finished job; last: {jobs}")


def upload(app: InProcessBox, content: bytes, **fields: str) -> httpx.Response:
    data = {"aetitle": "Args", "filename": "study.zip", "sender": "mbclient", "jobname": "j",
            "arguments": "", "description": "d", **fields}  # fmt: skip
    return app.client.post(
        "/code/php/processZip.php",
        data=data,
        files={"theFile": ("study.zip", content, "application/zip")},
    )


def zip_of(entries: list[tuple[zipfile.ZipInfo | str, bytes]], deflate: bool = False) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def test_log_paths_stay_inside_the_scratch_folder(app: InProcessBox) -> None:
    for target in [
        "/scratch/..%2F..%2Fetc/processing.log",
        "/scratch/..%2F..%2Fx/processing.log",
        "/scratch/%2E%2E/processing.log",
        "/scratch/archive/processing.log",
        "/scratch/tmp.nothere1/processing.log",
        "/api/v1/jobs/..%2F..%2Fx/log",
    ]:
        assert_json_error(*raw_get(app, target), target)
    for target in ["/scratch/../../etc/passwd", "/scratch/../../x/processing.log"]:
        status, body, _ = raw_get(app, target)
        assert status >= 400, target
        assert SECRET.encode() not in body and b"root:" not in body, target


def test_hostile_zip_uploads_are_refused_and_make_no_job(app: InProcessBox, tmp_path: Path) -> None:
    dicom = dataset_bytes(make_dataset(study_uid=generate_uid(), series_uid=generate_uid(),
                                       rows=16, cols=16))  # fmt: skip
    link = zipfile.ZipInfo("link.dcm")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    big = 64 << 20
    cases = {
        "traversal": (zip_of([("ok.dcm", dicom), ("../../evil.dcm", dicom)]), ".."),
        "absolute": (zip_of([("/tmp/evil.dcm", dicom)]), "absolute"),
        "symlink": (zip_of([("ok.dcm", dicom), (link, b"/etc/passwd")]), "link"),
        "bomb": (zip_of([("bomb.dcm", bytes(big))], deflate=True), "ratio"),
        "not a zip": (b"this is not a zip file at all" * 100, "not a valid zip"),
        "empty": (b"", "zip"),
    }
    for name, (content, words) in cases.items():
        res = upload(app, content)
        assert res.status_code == 400, (name, res.status_code, res.text)
        assert res.headers["content-type"].startswith("application/json"), name
        assert words in res.json()["detail"], (name, res.json())

    res = upload(app, zip_of([("ok.dcm", dicom)]), aetitle="NoSuchBucket")
    assert res.status_code == 404 and "NoSuchBucket" in res.json()["detail"]

    assert app.jobs() == []
    scratch = app.home / "scratch"
    assert not list(scratch.glob("tmp.*"))
    assert not [p for p in (scratch / ".uploads").rglob("*") if p.is_file()]
    assert not list(tmp_path.rglob("evil.dcm")) and not Path("/tmp/evil.dcm").exists()
    assert echoscu(app, "Recv").returncode == 0


def test_upload_arguments_reach_the_bucket_as_plain_argv(app: InProcessBox, tmp_path: Path) -> None:
    study = write_study(tmp_path / "s", n_images=2, rows=16, cols=16)
    content = zip_of([(f"study/{p.name}", p.read_bytes()) for p in study.paths])
    pwned = tmp_path / "pwned"
    expected = [f"$(touch {pwned}); rm -rf /", "a b", "x;y", f"`touch {pwned}2`", "$HOME", "|&>"]
    arguments = " ".join(shlex.quote(a) for a in expected)

    res = upload(app, content, arguments=arguments, sender="mbclient", jobname="subject7")
    assert res.status_code == 200, res.text
    made = res.json()
    assert made["pid"] == study.study_uid and made["files"] == 2
    job = wait_one_job(app)
    assert job["scratchdir"] == made["scratchdir"]
    assert (job["caller_aet"], job["source"], job["jobname"]) == ("mbclient", "upload", "subject7")
    assert job["arguments"] == expected
    (listed,) = app.jobs()
    assert listed["AETitleCaller"] == "mbclient" and listed["CallerIP"] == "127.0.0.1"
    job_folder = app.home / "scratch" / job["scratchdir"]
    assert json.loads((job_folder / "info.json").read_text())["AETitleCaller"] == "mbclient"

    argv = (job_folder / "OUTPUT" / "args.txt").read_text().split("\n")[:-1]
    assert argv == [str(job_folder / "INPUT"), str(job_folder / "OUTPUT"), *expected]
    assert not pwned.exists() and not Path(f"{pwned}2").exists()
    canaries_intact(tmp_path, app)
    stored = {p.name: p for p in (job_folder / "INPUT").rglob("*") if p.is_file()}
    assert sorted(stored) == sorted(p.name for p in study.paths)
    for path in study.paths:
        assert stored[path.name].read_bytes() == path.read_bytes()
