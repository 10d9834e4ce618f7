"""Who may call which route: the one place a route's minimum role is declared.

Every route says ``dependencies=[require(Role.viewer)]`` (or takes ``who: Who`` made by
``require``); ``tests/integration/test_route_roles.py`` fails for a route without one. The
:class:`Guard` middleware refuses, before any route runs, a Host that is not the box's (DNS
rebinding) and a state change a browser marks cross-site (CSRF).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.routing import iter_route_contexts
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from magickbox.auth.hashing import same
from magickbox.auth.hosts import host_of, machine_hosts
from magickbox.auth.principal import Principal
from magickbox.auth.roles import Role
from magickbox.auth.sessions import COOKIE, CSRF_HEADER
from magickbox.config import Settings
from magickbox.errors import Forbidden, Unauthorized

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ANONYMOUS = Principal("none", "anonymous", Role.public)


@dataclass(frozen=True)
class Requirement:
    role: Role
    legacy: bool = False  # trusted networks may use it without credentials
    get_changes_state: bool = False  # a legacy GET that changes state (deleteStudy.php)


def require(role: Role, *, legacy: bool = False, get_changes_state: bool = False) -> Any:
    """The dependency that lets a request through with at least ``role``; its value is the
    :class:`Principal`. ``legacy``: an original endpoint trusted networks may use."""
    needed = Requirement(role, legacy, get_changes_state)

    def check(request: Request) -> Principal:
        return authorize(request, needed)

    check.__requirement__ = needed  # type: ignore[attr-defined]  # read by requirement_of
    return Depends(check)


@dataclass(frozen=True)
class Endpoint:
    """A route as the app serves it: its full path (router prefixes included)."""

    path: str
    methods: frozenset[str]
    route: BaseRoute  # the route as declared (an APIRoute, or a Mount of static files)


def endpoints(app: FastAPI) -> list[Endpoint]:
    """Every route of ``app``, included routers flattened (FastAPI >= 0.16x keeps them as
    included-router entries in ``app.routes``)."""
    found = []
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        methods = frozenset(getattr(route, "methods", None) or ())
        found.append(Endpoint(str(ctx.path), methods, route))
    return found


def requirement_of(route: BaseRoute) -> list[Requirement]:
    """Every requirement a route declares (exactly one, says the route-walking test)."""
    dependant = getattr(route, "dependant", None)
    found, todo = [], list(dependant.dependencies if dependant else ())
    while todo:
        dep = todo.pop()
        needed = getattr(dep.call, "__requirement__", None)
        if needed is not None:
            found.append(needed)
        todo.extend(dep.dependencies)
    return found


def authorize(request: Request, needed: Requirement) -> Principal:
    if needed.role is Role.public:
        return ANONYMOUS
    who = identify(request, needed)
    if who is None:
        raise Unauthorized("log in, or send Authorization: Bearer <token>")
    check_role(who, needed.role)
    if needed.get_changes_state:
        refuse_browser_get_change(request, who)
    return who


def refuse_browser_get_change(request: Request, who: Principal) -> None:
    """A legacy GET that changes state: never cross-site, never by a page login (an
    ``<img>`` on any page would do it with the user's cookie)."""
    if cross_site(request):
        raise Forbidden("a cross-site request never changes anything")
    if who.kind == "user":  # a browser session: the page uses DELETE /api/v1 instead
        raise Forbidden("a page login changes nothing by GET (the page uses POST, PUT, DELETE)")


def allow_get_change(request: Request, who: Principal, role: Role) -> None:
    """For a legacy GET that only sometimes changes state (``timing.php?time=``,
    ``db.php?parse=``): the same rules as ``get_changes_state``, checked when it does, with
    ``role`` (more than the route's reading role)."""
    check_role(who, role)
    refuse_browser_get_change(request, who)


def check_role(who: Principal, role: Role) -> None:
    if who.role < role:
        if who.kind == "trusted":  # a trusted network is no identity: credentials would do
            raise Unauthorized(f"this needs the {role.name} role: send credentials")
        raise Forbidden(f"this needs the {role.name} role; {who.label} is {who.role.name}")


def identify(request: Request, needed: Requirement) -> Principal | None:
    """The bearer token, else the session cookie, else (legacy routes) a trusted network."""
    box = request.app.state.box
    address = request.client.host if request.client else ""
    if not box.settings.auth:
        return Principal("none", "auth off", Role.admin, address)
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, secret = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("the Authorization header must be: Bearer <token>")
        who = box.who_by_token(secret.strip(), address)
        if who is None:
            raise Unauthorized("the token is unknown, revoked or expired")
        return who
    found = box.who_by_session(request.cookies.get(COOKIE, ""), address)
    if found is not None:
        who, session = found
        if request.method not in SAFE_METHODS and not same(
            request.headers.get(CSRF_HEADER, ""), session.csrf
        ):
            raise Forbidden(f"a change from the page needs its {CSRF_HEADER} header")
        return who
    return box.who_by_network(address) if needed.legacy else None


def cross_site(request: Request | Scope) -> bool:
    """Whether a browser says the request comes from another site's page."""
    headers = request.headers if isinstance(request, Request) else _headers(request)
    fetch_site = headers.get("sec-fetch-site", "")
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return True  # same-site too: another port of this host is another origin
    own = headers.get("host", "").lower()
    for name in ("origin", "referer"):
        value = headers.get(name)
        if value is not None and (value == "null" or urlsplit(value).netloc.lower() != own):
            return True
    return False


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}


class Guard:
    """Pure ASGI middleware (downloads stream through untouched): a foreign Host is refused
    with 400, a cross-site state change with 403."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.any_host = "*" in settings.allowed_hosts
        given = {h.lower() for h in settings.allowed_hosts}
        self.hosts = frozenset(given) if given else machine_hosts(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        refusal = None
        if not self.any_host and host_of(headers.get("host", "")) not in self.hosts:
            refusal = (400, "this box does not answer to that Host (see allowed_hosts)")
        elif scope["method"] not in SAFE_METHODS and cross_site(scope):
            refusal = (403, "a cross-site request never changes anything")
        if refusal is None:
            return await self.app(scope, receive, send)
        response = JSONResponse({"detail": refusal[1]}, status_code=refusal[0])
        return await response(scope, receive, send)
