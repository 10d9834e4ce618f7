"""Shared test fixtures: the real app and Box in this process (``app_factory``), real
MagickBox servers on free ports (``box_factory``) and the real dcmtk tools."""

from __future__ import annotations

import compileall
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import magickbox
from magickbox.auth.roles import Role
from magickbox.box import Box
from magickbox.config import load_settings
from magickbox.testing.server import BoxServer, dcmtk_tool, free_port
from magickbox.web.app import create_app

# Every box these tests start, in this process or as a child, hashes passwords with the
# cheapest argon2id (the setting password_hash_cost): a standard hash costs a good part
# of a CPU second, and the tests hash many. tests/unit/test_auth.py checks the standard one.
os.environ.setdefault("MAGICKBOX_PASSWORD_HASH_COST", "test")


def pytest_configure(config: pytest.Config) -> None:
    """SIGINT as Python sets it up: a run started as a background job of a non-interactive
    shell inherits it ignored and hands that on to its workers and their children, and the
    tests of Ctrl-C (mb's) then press it in vain (one waited out its 120 s)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Byte-compile magickbox once, before the workers start, when the environment says not
    to write bytecode (PYTHONDONTWRITEBYTECODE, as on some CI images): every server and CLI
    the tests start would compile all its modules again (some 0.1 s of CPU each, hundreds
    of times a run). The .pyc files go where Python itself would put them (gitignored)."""
    if sys.dont_write_bytecode and not hasattr(session.config, "workerinput"):
        compileall.compile_dir(str(Path(magickbox.__file__).parent), quiet=1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first: modules marked ``long``, then the other e2e modules, then the rest.

    With ``pytest -n`` (``--dist loadfile``; pyproject.toml turns off xdist's own order, most
    tests first) the workers take modules in this order, so a minute-long module starts at
    once instead of after all others (the suite's wall time is the longest worker's). The
    order within a module is kept.
    """

    def weight(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("long") else 1 if item.get_closest_marker("e2e") else 2

    items.sort(key=weight)


__all__ = [
    "BoxServer",
    "InProcessBox",
    "admin_client",
    "copy_bucket",
    "dcmtk",
    "free_port",
    "in_process_box",
    "tmpfs",
]


def dcmtk(tool: str) -> str:
    """The real dcmtk ``tool``; the test fails when dcmtk is missing (CI installs it)."""
    try:
        return dcmtk_tool(tool)
    except FileNotFoundError as exc:
        pytest.fail(str(exc))


@dataclass
class InProcessBox:
    """The real app over a real Box in this process: what a test needs of a box over HTTP."""

    client: TestClient
    home: Path
    box: Box
    token: str = ""  # the admin token the client sends

    @property
    def dicom_port(self) -> int:
        return self.box.settings.dicom_port

    @property
    def web_port(self) -> int:
        return self.box.settings.web_port

    def get(self, path: str, **kw: object) -> httpx.Response:
        return self.client.get(path, **kw)  # type: ignore[arg-type]

    def jobs(self) -> list[dict]:
        """The original's job listing (getScratch.php), newest first."""
        return self.get("/code/php/getScratch.php").json()


def admin_client(box: Box, dicom: bool = False, **kw: object) -> TestClient:
    """A TestClient of the app over ``box`` sending a new admin token, with a Host the box
    answers to (use it as a context manager, which runs the app's lifespan)."""
    token = box.auth.store.create_token("tests", Role.admin)[0]
    headers = {"Authorization": f"Bearer {token}"}
    return TestClient(create_app(box, dicom=dicom), base_url="http://127.0.0.1",
                      headers=headers, **kw)  # type: ignore[arg-type]  # fmt: skip


@contextlib.contextmanager
def in_process_box(home: Path, dicom: bool = False, **overrides: object) -> Iterator[InProcessBox]:
    """The app's lifespan starts and stops the Box, as under ``magickbox serve``; install
    test buckets in ``home`` before. ``overrides`` are settings (quiet_seconds=...)."""
    defaults = {"announce": False, "quiet_seconds": 0.2}
    ports = {"dicom_port": free_port(), "web_port": free_port()}
    settings = load_settings(home, **{**defaults, **ports, **overrides})
    box = Box(settings)
    token = box.auth.store.create_token("tests", Role.admin)[0]
    # The peer address the sockets would give: jobs record it (CallerIP); a Host the box
    # answers to; the admin's token on every request (tests of roles make their own clients).
    app = create_app(box, dicom=dicom)
    with TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 50000),
                    headers={"Authorization": f"Bearer {token}"}) as client:  # fmt: skip
        yield InProcessBox(client, home, box, token)


@pytest.fixture
def app_factory(tmp_path: Path) -> Iterator[Callable[..., InProcessBox]]:
    """Make in-process boxes: ``app_factory(home=..., dicom=..., **settings)``."""
    with contextlib.ExitStack() as stack:

        def make(
            home: Path | None = None, dicom: bool = False, **overrides: object
        ) -> InProcessBox:
            return stack.enter_context(
                in_process_box(home or tmp_path / "home", dicom=dicom, **overrides)
            )

        yield make


@pytest.fixture
def app_client(app_factory: Callable[..., InProcessBox]) -> InProcessBox:
    return app_factory()


@pytest.fixture
def box_factory(tmp_path: Path) -> Iterator:
    servers: list[BoxServer] = []

    def make(**kw: object) -> BoxServer:
        home = kw.pop("home", None) or tmp_path / f"home{len(servers)}"
        server = BoxServer(Path(home), **kw)  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    yield make
    for server in servers:  # all at once: each takes a while to shut down
        server.ask_to_stop()
    for server in servers:
        server.wait_stopped()


@pytest.fixture
def box(box_factory) -> BoxServer:  # type: ignore[no-untyped-def]
    return box_factory()


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "60m") -> Iterator[Path]:
    """A small filesystem of its own at ``folder`` (a tmpfs; needs root, as the test machines
    run): what the box does when its disk fills, measured without other processes' noise."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                   check=True)  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def copy_bucket(home: Path, name: str, work_sh: str, **info: object) -> Path:
    """Install a test bucket ``name`` whose work.sh is the given shell script."""
    import json

    folder = home / "streams" / f"bucket{name}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "info.json").write_text(
        json.dumps(
            {
                "name": name,
                "description": "test bucket",
                "version": "1",
                "AETitle": name,
                "license": "MIT",
                "enabled": 1,
                **info,
            }
        )
    )
    (folder / "work.sh").write_text(work_sh)
    (folder / "work.sh").chmod(0o755)
    shutil.rmtree(folder / "__pycache__", ignore_errors=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Debian's Chromium under Playwright, one per module (tests/e2e/browser.py)."""
    from tests.e2e.browser import launch

    yield from launch()


def late_requestor_threads(monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
    """pynetdicom requestors made in this test resume ``delay`` seconds late after their
    connection is made, as their threads do on a loaded machine: the window in which
    pynetdicom 3.0 loses a quick A-ASSOCIATE-RJ, made wide enough to hit every time."""
    from pynetdicom import transport

    class LateWaker(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            done = super().wait(timeout)
            time.sleep(delay)
            return done

    monkeypatch.setattr(transport.threading, "Event", LateWaker)
