"""The web front: the original's PHP endpoints and the JSON API, over one Box.

Every route is a thin call into :class:`magickbox.box.Box`; errors come back as JSON
``{"detail": ...}`` with a fitting HTTP status.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import swagger_ui_bundle
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from magickbox.auth.roles import Role
from magickbox.box import Box
from magickbox.errors import MagickBoxError
from magickbox.web import (
    api,
    auth,
    bulk,
    classify,
    legacy,
    monitor,
    results,
    routing,
    setup,
    studies,
)
from magickbox.web.security import Guard, require, requirement_of
from magickbox.web.views import ScratchRenderer

log = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).parent / "page"
# Mounts serve static files only (the page's code, the API page's code), no data: no login.
PUBLIC_MOUNTS = frozenset({"/page", "/static/swagger"})


pages = APIRouter()


@pages.get("/", include_in_schema=False, dependencies=[require(Role.viewer)])
def index() -> FileResponse:
    return FileResponse(PAGE_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@pages.get("/openapi.json", include_in_schema=False, dependencies=[require(Role.public)])
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@pages.get("/docs", include_in_schema=False, dependencies=[require(Role.viewer)])
def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="MagickBox API",
        swagger_js_url="/static/swagger/swagger-ui-bundle.js",
        swagger_css_url="/static/swagger/swagger-ui.css",
        swagger_favicon_url="/static/swagger/favicon-32x32.png",
    )


# Every route of the app (the README's table of roles is made from these).
ROUTERS = (
    pages,
    legacy.router,
    bulk.router,  # before api's /jobs/{scratchdir}
    api.router,
    routing.router,
    results.router,
    setup.router,
    studies.router,
    monitor.router,
    classify.router,
    auth.router,
)


def create_app(box: Box, dicom: bool = True) -> FastAPI:
    """The web app over ``box``; its lifespan starts the Box and stops it (SIGTERM included),
    so a test's ``TestClient(create_app(box))`` runs the very box ``magickbox serve`` runs."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(box.start, dicom)
        try:
            yield
        finally:
            await run_in_threadpool(box.stop)

    app = FastAPI(
        lifespan=lifespan,
        title="MagickBox",
        version="1",
        summary="A DICOM processing appliance",
        description="Jobs, buckets and queue of one box. The original's "
        "`/code/php/*.php` endpoints are kept for existing scripts.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, with its role declared like every route's
    )
    app.add_middleware(Guard, settings=box.settings)
    app.state.box = box
    app.state.scratch_renderer = renderer = ScratchRenderer()
    # Fill getScratch's cache before the first request asks (~0.2 s for 10,000 jobs).
    threading.Thread(target=lambda: renderer.render(box.scratch_rows(), box.settings.scratch),
                     name="warm-getscratch", daemon=True).start()  # fmt: skip
    # The API page loads nothing from the internet: a box often has no way out.
    swagger = StaticFiles(directory=swagger_ui_bundle.swagger_ui_path)
    app.mount("/static/swagger", swagger, name="swagger")

    for router in ROUTERS:
        app.include_router(router)
    _declare_errors(app)
    # The page: static files, no build step; everything it shows comes from /api/v1.
    app.mount("/page", StaticFiles(directory=PAGE_DIR), name="page")

    # The one mapping of the box's errors to HTTP: each error class carries its status.
    async def box_error(request: Request, exc: Exception) -> JSONResponse | RedirectResponse:
        status = exc.http_status if isinstance(exc, MagickBoxError) else 500
        if status == 401 and request.method == "GET" and _wants_html(request):
            return RedirectResponse("/login", status_code=303)  # a browser: to the login form
        headers = getattr(exc, "headers", None)
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    async def disk_error(_request: Request, exc: Exception) -> JSONResponse:
        # A full or failing disk; the box carries on.
        return JSONResponse({"detail": str(exc)}, status_code=507)

    app.add_exception_handler(MagickBoxError, box_error)
    app.add_exception_handler(OSError, disk_error)
    return app


# The answers of the one error handler: {"detail": "..."}.
ERROR_CONTENT = {"application/json": {"schema": {
    "type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}}}
CHANGES = frozenset({"post", "put", "patch", "delete"})


def _declare_errors(app: FastAPI) -> None:
    """Add to every operation of the OpenAPI document the errors it can answer: 401 and
    403 unless it is public, 404 for a path naming a thing, 400 and 409 for a change;
    a route's own declaration of a status wins."""
    made = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = made()
        roles = {(route.path, method.lower()): requirement_of(route)[0].role
                 for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)
                 for method in route.methods or ()}  # fmt: skip
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                errors = _errors_of(path, method, roles.get((path, method), Role.public))
                answers = operation.setdefault("responses", {})
                for code, text in errors.items():
                    answers.setdefault(code, {"description": text, "content": ERROR_CONTENT})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _errors_of(path: str, method: str, role: Role) -> dict[str, str]:
    errors = {}
    if method in CHANGES:
        errors["400"] = "the request is wrong (a bad name, argument, file or table)"
    if role is not Role.public:
        errors["401"] = "no credentials, or ones that are wrong, revoked or expired"
        errors["403"] = "the credentials' role may not do this, or a cross-site request"
    if "{" in path:
        errors["404"] = "no such job, study, bucket, send or file"
    if method in CHANGES:
        errors["409"] = "the thing is in a state that does not allow this"
    return errors


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")
