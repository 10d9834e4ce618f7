"""Shared test fixtures: real MagickBox servers on free ports and the real dcmtk tools."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from magickbox.testing.server import BoxServer, dcmtk_tool, free_port

__all__ = ["BoxServer", "copy_bucket", "dcmtk", "free_port"]


def dcmtk(tool: str) -> str:
    """The real dcmtk ``tool``; the test fails when dcmtk is missing (CI installs it)."""
    try:
        return dcmtk_tool(tool)
    except FileNotFoundError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def box_factory(tmp_path: Path) -> Iterator:
    servers: list[BoxServer] = []

    def make(**kw: object) -> BoxServer:
        home = kw.pop("home", None) or tmp_path / f"home{len(servers)}"
        server = BoxServer(Path(home), **kw)  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def box(box_factory) -> BoxServer:  # type: ignore[no-untyped-def]
    return box_factory()


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
