"""The systemd side: the sd_notify datagram on real sockets, and the unit that
``magickbox service install`` writes, checked by systemd's own ``systemd-analyze verify``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from magickbox import cli, service
from magickbox.config import Settings


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's, in the abstract namespace."""
    name = f"magickbox-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


def test_sd_notify_sends_one_datagram(listener: socket.socket) -> None:
    assert service.sd_notify("READY=1\nSTATUS=up")
    assert listener.recv(4096) == b"READY=1\nSTATUS=up"


def test_sd_notify_to_a_socket_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert service.sd_notify("WATCHDOG=1")
        assert sock.recv(100) == b"WATCHDOG=1"


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert service.sd_notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@magickbox-nobody-listens-here")
    assert service.sd_notify("READY=1") is False  # a warning, never an exception


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [("2000000", None, 2.0), ("0", None, None), ("x", None, None), ("1000000", "1", None)],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str, pid: str | None, expected: float | None
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", pid)  # another process's watchdog
    assert service.watchdog_seconds() == expected


def test_watchdog_is_fed_only_while_healthy(listener: socket.socket) -> None:
    healthy = [True]
    dog = service.Watchdog(0.1, lambda: healthy[0])
    dog.start()
    assert listener.recv(100) == b"WATCHDOG=1"
    healthy[0] = False
    listener.settimeout(0.3)
    with pytest.raises(TimeoutError):
        while True:  # drain what was on its way, then nothing more comes
            listener.recv(100)
    dog.stop()


def test_unit_runs_serve_on_the_home(tmp_path: Path) -> None:
    home = tmp_path / "my 100% home"
    text = service.unit_text(Settings(home=home), "root", "/usr/bin/python3")
    assert "Type=notify" in text and "Restart=on-failure" in text and "WatchdogSec=" in text
    assert f'--home "{str(home).replace("%", "%%")}"' in text  # quoted, % escaped for systemd


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_service_install_writes_a_unit_systemd_accepts(tmp_path: Path) -> None:
    home, unit = tmp_path / "the home", tmp_path / "magickbox.service"
    home.mkdir()
    code = cli.main(["service", "install", "--home", str(home), "--user", "root",
                     "--output", str(unit)])  # fmt: skip
    assert code == 0 and unit.is_file()
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == "", verify.stderr  # not even a warning


def test_service_install_to_an_unwritable_place_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = cli.main(["service", "install", "--home", str(tmp_path), "--output",
                     str(blocker / "magickbox.service")])  # fmt: skip
    assert code == 1 and "cannot write" in capsys.readouterr().err


def test_the_log_rotates_at_its_size_and_keeps_its_backups(tmp_path: Path) -> None:
    import logging

    settings = Settings(home=tmp_path, log_max_bytes=2000, log_backups=2)
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        cli.setup_logging(settings, "INFO")
        added = [h for h in root.handlers if h not in before]
        for i in range(200):
            logging.getLogger("magickbox.test").info("line %d of the box's log", i)
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
    assert len(added) == 2
    logs = sorted(p.name for p in settings.logs.iterdir())
    assert logs == ["magickbox.log", "magickbox.log.1", "magickbox.log.2"]
    assert all(p.stat().st_size <= 2000 for p in settings.logs.iterdir())
    assert "line 199 of" in (settings.logs / "magickbox.log").read_text()
