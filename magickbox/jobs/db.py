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
from sqlalchemy import Boolean, Engine, Float, Integer, String, Text, create_engine, event
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


# -- routing: sends to DICOM nodes and the routing log ------------------------------------


class SendState(enum.StrEnum):
    PENDING = "pending"  # waiting for its (next) try
    SENDING = "sending"
    DONE = "done"  # every file was accepted
    FAILED = "failed"  # out of tries; kept with its reason, can be retried by hand


class Send(Base):
    """One destination of one job: a durable task, tried until every file is accepted."""

    __tablename__ = "sends"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scratchdir: Mapped[str] = mapped_column(String(64), index=True)
    rule_index: Mapped[int] = mapped_column(Integer, default=0)
    rule_name: Mapped[str] = mapped_column(String(256), default="")
    key: Mapped[str] = mapped_column(String(256), default="")  # the send key that matched
    success: Mapped[str] = mapped_column(String(64), default="")  # the value it matched
    directory: Mapped[str] = mapped_column(String(64), default="OUTPUT")
    ip: Mapped[str] = mapped_column(String(256), default="")
    port: Mapped[int] = mapped_column(Integer, default=0)
    calling_aet: Mapped[str] = mapped_column(String(64), default="")
    called_aet: Mapped[str] = mapped_column(String(64), default="")
    which: Mapped[str] = mapped_column(Text, default="")  # JSON of the rule's filter
    error_image: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default=SendState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    next_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    nfiles: Mapped[int] = mapped_column(Integer, default=0)
    naccepted: Mapped[int] = mapped_column(Integer, default=0)
    accepted: Mapped[str] = mapped_column(Text, default="[]")  # JSON: files already accepted
    reason: Mapped[str] = mapped_column(Text, default="")


class RoutingLog(Base):
    """What routing did, step by step: shown newest first by getRoutingLog.php."""

    __tablename__ = "routing_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    scratchdir: Mapped[str] = mapped_column(String(64), default="", index=True)
    send_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rule: Mapped[str] = mapped_column(String(300), default="")  # "#index name"
    destination: Mapped[str] = mapped_column(String(400), default="")  # AET@ip:port
    nfiles: Mapped[int] = mapped_column(Integer, default=0)
    outcome: Mapped[str] = mapped_column(String(32), default="")
    message: Mapped[str] = mapped_column(Text, default="")


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
