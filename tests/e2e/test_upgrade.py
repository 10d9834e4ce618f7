"""Going back a version after an upgrade: a ``magickbox serve`` (and ``magickbox users``)
on a database a newer MagickBox migrated says so and exits, with no traceback and the
database left as it was, instead of dying inside Alembic."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from magickbox.testing.server import listening
from tests.e2e.peers import wait_for
from tests.e2e.test_lifecycle import ROOT, free_port, serve

pytestmark = pytest.mark.e2e

FUTURE = "9999_from_a_newer_box"


def test_a_database_of_a_newer_box_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    home, web = tmp_path / "home", free_port()
    first = serve(home, free_port(), web)  # makes the home and migrates it to head
    try:
        wait_for("the first box to serve", lambda: first.poll() is None and listening(web))
    finally:
        first.terminate()
        first.communicate(timeout=60)
    db = home / "magickbox.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (FUTURE,))

    again = serve(home, free_port(), free_port())
    _out, err = again.communicate(timeout=60)
    assert again.returncode != 0 and "Traceback" not in err, err
    assert f"has schema version {FUTURE}, which this MagickBox does not know" in err, err
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "magickbox.cli", "users", "list", "--home", str(home)]
    users = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert users.returncode != 0 and "Traceback" not in users.stderr, users.stderr
    assert "a newer version migrated it" in users.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(FUTURE,)]
