"""One box per home, and free ports, checked before any crash recovery touches the home."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(home: Path, dicom: int, web: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "magickbox.cli", "serve", "--home", str(home),
           "--host", "127.0.0.1", "--dicom-port", str(dicom), "--web-port", str(web)]
    return subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@pytest.fixture
def first(tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    home, dicom, web = tmp_path / "home", free_port(), free_port()
    proc = serve(home, dicom, web)
    deadline = time.monotonic() + 30
    while not (home / "magickbox.lock").is_file() or not (home / "magickbox.lock").read_text():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    yield home, dicom, web
    proc.terminate()
    proc.wait(timeout=30)


def second(home: Path, dicom: int, web: int) -> tuple[int, str]:
    proc = serve(home, dicom, web)
    _out, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_second_box_on_one_home_refused(first: tuple[Path, int, int]) -> None:
    home, _dicom, _web = first
    code, err = second(home, free_port(), free_port())
    pid = (home / "magickbox.lock").read_text().strip()
    assert code != 0 and f"home {home} is already served by pid {pid}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("which", ["DICOM", "web"])
def test_busy_port_named(first: tuple[Path, int, int], tmp_path: Path, which: str) -> None:
    _home, dicom, web = first
    ports = (dicom, free_port()) if which == "DICOM" else (free_port(), web)
    code, err = second(tmp_path / "other", *ports)
    taken = dicom if which == "DICOM" else web
    assert code != 0 and f"{which} port {taken} is taken" in err
    assert "Traceback" not in err


def test_sigterm_runs_box_stop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = serve(home, free_port(), free_port())
    deadline = time.monotonic() + 30
    while not (home / "magickbox.lock").is_file() or not (home / "magickbox.lock").read_text():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1)  # let uvicorn install its signal handlers
    proc.terminate()
    _out, err = proc.communicate(timeout=30)
    assert f"MagickBox home {home}: stopped" in err, err
