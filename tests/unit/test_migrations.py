"""The Alembic migrations and the SQLAlchemy model describe the same schema."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select

import magickbox.auth.models
import magickbox.receive.rejections  # every table of the schema
import magickbox.routing.models
import magickbox.study.models  # noqa: F401  (and the series table)
from magickbox.jobs import db
from magickbox.jobs.db import Base, Job, State, make_engine, migrate, open_database

MIGRATIONS = Path(db.__file__).parent / "migrations"


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def schema_diff(engine: sa.Engine, metadata: sa.MetaData) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, metadata)


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_a_new_database_is_at_head(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(engine)
    assert current_revision(engine) == head_revision()
    assert "jobs" in inspect(engine).get_table_names()
    engine.dispose()


def test_the_heads_read_from_the_files_are_alembics() -> None:
    """migrate() skips alembic when the schema is at these heads: they must be its own."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert db.script_heads() == set(ScriptDirectory.from_config(cfg).get_heads())


def test_a_database_at_head_opens_without_alembic(tmp_path: Path) -> None:
    """A box's every start but the first: the schema is current, alembic is not imported."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    engine = make_engine(url)
    assert not db.at_head(engine)  # no schema yet
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:  # an older home: not at head, migrated
        cfg.attributes["connection"] = conn
        from alembic import command

        command.upgrade(cfg, "0002")
    assert not db.at_head(engine)
    migrate(engine)
    assert db.at_head(engine) and current_revision(engine) == head_revision()
    engine.dispose()
    code = (
        "import sys; from magickbox.jobs.db import open_database; "
        f"open_database({url!r}); print(sorted(m for m in sys.modules if 'alembic' in m))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_migrated_schema_matches_the_model(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(engine)
    assert schema_diff(engine, Base.metadata) == []
    engine.dispose()


def test_the_drift_check_does_see_drift(tmp_path: Path) -> None:
    """The comparison above is not vacuous: a model column no migration made is reported."""
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(engine)
    drifted = sa.MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["jobs"].append_column(sa.Column("priority", sa.Integer, nullable=True))
    diff = schema_diff(engine, drifted)
    assert [(d[0], d[3].name) for d in diff if d[0] == "add_column"] == [("add_column", "priority")]

    narrower = sa.MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(narrower)
    narrower.tables["jobs"].c.scratchdir.type = sa.String(32)
    assert schema_diff(engine, narrower) != []  # a changed type is seen too
    engine.dispose()


def test_every_model_column_exists_in_the_migrated_table(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(engine)
    migrated = {c["name"]: c for c in inspect(engine).get_columns("jobs")}
    assert set(migrated) == {c.name for c in Job.__table__.columns}
    for column in Job.__table__.columns:
        assert migrated[column.name]["nullable"] == column.nullable, column.name
    indexes = {i["name"]: i for i in inspect(engine).get_indexes("jobs")}
    assert indexes["ix_jobs_scratchdir"]["unique"]
    engine.dispose()


def test_a_migrated_database_opened_again_keeps_its_jobs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    sessions = open_database(url)
    with sessions.begin() as s:
        s.add(Job(scratchdir="tmp.abcdef12", bucket="A", state=State.DONE, received_at=1.0))
    sessions.kw["bind"].dispose()

    again = open_database(url)  # a restart: migrating an up-to-date database is a no-op
    with again() as s:
        jobs = s.scalars(select(Job)).all()
    assert [(j.scratchdir, j.bucket, j.state) for j in jobs] == [("tmp.abcdef12", "A", "done")]
    # The model's Python-side defaults filled the columns the insert left out.
    assert (jobs[0].attempts, jobs[0].reason, jobs[0].arguments) == (0, "", "[]")
    with again.begin() as s:
        s.add(Job(scratchdir="tmp.ghijkl34", bucket="B", state=State.QUEUED, received_at=2.0))
    with again() as s:
        assert len(s.scalars(select(Job)).all()) == 2
    assert current_revision(again.kw["bind"]) == head_revision()
    again.kw["bind"].dispose()


def test_rows_written_without_the_orm_get_the_servers_defaults(tmp_path: Path) -> None:
    """Server defaults are not part of the drift check above, so they are checked here."""
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO jobs (scratchdir, bucket, state, received_at) "
                "VALUES ('tmp.abcdef12', 'A', 'queued', :t)"
            ),
            {"t": time.time()},
        )
        got = conn.execute(
            sa.text("SELECT caller_aet, arguments, attempts, log_size, source FROM jobs")
        ).one()
    assert tuple(got) == ("", "[]", 0, 0, "dicom")
    engine.dispose()


def test_the_scratchdir_is_unique(tmp_path: Path) -> None:
    sessions = open_database(f"sqlite:///{tmp_path / 'jobs.db'}")
    with sessions.begin() as s:
        s.add(Job(scratchdir="tmp.abcdef12", bucket="A", state=State.DONE, received_at=1.0))
    with pytest.raises(sa.exc.IntegrityError), sessions.begin() as s:
        s.add(Job(scratchdir="tmp.abcdef12", bucket="B", state=State.DONE, received_at=1.0))
    sessions.kw["bind"].dispose()


def test_a_home_of_0002_keeps_its_jobs_with_an_empty_identity(tmp_path: Path) -> None:
    """0003_views on an older home: the jobs stay, with empty identity and no series."""
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        from alembic import command

        command.upgrade(cfg, "0002")
        conn.execute(
            sa.text(
                "insert into jobs (scratchdir, bucket, state, received_at) "
                "values ('tmp.old00001', 'B', 'done', 1.0)"
            )
        )
    migrate(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        row = conn.execute(sa.text("select patient_id, modalities, series_count from jobs")).one()
        assert tuple(row) == ("", "", 0)
        assert conn.execute(sa.text("select count(*) from series")).scalar() == 0
    engine.dispose()
