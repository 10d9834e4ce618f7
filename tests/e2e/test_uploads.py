"""Uploads against a real ``magickbox serve`` whose home is a 60 MB tmpfs, with curl and a
raw socket: the cap before the body, the counter, slow bodies, the disk reserve, and the
room an upload needs (its zip and its files, not three times its size)."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer, tmpfs
from tests.e2e.peers import install_buckets
from tests.e2e.test_disk import KEEP, MB, ballast

pytestmark = pytest.mark.e2e

CAP = 16 * MB


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with tmpfs(tmp_path_factory.mktemp("uploads") / "disk") as mount:
        yield mount


@pytest.fixture(scope="module")
def box(disk: Path) -> Iterator[BoxServer]:
    home = disk / "home"
    install_buckets(home, Keep=KEEP)
    settings = {"max_upload_bytes": CAP, "upload_timeout": 1, "disk_reserve": "1M"}
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    server = BoxServer(home, quiet=0.3, extra_args=args)
    server.log_path = disk.parent / "server.log"  # off the small disk
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def big_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 MB of stored (uncompressed) bytes: over the cap."""
    path = tmp_path_factory.mktemp("zips") / "big.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("big.bin", os.urandom(40 * MB))
    return path


def used(folder: Path) -> int:
    return shutil.disk_usage(folder).used


def curl_upload(box: BoxServer, path: Path, *extra: str) -> tuple[int, str]:
    cmd = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *extra,
           "-F", "aetitle=Keep", "-F", f"theFile=@{path}",
           f"{box.url}/code/php/processZip.php"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    body, _, code = out.rpartition("\n")
    return int(code or 0), body


def uploads_left(box: BoxServer) -> list[Path]:
    folder = box.home / "scratch" / ".uploads"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []


def test_a_content_length_over_the_cap_is_refused_before_1_mb_is_written(
    box: BoxServer, disk: Path, big_zip: Path
) -> None:
    before = used(disk)
    code, body = curl_upload(box, big_zip)
    assert code == 413, body
    assert "max_upload_bytes" in body
    assert used(disk) - before < MB
    assert not uploads_left(box)


def test_a_body_without_length_is_cut_off_at_the_cap(
    box: BoxServer, disk: Path, big_zip: Path
) -> None:
    before = used(disk)
    code, body = curl_upload(box, big_zip, "-H", "Transfer-Encoding: chunked")
    assert code == 413, body
    assert used(disk) - before < MB  # what the counter let through is removed
    assert not uploads_left(box)


def test_a_trickled_body_is_timed_out(box: BoxServer) -> None:
    """1 KB a second, far below upload_min_rate: cut off with 408 after upload_timeout."""
    head = (
        "POST /code/php/processZip.php HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 1000000\r\n\r\n"
        "--XyZ\r\nContent-Disposition: form-data; name=\"theFile\"; filename=\"a.zip\"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", box.web_port), timeout=30) as conn:
        conn.sendall(head.encode())
        answer = b""
        for _ in range(30):  # at most 30 s of trickling; the box must answer long before
            readable, _, _ = select.select([conn], [], [], 1.0)
            if readable:
                answer = read_answer(conn)
                break
            conn.sendall(b"x" * 1024)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"too slow" in answer
    assert not uploads_left(box)


def read_answer(conn: socket.socket) -> bytes:
    """An HTTP answer whole: its head and body may come in separate segments."""
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
        head, sep, body = answer.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)  # fmt: skip
        if sep and length is not None and len(body) >= length:
            break
    return answer


def stored_study_zip(folder: Path, nbytes: int) -> Path:
    """A zip (stored) of a study of about ``nbytes`` of DICOM files."""
    study = folder / "study"
    write_study(study, n_images=max(1, nbytes // (512 * 1024)), rows=512, cols=512, seed=3)
    path = folder / "study.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for file in sorted(study.iterdir()):
            zf.write(file, file.name)
    return path


def test_an_upload_needs_its_zip_and_its_files_not_three_times_its_size(
    box: BoxServer, disk: Path, tmp_path: Path
) -> None:
    upload = stored_study_zip(tmp_path, 8 * MB)
    size = upload.stat().st_size
    weight = ballast(disk, leave_free=int(2.5 * size) + MB)  # the reserve and 2.5 times
    try:
        code, body = curl_upload(box, upload)
    finally:
        weight.unlink()
    assert code == 200, body
    assert not uploads_left(box)


def test_an_upload_is_refused_with_507_while_the_disk_is_below_its_reserve(
    box: BoxServer, disk: Path, tmp_path: Path
) -> None:
    upload = tmp_path / "small.zip"
    with zipfile.ZipFile(upload, "w") as zf:
        zf.writestr("a.bin", b"x" * 1000)
    weight = ballast(disk, leave_free=MB // 2)
    try:
        code, body = curl_upload(box, upload)
        health = box.get("/api/v1/health").json()
    finally:
        weight.unlink()
    assert code == 507, body
    assert "reserve" in body
    assert health["accepting"] is False and health["disk"]["low"] is True
