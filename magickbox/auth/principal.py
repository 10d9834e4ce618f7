"""Who is asking: the answer every authenticated request carries."""

from __future__ import annotations

from dataclasses import dataclass

from magickbox.auth.roles import Role


@dataclass(frozen=True)
class Principal:
    kind: str  # "user" (a session), "token", "trusted" (a trusted network), "none" (auth off)
    name: str  # user name, token name, or the trusted network's CIDR
    role: Role
    address: str = ""
    session: str = ""  # the session's id when it came from the cookie (then CSRF applies)

    @property
    def label(self) -> str:
        """How the audit trail names it, e.g. ``token:backup`` or ``trusted:127.0.0.0/8``."""
        return f"{self.kind}:{self.name}"
