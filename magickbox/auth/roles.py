"""The roles and what each may do; the one place their order is defined."""

from __future__ import annotations

import enum

from magickbox.errors import Invalid


class Role(enum.IntEnum):
    """Ordered: a role may do everything a lower one may.

    ``public`` is no role at all: routes that need no login (the login page, health).
    """

    public = 0
    viewer = 1  # list jobs, read logs, download
    operator = 2  # + upload, delete, retry, send again
    admin = 3  # + routing table, users, tokens, settings, audit

    @classmethod
    def parse(cls, text: str) -> Role:
        """A role a user or token may hold (never ``public``), by name."""
        try:
            role = cls[text.strip().lower()]
        except KeyError:
            role = cls.public
        if role is cls.public:
            names = ", ".join(r.name for r in HOLDABLE)
            raise Invalid(f"unknown role {text!r}: one of {names}")
        return role


HOLDABLE = (Role.viewer, Role.operator, Role.admin)
