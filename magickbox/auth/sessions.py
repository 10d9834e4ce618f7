"""Login sessions of the web page, in memory: a restart of the box logs everyone out."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from magickbox.auth.roles import Role

COOKIE = "mb_session"
CSRF_HEADER = "X-CSRF-Token"


@dataclass
class Session:
    user: str
    role: Role
    csrf: str  # sent back by the page in X-CSRF-Token on every state change
    expires_at: float
    started_at: float = field(default_factory=time.time)


class Sessions:
    """Random session ids with an idle timeout (each use extends it)."""

    def __init__(self, idle_seconds: float) -> None:
        self.idle = idle_seconds
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: str, role: Role) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(user, role, secrets.token_urlsafe(32), time.time() + self.idle)
        with self._lock:
            self._drop_expired()
            self._by_id[sid] = session
        return sid, session

    def get(self, sid: str) -> Session | None:
        now = time.time()
        with self._lock:
            session = self._by_id.get(sid)
            if session is None or session.expires_at <= now:
                self._by_id.pop(sid, None)
                return None
            session.expires_at = now + self.idle
            return session

    def end(self, sid: str) -> None:
        with self._lock:
            self._by_id.pop(sid, None)

    def end_user(self, user: str) -> None:
        """Log a user out everywhere (removed, or a new password)."""
        with self._lock:
            for sid in [k for k, v in self._by_id.items() if v.user == user]:
                del self._by_id[sid]

    def _drop_expired(self) -> None:
        now = time.time()
        for sid in [k for k, v in self._by_id.items() if v.expires_at <= now]:
            del self._by_id[sid]
