"""The job database: the single source of truth for what exists and in which state.

SQLite in the home by default (WAL, so the web API reads while the queue writes), or
any SQLAlchemy URL such as PostgreSQL. The schema is kept by Alembic migrations, so a
newer MagickBox opens an older home.
"""

from __future__ import annotations

import enum
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Float, Integer, String, Text, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


class State(enum.StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


FINISHED = (State.DONE, State.FAILED)


class Base(DeclarativeBase):
    pass


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
    received_at: Mapped[float] = mapped_column(Float, default=time.time)
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


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest version (creates it in a new home)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str) -> sessionmaker:
    engine = make_engine(url)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)
