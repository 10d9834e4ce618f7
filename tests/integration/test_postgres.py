"""The box on a real PostgreSQL server instead of SQLite (``database_url``).

A throwaway cluster is made with the distribution's initdb on a free loopback port.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from magickbox.testing.dicomgen import write_study
from tests.conftest import free_port

pytestmark = pytest.mark.e2e


def _pg_bin(tool: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    return found[-1] if found else shutil.which(tool)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    # initdb refuses to run as root: the cluster belongs to the postgres user then.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="mb-pg-", dir="/tmp"))
    if as_user:
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run(
        [*as_user, initdb, "-D", str(data / "db"), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -h 127.0.0.1 -k {data}"
    subprocess.run(
        [
            *as_user,
            pg_ctl,
            "-D",
            str(data / "db"),
            "-o",
            opts,
            "-l",
            str(data / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [
                *as_user,
                _pg_bin("createdb") or "createdb",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "magickbox",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/magickbox"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data / "db"), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(data, ignore_errors=True)


def test_box_runs_on_postgresql(box_factory, postgres_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    box = box_factory(env={"MAGICKBOX_DATABASE_URL": postgres_url})
    study = write_study(tmp_path / "study", n_images=3, rows=32, cols=32)
    sent = box.storescu(study.paths[0].parent)
    assert sent.returncode == 0, sent.stderr
    jobs = box.wait_jobs(1, timeout=90)
    assert jobs[0]["pid"] == study.study_uid
    assert not (box.home / "magickbox.db").exists()  # the rows really are in PostgreSQL

    from sqlalchemy import create_engine, text

    with create_engine(postgres_url).connect() as conn:
        rows = conn.execute(text("select scratchdir, state, nfiles from jobs")).all()
        version = conn.execute(text("select version_num from alembic_version")).scalar()
    assert [(r.scratchdir, r.state, r.nfiles) for r in rows] == [(jobs[0]["scratchdir"], "done", 3)]
    from tests.unit.test_migrations import head_revision

    assert version == head_revision()  # every migration ran on PostgreSQL too
    # the series views and the identity filters (LIKE with an escape) work there too
    (series,) = box.get(f"/api/v1/jobs/{jobs[0]['scratchdir']}/series").json()
    assert series["num_files"] == 3 and series["classify_type"] == ["MR", "T1", "axial"]
    for params, n in (({"modality": "MR"}, 1), ({"modality": "M"}, 0), ({"q": "mb-0001"}, 1)):
        found = box.get("/api/v1/jobs", params=params).json()["total"]
        assert found == n, params
    # page logins are rows there too (login_sessions)
    from magickbox.auth.roles import Role

    box.add_user("pg", Role.viewer, "pg's password")
    cookie = box.login_cookie("pg", "pg's password")
    import httpx

    me = httpx.get(f"{box.url}/api/v1/me", cookies={cookie["name"]: cookie["value"]})
    assert me.status_code == 200 and me.json()["name"] == "pg"
