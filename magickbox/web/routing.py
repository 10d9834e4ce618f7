"""Routing over HTTP: the table, the routing log, a job's sends, retries and C-ECHO.

The original's ``saveRouting.php`` / ``getRoutingLog.php`` are kept; ``/api/v1`` has the
same and more. A table is checked before it is stored: a broken one is answered with
400 and the exact problem, and the stored table stays as it was.
"""

from __future__ import annotations

import ssl
from typing import Annotated, Any

from fastapi import APIRouter, Body, Form, Query, Request, Response
from pydantic import BaseModel, Field

from magickbox.auth.principal import Principal
from magickbox.auth.roles import Role
from magickbox.box import Invalid
from magickbox.errors import Forbidden
from magickbox.names import aet_problem
from magickbox.routing import sender
from magickbox.routing.rules import (
    Placeholders,
    RuleError,
    check_tls,
    load_table,
    port_of,
    resolve,
    tls_files,
)
from magickbox.tls import client_context
from magickbox.web.deps import BoxDep, Offset, RowId, json_bytes
from magickbox.web.security import require

router = APIRouter(tags=["routing"])

Limit = Annotated[int, Query(ge=1, le=10_000)]
VIEW = [require(Role.viewer)]
Admin = Annotated[Principal, require(Role.admin)]


def _save(box: BoxDep, who: Principal, text: str) -> Response:
    old = box.routing_text()
    try:
        table = box.save_routing(text)
    except RuleError as exc:
        return json_bytes({"ok": False, "detail": str(exc)}, status_code=400)
    box.audit(who, "routing_change", "routing.json", old=old, new=text)
    return json_bytes({"ok": True, "rules": len(table["routing"])})


# -- the original's endpoints ------------------------------------------------------------


@router.post("/code/php/saveRouting.php")
def save_routing(box: BoxDep, who: Admin, text: Annotated[str, Form()]) -> Response:
    """Store the routing table given as the form field ``text`` (checked first). Admins
    only: a trusted network cannot rewire where results go."""
    return _save(box, who, text)


@router.get("/code/php/getRoutingLog.php", dependencies=[require(Role.viewer, legacy=True)])
def get_routing_log(box: BoxDep, limit: Limit = 1000, offset: Offset = 0) -> Response:
    """What routing did, newest first."""
    return json_bytes(box.routing_log(limit, offset))


# -- /api/v1 -------------------------------------------------------------------------------


@router.get("/api/v1/routing", dependencies=VIEW)
def get_routing(box: BoxDep) -> Response:
    """The routing table (``{"routing": []}`` when there is none)."""
    try:
        return json_bytes(load_table(box.settings.routing_file))
    except RuleError as exc:
        return json_bytes({"detail": str(exc), "text": box.routing_text()}, status_code=409)


@router.put("/api/v1/routing")
async def put_routing(request: Request, box: BoxDep, who: Admin) -> Response:
    """Replace the routing table with the JSON body, after checking it."""
    text = (await request.body()).decode("utf-8", "replace")
    return _save(box, who, text)


@router.get("/api/v1/routing/log", dependencies=VIEW)
def routing_log(box: BoxDep, limit: Limit = 100, offset: Offset = 0) -> Response:
    return json_bytes(box.routing_log(limit, offset))


@router.get("/api/v1/jobs/{scratchdir}/sends", dependencies=VIEW)
def job_sends(box: BoxDep, scratchdir: str) -> Response:
    """The sends a job's routing made, with their states, tries and reasons."""
    job = box.job(scratchdir)
    return json_bytes(box.sends(job.scratchdir))


@router.get("/api/v1/sends", dependencies=VIEW)
def all_sends(box: BoxDep, state: str | None = None) -> Response:
    rows = box.sends()
    return json_bytes([r for r in rows if state is None or r["state"] == state])


@router.get("/api/v1/sends/failing", dependencies=VIEW)
def failing_sends(box: BoxDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
    """Sends that gave up (failed) or are waiting to try again after a failure."""
    return json_bytes(box.failing_sends(limit))


@router.get("/api/v1/sends/{send_id}", dependencies=VIEW)
def one_send(box: BoxDep, send_id: RowId) -> Response:
    return json_bytes(box.send(send_id))


@router.post("/api/v1/sends/{send_id}/retry")
def retry_send(
    box: BoxDep, who: Annotated[Principal, require(Role.operator)], send_id: RowId
) -> Response:
    """Try a failed send again now (files already accepted are not sent twice)."""
    row = box.retry_send(send_id)
    box.audit(who, "send_retry", str(row.get("scratchdir", "")), send=send_id)
    return json_bytes(row)


class EchoRequest(BaseModel):
    IP: str = Field(description='host name or address; "$me" is this box')
    PORT: int | str
    AETitleSender: str = "MAGICKBOX"
    AETitleTo: str = Field(description="the called AE title of the node")
    TLS: dict[str, Any] | None = Field(
        default=None, description='as in the routing table: {"ca", "cert", "key"} files'
    )
    any_destination: bool = Field(
        default=False,
        description="echo a host and port the routing table does not name (else refused)",
    )


def _tls(box: BoxDep, raw: dict[str, Any] | None) -> ssl.SSLContext | None:
    """The echo's TLS context, checked as a routing table's "TLS" is (Invalid if not)."""
    if raw is None:
        return None
    problems = check_tls("TLS", raw)
    if problems:
        raise Invalid("; ".join(problems))
    files = tls_files(raw)
    return client_context(files, box.settings.home) if files else None


@router.post("/api/v1/destinations/echo")
def echo_destination(
    box: BoxDep, _who: Admin, dest: Annotated[EchoRequest, Body()]
) -> dict[str, Any]:
    """C-ECHO a destination: is it reachable and does it accept these AE titles? Only one
    the routing table names, unless ``any_destination`` (no port scanner for anyone)."""
    ph = Placeholders(box.settings.me_host, box.settings.me_port)
    port = port_of(dest.PORT, ph)
    if port is None:
        raise Invalid("PORT must be a port number (1-65535) or $port")
    timeout = min(box.settings.routing_timeout, 10.0)
    calling, called = resolve(dest.AETitleSender, ph), resolve(dest.AETitleTo, ph)
    for key, title in (("AETitleSender", calling), ("AETitleTo", called)):
        if problem := aet_problem(title):
            raise Invalid(f"{key}: {problem}")
    tls = _tls(box, dest.TLS)
    target = sender.Target(resolve(dest.IP, ph), port, calling, called, timeout, tls)
    if not dest.any_destination and not box.is_destination(target.host, target.port):
        raise Forbidden(
            f"{target.host}:{target.port} is no destination of the routing table "
            "(set any_destination to echo it anyway)"
        )
    return {
        "destination": f"{target.called_aet}@{target.host}:{target.port}",
        **sender.echo(target),
    }
