"""``magickbox serve`` as systemd runs it: READY=1 once it serves, the watchdog fed while
its heartbeat goes round, STOPPING=1 at a stop (a datagram socket plays systemd)."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest

from magickbox.testing.server import BoxServer


def messages(sock: socket.socket, until: bytes, timeout: float = 30.0) -> list[bytes]:
    """Datagrams received until one contains ``until``."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not any(until in m for m in got):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        got.append(sock.recv(4096))
    return got


@pytest.mark.e2e
def test_serve_tells_systemd_ready_feeds_the_watchdog_and_says_stopping(
    box_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    name = f"magickbox-e2e-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "200000"}  # fed every 0.1 s
        box: BoxServer = box_factory(home=tmp_path / "home", env=env)
        first = messages(sock, b"READY=1")
        assert b"READY=1\nSTATUS=DICOM on %d" % box.dicom_port in first[-1]
        assert box.get("/api/v1/health").status_code == 200  # ready means serving
        assert b"WATCHDOG=1" in messages(sock, b"WATCHDOG=1", timeout=5)[-1]
        box.stop()
        assert any(m.startswith(b"STOPPING=1") for m in messages(sock, b"STOPPING=1"))
