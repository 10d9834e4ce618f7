"""The web front: the original's PHP endpoints and the JSON API, over one Box.

Every route is a thin call into :class:`magickbox.box.Box`; errors come back as JSON
``{"detail": ...}`` with a fitting HTTP status.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse

from magickbox.box import Box, Invalid, NotFound
from magickbox.jobs.scratch import BadName
from magickbox.jobs.unzip import UnsafeZip
from magickbox.web import api, legacy

log = logging.getLogger(__name__)


def create_app(box: Box) -> FastAPI:
    app = FastAPI(
        title="MagickBox",
        version="1",
        summary="A DICOM processing appliance",
        description="Jobs, buckets and queue of one box. The original's "
        "`/code/php/*.php` endpoints are kept for existing scripts.",
    )
    app.state.box = box
    app.include_router(legacy.router)
    app.include_router(api.router)

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/docs")

    def error(status: int):  # type: ignore[no-untyped-def]
        async def handler(_request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        return handler

    app.add_exception_handler(NotFound, error(404))
    app.add_exception_handler(BadName, error(400))
    app.add_exception_handler(Invalid, error(400))
    app.add_exception_handler(UnsafeZip, error(400))
    app.add_exception_handler(OSError, error(507))  # a full or failing disk; the box carries on
    return app
