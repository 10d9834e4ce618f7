"""The audit trail: who did what to which job, study or setting, and when. Append only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from magickbox.auth.models import AuditEvent
from magickbox.auth.principal import Principal

# What is recorded (the names the API filters by).
ACTIONS = (
    "login", "login_failed", "logout", "download", "delete", "retry", "upload", "send_retry",
    "routing_change", "user_add", "user_remove", "user_password", "token_create",
    "token_revoke", "bucket_enable", "bucket_disable", "settings_change",
)  # fmt: skip


def bucket_action(enable: bool) -> str:
    """The audit action of a bucket's enable or disable."""
    return "bucket_enable" if enable else "bucket_disable"


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: float | None = None
    until: float | None = None


class AuditLog:
    def __init__(self, sessions: sessionmaker) -> None:
        self.sessions = sessions

    def record(
        self, who: Principal | None, action: str, target: str = "", address: str = "",
        **detail: Any,
    ) -> None:  # fmt: skip
        """Add a row; ``who`` None: an anonymous attempt (a failed login names its user)."""
        row = AuditEvent(
            at=time.time(),
            actor=who.label if who else "",
            actor_kind=who.kind if who else "",
            address=(who.address if who else "") or address,
            action=action,
            target=target[:256],
            detail=orjson.dumps(detail, default=str).decode(),  # a setting may be no JSON type
        )
        with self.sessions.begin() as s:
            s.add(row)

    def page(self, flt: AuditFilter, limit: int, offset: int) -> dict[str, Any]:
        """Newest first: ``{"total", "limit", "offset", "events", "actions"}`` (``actions``:
        every action name, for the page's filter)."""
        query = _filtered(select(AuditEvent), flt)
        with self.sessions() as s:
            total = s.scalar(_filtered(select(func.count(AuditEvent.id)), flt)) or 0
            rows = s.scalars(query.order_by(AuditEvent.id.desc()).limit(limit).offset(offset))
            events = [_view(r) for r in rows]
        return {"total": total, "limit": limit, "offset": offset, "events": events,
                "actions": list(ACTIONS)}  # fmt: skip

    def lines(self, flt: AuditFilter) -> Iterator[bytes]:
        """Every matching row, oldest first, one JSON object a line (the export)."""
        last = 0
        while True:
            with self.sessions() as s:
                query = _filtered(select(AuditEvent), flt).where(AuditEvent.id > last)
                rows = s.scalars(query.order_by(AuditEvent.id).limit(1000)).all()
            if not rows:
                return
            for row in rows:
                yield orjson.dumps(_view(row)) + b"\n"
            last = rows[-1].id


def _filtered(query: Any, flt: AuditFilter) -> Any:
    if flt.actor:
        query = query.where(AuditEvent.actor == flt.actor)
    if flt.action:
        query = query.where(AuditEvent.action == flt.action)
    if flt.target:
        query = query.where(AuditEvent.target == flt.target)
    if flt.since is not None:
        query = query.where(AuditEvent.at >= flt.since)
    if flt.until is not None:
        query = query.where(AuditEvent.at < flt.until)
    return query


def _view(row: AuditEvent) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at,
        "actor": row.actor,
        "actor_kind": row.actor_kind,
        "address": row.address,
        "action": row.action,
        "target": row.target,
        "detail": orjson.loads(row.detail or "{}"),
    }
