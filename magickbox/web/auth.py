"""Logging in and out of the page, who am I, and the audit trail (admins)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Form, Query, Request, Response
from fastapi import Path as FastAPIPath
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field

from magickbox.auth.audit import ACTIONS, AuditFilter
from magickbox.auth.principal import Principal
from magickbox.auth.roles import Role
from magickbox.auth.sessions import COOKIE
from magickbox.web.deps import BoxDep, Offset, json_bytes
from magickbox.web.security import require

router = APIRouter(tags=["security"])
PAGE_DIR = Path(__file__).parent / "page"

Anyone = Annotated[Principal, require(Role.public)]
Viewer = Annotated[Principal, require(Role.viewer)]
Admin = Annotated[Principal, require(Role.admin)]


@router.get("/login", include_in_schema=False, dependencies=[require(Role.public)])
def login_page() -> FileResponse:
    return FileResponse(PAGE_DIR / "login.html", headers={"Cache-Control": "no-cache"})


@router.post("/api/v1/login")
def login(
    request: Request,
    box: BoxDep,
    _who: Anyone,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
) -> Response:
    """Log in to the page: a session cookie (HttpOnly, SameSite=Strict, Secure under HTTPS)
    and the CSRF token the page sends back in ``X-CSRF-Token`` on every change."""
    address = request.client.host if request.client else ""
    sid, session = box.login(name, password, address)
    response = _me(name, session.role, "user", session.csrf)
    response.set_cookie(
        COOKIE,
        sid,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/api/v1/logout")
def logout(box: BoxDep, who: Viewer) -> Response:
    box.logout(who)
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/api/v1/me")
def me(request: Request, box: BoxDep, who: Viewer) -> Response:
    """Who the request is: name, role, kind, and the page's CSRF token (sessions only)."""
    csrf = ""
    if who.session:
        found = box.who_by_session(who.session, who.address)
        csrf = found[1].csrf if found else ""
    return _me(who.name, who.role, who.kind, csrf)


def _me(name: str, role: Role, kind: str, csrf: str) -> Response:
    return json_bytes({"name": name, "role": role.name, "kind": kind, "csrf": csrf})


def _filter(
    actor: str | None, action: str | None, target: str | None,
    since: float | None, until: float | None,
) -> AuditFilter:  # fmt: skip
    return AuditFilter(actor=actor, action=action, target=target, since=since, until=until)


ActionQ = Annotated[str | None, Query(description="one of: " + ", ".join(ACTIONS))]
SinceQ = Annotated[float | None, Query(description="epoch seconds")]


@router.get("/api/v1/audit")
def audit(
    box: BoxDep,
    _who: Admin,
    actor: Annotated[str | None, Query(description='e.g. "user:admin", "token:backup"')] = None,
    action: ActionQ = None,
    target: Annotated[str | None, Query(description="a job, study or user")] = None,
    since: SinceQ = None,
    until: SinceQ = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """The audit trail, newest first: who did what to which job, study or setting."""
    return box.audit_page(_filter(actor, action, target, since, until), limit, offset)


@router.get("/api/v1/audit.jsonl")
def audit_export(
    box: BoxDep,
    _who: Admin,
    actor: str | None = None,
    action: ActionQ = None,
    target: str | None = None,
    since: SinceQ = None,
    until: SinceQ = None,
) -> StreamingResponse:
    """The whole (filtered) audit trail, oldest first, one JSON object a line."""
    lines = box.audit_lines(_filter(actor, action, target, since, until))
    disposition = {"Content-Disposition": "attachment; filename=audit.jsonl"}
    return StreamingResponse(lines, media_type="application/x-ndjson", headers=disposition)


# -- users and tokens (admins; the same as `magickbox users` / `magickbox tokens`) ---------

RoleName = Annotated[str, Field(pattern="^(viewer|operator|admin)$")]
UserName = Annotated[str, FastAPIPath(max_length=64)]


class NewUser(BaseModel):
    name: str = Field(max_length=64)
    role: RoleName = "viewer"
    password: str = Field(min_length=8, max_length=1024)


class NewPassword(BaseModel):
    password: str = Field(min_length=8, max_length=1024)


class NewToken(BaseModel):
    name: str = Field(max_length=64)
    role: RoleName = "viewer"
    expires_days: float | None = Field(default=None, gt=0, le=36600)


@router.get("/api/v1/users")
def users(box: BoxDep, _who: Admin) -> list[dict[str, Any]]:
    return box.users()


@router.post("/api/v1/users", status_code=201)
def add_user(box: BoxDep, who: Admin, user: Annotated[NewUser, Body()]) -> Response:
    box.add_user(user.name, Role[user.role], user.password)
    box.audit(who, "user_add", user.name, role=user.role)
    return json_bytes({"name": user.name, "role": user.role}, status_code=201)


@router.delete("/api/v1/users/{name}")
def remove_user(box: BoxDep, who: Admin, name: UserName) -> Response:
    """Remove a user (never the last admin); their page logins end."""
    box.remove_user(name)
    box.audit(who, "user_remove", name)
    return json_bytes({"removed": name})


@router.put("/api/v1/users/{name}/password")
def set_password(
    box: BoxDep, who: Admin, name: UserName, new: Annotated[NewPassword, Body()]
) -> Response:
    """Set a user's password; their page logins end."""
    box.set_password(name, new.password)
    box.audit(who, "user_password", name)
    return json_bytes({"name": name})


@router.get("/api/v1/tokens")
def tokens(box: BoxDep, _who: Admin) -> list[dict[str, Any]]:
    """Every token with its state (active, expired, revoked); never a secret."""
    return box.tokens()


@router.post("/api/v1/tokens", status_code=201)
def create_token(box: BoxDep, who: Admin, new: Annotated[NewToken, Body()]) -> Response:
    """A new token; ``token`` in the answer is its secret, shown this once."""
    expires = time.time() + new.expires_days * 86400 if new.expires_days else None
    secret, info = box.create_token(new.name, Role[new.role], expires, who.label)
    box.audit(who, "token_create", new.name, id=info["id"], role=new.role)
    return json_bytes({"token": secret, **info}, status_code=201)


@router.delete("/api/v1/tokens/{token}")
def revoke_token(
    box: BoxDep, who: Admin, token: Annotated[str, FastAPIPath(max_length=64)]
) -> Response:
    """Revoke the token with this id, or every active token with this name."""
    revoked = box.revoke_token(token)
    for info in revoked:
        box.audit(who, "token_revoke", info["name"], id=info["id"])
    return json_bytes({"revoked": revoked})
