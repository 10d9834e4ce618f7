"""Upload bodies the route reads itself (web/uploads.py), over the real app in this
process: bad forms get a clear 4xx and leave nothing in scratch/.uploads, a good one
becomes a job with its fields, on both the original endpoint and the API."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from magickbox.testing.dicomgen import write_study
from tests.conftest import InProcessBox, copy_bucket

KEEP = "#!/bin/sh\nexit 0\n"


@pytest.fixture
def app(app_factory: Callable[..., InProcessBox], tmp_path: Path) -> InProcessBox:
    copy_bucket(tmp_path / "home", "Keep", KEEP)
    return app_factory(home=tmp_path / "home", max_upload_bytes=1 << 20)


@pytest.fixture
def study_zip(tmp_path: Path) -> bytes:
    write_study(tmp_path / "s", n_images=2, rows=16, cols=16)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted((tmp_path / "s").iterdir()):
            zf.write(path, path.name)
    return buf.getvalue()


def leftovers(app: InProcessBox) -> list[Path]:
    folder = app.box.settings.uploads
    return [p for p in folder.rglob("*")] if folder.is_dir() else []


def post(app: InProcessBox, path: str, **kw: object) -> httpx.Response:
    return app.client.post(path, **kw)  # type: ignore[arg-type]


def test_an_upload_becomes_a_job_with_its_fields(app: InProcessBox, study_zip: bytes) -> None:
    res = post(app, "/code/php/processZip.php",
               data={"aetitle": "Keep", "sender": "me", "filename": "subject7"},
               files={"theFile": ("s.zip", study_zip, "application/zip")})  # fmt: skip
    assert res.status_code == 200, res.text
    assert res.json()["files"] == 2
    job = app.get(f"/api/v1/jobs/{res.json()['scratchdir']}").json()
    assert (job["caller_aet"], job["jobname"], job["source"]) == ("me", "subject7", "upload")
    api = post(app, "/api/v1/jobs", data={"bucket": "Keep"},
               files={"file": ("named.zip", study_zip, "application/zip")})  # fmt: skip
    assert api.status_code == 201, api.text
    assert (api.json()["caller_aet"], api.json()["jobname"]) == ("api", "named.zip")
    assert not leftovers(app)


@pytest.mark.parametrize(
    ("kw", "status", "words"),
    [
        ({"files": {"aetitle": (None, "Keep")}}, 400, "no file part 'theFile'"),
        ({"data": {"aetitle": "Keep"}}, 400, "multipart/form-data"),
        ({"files": {"theFile": ("s.zip", b"PK", "application/zip")}}, 400, "'aetitle' is required"),
        ({"content": b"just bytes", "headers": {"content-type": "application/zip"}}, 400,
         "multipart/form-data"),
        ({"data": {"aetitle": "Keep", "jobname": "x" * 70_000},
          "files": {"theFile": ("s.zip", b"PK", "application/zip")}}, 400, "over 65536 bytes"),
        ({"data": {"aetitle": "Keep"}, "files": {"theFile": ("s.zip", b"x" * (2 << 20))}}, 413,
         "max_upload_bytes"),
        ({"data": {"aetitle": "Nope"}, "files": {"theFile": ("s.zip", b"PK")}}, 404, "Nope"),
        ({"content": b"--b\r\nbroken", "headers": {
            "content-type": "multipart/form-data; boundary=b"}}, 400, ""),
    ],
)  # fmt: skip
def test_bad_upload_forms_get_a_clear_error_and_leave_nothing(
    app: InProcessBox, kw: dict, status: int, words: str
) -> None:
    res = post(app, "/code/php/processZip.php", **kw)
    assert res.status_code == status, res.text
    assert words in res.json()["detail"]
    assert not leftovers(app)


def test_two_file_parts_are_refused(app: InProcessBox) -> None:
    body = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="theFile"; filename="%d.zip"\r\n\r\nPK\r\n'
        % n
        for n in (1, 2)
    ) + b"--b--\r\n"
    res = post(app, "/code/php/processZip.php", content=body,
               headers={"content-type": "multipart/form-data; boundary=b"})  # fmt: skip
    assert res.status_code == 400 and "more than one 'theFile'" in res.json()["detail"]
    assert not leftovers(app)
