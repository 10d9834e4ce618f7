"""The authority the Box holds: credentials in, a Principal (or nothing) out; and the audit."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import sessionmaker

from magickbox.auth.audit import AuditFilter, AuditLog
from magickbox.auth.principal import Principal
from magickbox.auth.roles import Role
from magickbox.auth.sessions import Session, Sessions
from magickbox.auth.store import AuthStore
from magickbox.auth.throttle import LoginThrottle
from magickbox.config import Settings
from magickbox.errors import Invalid, Unauthorized

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrustedNetwork:
    network: Network
    role: Role


def parse_trusted(items: list[str]) -> list[TrustedNetwork]:
    """``["10.0.0.0/8=viewer", ...]``; a trusted network is never admin (admin routes ask
    who you are, always)."""
    found = []
    for item in items:
        cidr, sep, role_name = item.partition("=")
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError as exc:
            raise Invalid(f"trusted_networks: {item!r}: {exc}") from exc
        role = Role.parse(role_name) if sep else Role.viewer
        if role >= Role.admin:
            raise Invalid(f"trusted_networks: {item!r}: a network may be viewer or operator")
        found.append(TrustedNetwork(network, role))
    return found


class Authority:
    def __init__(self, settings: Settings, db: sessionmaker) -> None:
        self.settings = settings
        self.store = AuthStore(db, settings.password_hash_cost)
        if settings.password_hash_cost != "standard":
            log.warning("password_hash_cost=%s: new passwords are hashed cheaply (tests only)",
                        settings.password_hash_cost)  # fmt: skip
        self.log = AuditLog(db)
        self.sessions = Sessions(db, settings.session_minutes * 60)
        self.throttle = LoginThrottle(settings.login_max_failures, settings.login_window_seconds)
        self.trusted = parse_trusted(settings.trusted_networks)

    def by_token(self, secret: str, address: str) -> Principal | None:
        found = self.store.token_role(secret)
        return Principal("token", found[0], found[1], address) if found else None

    def by_session(self, sid: str, address: str) -> tuple[Principal, Session] | None:
        session = self.sessions.get(sid)
        if session is None:
            return None
        role = self.store.current_role(session.user, session.started_at)
        if role is None:
            self.sessions.end(sid)
            return None
        return Principal("user", session.user, role, address, sid), session

    def by_network(self, address: str) -> Principal | None:
        """The best role a trusted network gives ``address`` (None: not trusted)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        best = max((t for t in self.trusted if ip in t.network), key=lambda t: t.role, default=None)
        return Principal("trusted", str(best.network), best.role, address) if best else None

    def login(self, name: str, password: str, address: str) -> tuple[str, Session]:
        """A new session for the right password; throttled, and audited either way."""
        self.throttle.check(address, name)
        role = self.store.login(name, password)
        if role is None:
            self.throttle.failed(address, name)
            self.log.record(None, "login_failed", name, address=address)
            raise Unauthorized("wrong user name or password")
        self.throttle.succeeded(address, name)
        sid, session = self.sessions.create(name, role)
        self.log.record(Principal("user", name, role, address), "login", name)
        return sid, session

    def logout(self, who: Principal) -> None:
        if who.session:
            self.sessions.end(who.session)
            self.log.record(who, "logout", who.name)

    def audit(self, who: Principal | None, action: str, target: str = "", **detail: Any) -> None:
        self.log.record(who, action, target, **detail)

    def audit_page(self, flt: AuditFilter, limit: int, offset: int) -> dict[str, Any]:
        return self.log.page(flt, limit, offset)

    def audit_lines(self, flt: AuditFilter) -> Iterator[bytes]:
        return self.log.lines(flt)
