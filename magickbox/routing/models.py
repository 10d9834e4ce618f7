"""Routing's tables: each send of a job's files to a DICOM node, and the routing log.

They live in the one database (the declarative ``Base`` of ``jobs/db.py``) and its
Alembic migrations, but belong to routing: only ``routing/`` reads or writes them.
"""

from __future__ import annotations

import enum
import time

from sqlalchemy import Boolean, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from magickbox.tables import Base


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
    tls: Mapped[str] = mapped_column(Text, default="")  # JSON of the destination's "TLS"
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
