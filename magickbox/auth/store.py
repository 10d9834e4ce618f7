"""Users and API tokens in the box's database."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from magickbox.auth import hashing
from magickbox.auth.models import ApiToken, User
from magickbox.auth.roles import Role
from magickbox.errors import Conflict, Invalid, NotFound
from magickbox.names import BadName

MIN_PASSWORD = 8
FIRST_ADMIN = "admin"
PASSWORD_FILE = "admin-password.txt"  # in the home, mode 0600, written once


@dataclass(frozen=True)
class TokenInfo:
    """A token as it is listed: never its secret."""

    id: int
    name: str
    role: str
    created_by: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= time.time():
            return "expired"
        return "active"

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "status": self.status}


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
        raise BadName(f"bad name {name!r}: 1-64 letters, digits or ._-@")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"a password needs at least {MIN_PASSWORD} characters")
    return password


class AuthStore:
    def __init__(self, sessions: sessionmaker, hash_cost: str = "standard") -> None:
        self.sessions = sessions
        self.hash_cost = hash_cost  # the setting password_hash_cost

    # -- users -------------------------------------------------------------------------
    def add_user(self, name: str, role: Role, password: str) -> None:
        name = check_name(name)
        digest = hashing.hash_password(check_password(password), self.hash_cost)
        with self.sessions.begin() as s:
            if s.scalar(select(User).where(User.name == name)) is not None:
                raise Conflict(f"user {name!r} exists already")
            s.add(User(name=name, role=role.name, password_hash=digest))

    def users(self) -> list[dict[str, object]]:
        with self.sessions() as s:
            rows = s.scalars(select(User).order_by(User.name)).all()
            return [{"name": u.name, "role": u.role, "created_at": u.created_at} for u in rows]

    def remove_user(self, name: str) -> None:
        with self.sessions.begin() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                raise NotFound(f"no user {name!r}")
            admins = s.scalars(select(User).where(User.role == Role.admin.name)).all()
            if user.role == Role.admin.name and len(admins) == 1:
                raise Conflict(f"{name!r} is the last admin: add another admin first")
            s.delete(user)

    def set_password(self, name: str, password: str) -> None:
        digest = hashing.hash_password(check_password(password), self.hash_cost)
        with self.sessions.begin() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                raise NotFound(f"no user {name!r}")
            user.password_hash, user.password_changed_at = digest, time.time()

    def login(self, name: str, password: str) -> Role | None:
        """The user's role when the password is right; None otherwise (same time either way)."""
        with self.sessions() as s:
            user = s.scalar(select(User).where(User.name == name))
        if not hashing.verify_password(
            user.password_hash if user else None, password, self.hash_cost
        ):
            return None
        assert user is not None
        return Role[user.role]

    def current_role(self, name: str, since: float) -> Role | None:
        """The user's role now, if the user still exists and its password is unchanged
        since ``since`` (a session's start): a removal or a new password ends sessions,
        also when made by the CLI in another process."""
        with self.sessions() as s:
            user = s.scalar(select(User).where(User.name == name))
        if user is None or user.password_changed_at > since:
            return None
        return Role[user.role]

    def ensure_first_admin(self, home: Path) -> str | None:
        """A home nobody can administer (no user, no active admin token) gets ``admin`` with a
        random password, written to a 0600 file in the home and returned (to be printed
        once); None when someone can log in already."""
        with self.sessions() as s:
            if s.scalar(select(User.id).limit(1)) is not None:
                return None
            if any(t.role == Role.admin.name and t.status == "active" for t in self.tokens()):
                return None  # provisioned with an admin token (magickbox tokens create)
        password = hashing.new_password()
        self.add_user(FIRST_ADMIN, Role.admin, password)
        path = home / PASSWORD_FILE
        path.unlink(missing_ok=True)  # a file left from an older admin: never reused
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{FIRST_ADMIN}\n{password}\n")
        return password

    # -- tokens ------------------------------------------------------------------------
    def create_token(
        self, name: str, role: Role, expires_at: float | None = None, created_by: str = ""
    ) -> tuple[str, TokenInfo]:
        """A new token: its secret (shown once, never stored) and how it is listed."""
        secret = hashing.new_token()
        row = ApiToken(
            name=check_name(name),
            role=role.name,
            digest=hashing.token_digest(secret),
            created_by=created_by,
            created_at=time.time(),
            expires_at=expires_at,
        )
        with self.sessions.begin() as s:
            s.add(row)
            s.flush()
            return secret, _info(row)

    def tokens(self) -> list[TokenInfo]:
        with self.sessions() as s:
            return [_info(t) for t in s.scalars(select(ApiToken).order_by(ApiToken.id)).all()]

    def revoke_token(self, which: str) -> list[TokenInfo]:
        """Revoke the token with this id, or every active token with this name."""
        with self.sessions.begin() as s:
            query = select(ApiToken).where(ApiToken.revoked_at.is_(None))
            if which.isdigit():
                query = query.where(ApiToken.id == int(which))
            else:
                query = query.where(ApiToken.name == which)
            rows = s.scalars(query).all()
            if not rows:
                raise NotFound(f"no active token {which!r}")
            for row in rows:
                row.revoked_at = time.time()
            return [_info(r) for r in rows]

    def token_role(self, secret: str) -> tuple[str, Role] | None:
        """The (name, role) of an active token, or None (unknown, revoked or expired)."""
        digest = hashing.token_digest(secret)
        now = time.time()
        with self.sessions.begin() as s:
            row = s.scalar(select(ApiToken).where(ApiToken.digest == digest))
            # The lookup is by digest; compare again in constant time all the same.
            if row is None or not hashing.same(row.digest, digest) or row.revoked_at is not None:
                return None
            if row.expires_at is not None and row.expires_at <= now:
                return None
            if row.last_used_at is None or now - row.last_used_at > 60:  # not a write a request
                row.last_used_at = now
            return row.name, Role[row.role]


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(row.id, row.name, row.role, row.created_by, row.created_at,
                     row.expires_at, row.revoked_at, row.last_used_at)  # fmt: skip
