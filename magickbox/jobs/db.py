"""The job database: the single source of truth for what exists and in which state.

SQLite in the home by default (WAL, so the web API reads while the queue writes), or
any SQLAlchemy URL such as PostgreSQL. The schema is kept by Alembic migrations, so a
newer MagickBox opens an older home.
"""

from __future__ import annotations

import ast
import enum
import functools
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Float, Integer, String, Text, create_engine, event, inspect, text
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from magickbox.errors import Conflict
from magickbox.tables import Base


class State(enum.StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


FINISHED = (State.DONE, State.FAILED)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scratchdir: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    bucket: Mapped[str] = mapped_column(String(64), index=True)  # AETitleCalled
    caller_aet: Mapped[str] = mapped_column(String(64), default="")
    caller_ip: Mapped[str] = mapped_column(String(64), default="")
    study_uid: Mapped[str] = mapped_column(String(128), default="", index=True)  # "pid"
    source: Mapped[str] = mapped_column(String(16), default="dicom")  # dicom | upload
    jobname: Mapped[str] = mapped_column(String(256), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    arguments: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of strings
    received_text: Mapped[str] = mapped_column(String(64), default="")  # info.json "received"
    nfiles: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default=State.RECEIVED, index=True)
    received_at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    queued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    success: Mapped[str] = mapped_column(String(64), default="")  # proc.json's value
    log_size: Mapped[int] = mapped_column(Integer, default=0)
    # Who and what the job is, from its series views when it was made (study/identity.py).
    patient_id: Mapped[str] = mapped_column(String(128), default="", index=True)
    patient_name: Mapped[str] = mapped_column(String(256), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_date: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_description: Mapped[str] = mapped_column(Text, default="")
    modalities: Mapped[str] = mapped_column(String(128), default="")  # "CT\\MR", sorted
    series_count: Mapped[int] = mapped_column(Integer, default=0)


class JobMeasures(Base):
    """What a job's bucket measured (its measures.json, checked): one row per job.

    ``data`` is the JSON as the bucket wrote it (a flat object or a list of them), so
    getScratch can hand it on unchanged; ``nrows`` is how many rows it holds.
    """

    __tablename__ = "job_measures"

    scratchdir: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[str] = mapped_column(Text, default="{}")
    nrows: Mapped[int] = mapped_column(Integer, default=1)
    stored_at: Mapped[float] = mapped_column(Float, default=time.time)


class BucketTiming(Base):
    """The running processing-time figures of a bucket (timing.php): every run that ended
    well, and every time posted to timing.php, counted once; deleting jobs keeps them.

    Welford's running sums: ``mean`` and ``m2`` (the sum of squared deviations from the
    mean), so the standard deviation is sqrt(m2 / (n - 1)) without keeping the samples.
    """

    __tablename__ = "bucket_timing"

    bucket: Mapped[str] = mapped_column(String(64), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0)
    mean: Mapped[float] = mapped_column(Float, default=0.0)
    m2: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer; NORMAL sync is durable across a process kill.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


MIGRATIONS = Path(__file__).parent / "migrations"


@functools.cache
def script_heads() -> frozenset[str]:
    """The revisions no migration builds on (alembic's "heads"), read from the files'
    ``revision``/``down_revision`` lines: enough to know a schema is current."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for name, value in _assignments(path, ("revision", "down_revision")):
            if name == "revision":
                revisions.add(value)
            elif value:
                parents.update([value] if isinstance(value, str) else value)
    return frozenset(revisions - parents)


def _assignments(path: Path, names: tuple[str, ...]) -> list[tuple[str, Any]]:
    """The literal values given to ``names`` at the top of a Python file."""
    found = []
    for node in ast.parse(path.read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and target.id in names and value is not None:
            found.append((target.id, ast.literal_eval(value)))
    return found


def at_head(engine: Engine) -> bool:
    """Whether the database's schema is the newest already (nothing to migrate)."""
    if not inspect(engine).has_table("alembic_version"):
        return False
    with engine.connect() as conn:
        current = {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}
    return current == script_heads()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest version (creates it in a new home). Alembic (a
    good part of a second of imports) is loaded only when there is something to do:
    every start of a box but the first finds its schema current. A database that a
    newer MagickBox migrated is refused with Conflict (no traceback, nothing changed): this
    version cannot know that schema."""
    if at_head(engine):
        return
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
    with engine.begin() as conn:
        unknown = set(MigrationContext.configure(conn).get_current_heads()) - known
        if unknown:
            raise Conflict(
                f"the database {engine.url.render_as_string(hide_password=True)} has schema "
                f"version {', '.join(sorted(unknown))}, which this MagickBox does not know: a "
                "newer version migrated it. Run that version again, or restore the database "
                "backed up before the upgrade (README, \"Running it for real\")"
            )
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str) -> sessionmaker:
    engine = make_engine(url)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)
