"""Login sessions of the web page, in the database: a restart of the box logs nobody out.

The session id lives only in the browser's cookie; the table keeps its SHA-256 (as for API
tokens), so a copy of the database opens no session.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from sqlalchemy import delete
from sqlalchemy.orm import sessionmaker

from magickbox.auth.hashing import same, token_digest
from magickbox.auth.models import LoginSession
from magickbox.auth.roles import Role

COOKIE = "mb_session"
CSRF_HEADER = "X-CSRF-Token"
EXTEND_EVERY = 60.0  # seconds: a use extends the idle time, written at most this often


@dataclass
class Session:
    user: str
    role: Role
    csrf: str  # sent back by the page in X-CSRF-Token on every state change
    expires_at: float
    started_at: float = field(default_factory=time.time)


class Sessions:
    """Random session ids with an idle timeout (each use extends it)."""

    def __init__(self, db: sessionmaker, idle_seconds: float) -> None:
        self.db = db
        self.idle = idle_seconds
        # Not a write on every request: the expiry moves when it has fallen this far behind.
        self.slack = min(EXTEND_EVERY, idle_seconds / 10)

    def create(self, user: str, role: Role) -> tuple[str, Session]:
        sid, now = secrets.token_urlsafe(32), time.time()
        session = Session(user, role, secrets.token_urlsafe(32), now + self.idle, now)
        with self.db.begin() as s:
            s.execute(delete(LoginSession).where(LoginSession.expires_at <= now))
            s.add(LoginSession(digest=token_digest(sid), user_name=user, role=role.name,
                               csrf=session.csrf, started_at=now,
                               expires_at=session.expires_at))  # fmt: skip
        return sid, session

    def get(self, sid: str) -> Session | None:
        if not sid:
            return None
        now, digest = time.time(), token_digest(sid)
        with self.db.begin() as s:
            row = s.get(LoginSession, digest)
            if row is None or not same(row.digest, digest):
                return None
            if row.expires_at <= now:
                s.delete(row)
                return None
            if now + self.idle - row.expires_at > self.slack:
                row.expires_at = now + self.idle
            return Session(row.user_name, Role[row.role], row.csrf, row.expires_at, row.started_at)

    def end(self, sid: str) -> None:
        with self.db.begin() as s:
            s.execute(delete(LoginSession).where(LoginSession.digest == token_digest(sid)))

    def end_user(self, user: str) -> None:
        """Log a user out everywhere (removed, or a new password)."""
        with self.db.begin() as s:
            s.execute(delete(LoginSession).where(LoginSession.user_name == user))
