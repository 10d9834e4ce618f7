"""The box's settings as the original's ``setup.php`` served them, and changes to the
ones that can change while the box runs (``command=set``; ``PATCH /api/v1/setup``)."""

from __future__ import annotations

import argparse
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response

from magickbox.auth.principal import Principal
from magickbox.auth.roles import Role
from magickbox.config import parse_assignment
from magickbox.errors import Invalid
from magickbox.web.deps import BoxDep, json_bytes
from magickbox.web.security import require

router = APIRouter(tags=["setup"])
# Settings are an admin's; set by GET (the original's form) is refused cross-site.
ADMIN_GET_SET = require(Role.admin, get_changes_state=True)
ADMIN = require(Role.admin)

SET_HELP = "NAME=VALUE, one per line (or separated by ';'): the live settings to change"


@router.get("/code/php/setup.php")
def setup_php(
    box: BoxDep,
    who: Annotated[Principal, ADMIN_GET_SET],
    command: Annotated[str | None, Query(description="get or set")] = None,
    value: Annotated[str | None, Query(description=SET_HELP)] = None,
) -> Response:
    """``command=get``: the settings (as ``/api/v1/setup``); ``command=set&value=NAME=VALUE``:
    change live settings, kept in magickbox.toml."""
    if command == "get":
        return json_bytes(box.setup())
    if command == "set":
        if not value or not value.strip():
            raise Invalid("no value to set: give value=NAME=VALUE")
        return json_bytes(box.change_settings(who, assignments(value)))
    raise Invalid("command must be get or set")


def assignments(text: str) -> dict[str, object]:
    """``NAME=VALUE`` pairs as ``magickbox serve --set`` reads them (values are TOML)."""
    changes: dict[str, object] = {}
    for part in text.replace(";", "\n").splitlines():
        if part.strip():
            try:
                name, value = parse_assignment(part.strip())
            except argparse.ArgumentTypeError as exc:
                raise Invalid(str(exc)) from None
            changes[name] = value
    return changes


@router.patch("/api/v1/setup")
def patch_setup(
    box: BoxDep,
    who: Annotated[Principal, ADMIN],
    changes: Annotated[dict[str, Any], Body(description="{name: new value} of live settings")],
) -> Response:
    """Change settings that take effect at once (``live`` in ``GET /api/v1/setup``); they
    are kept in magickbox.toml. A bad name or value changes nothing (400)."""
    return json_bytes(box.change_settings(who, changes))
