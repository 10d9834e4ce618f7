"""For the machines watching the box: ``/api/v1/health`` and Prometheus' ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from magickbox.auth.roles import Role
from magickbox.metrics import CONTENT_TYPE
from magickbox.web.deps import BoxDep, json_bytes
from magickbox.web.security import require

router = APIRouter(tags=["monitoring"])

HEALTH_EXAMPLE: dict[str, Any] = {
    "ok": False,
    "aet": "MAGICKBOX",
    "dicom_port": 11113,
    "pending_sends": 0,
    "parts": {
        "receiver": {"state": "ok", "detail": "C-ECHO MAGICKBOX@127.0.0.1:11113 answered"},
        "dispatcher": {"state": "ok", "detail": ""},
        "router": {"state": "down", "detail": "stopped"},
        "database": {"state": "ok", "detail": ""},
        "disk": {"state": "low", "detail": "1000 of 20000 bytes free (5.0 %)"},
    },
}


@router.get(
    "/api/v1/health",
    dependencies=[require(Role.public)],  # load balancers and mb ask without credentials
    responses={
        200: {"description": "every part is up (ok, low or off)"},
        503: {
            "description": "a part is down",
            "content": {"application/json": {"example": HEALTH_EXAMPLE}},
        },
    },
)
def health(box: BoxDep) -> Response:
    """Each part of the box (receiver, dispatcher, router, database, disk): ``ok``,
    ``low`` (the disk is under ``disk_warn_percent``), ``off`` (not started here) or
    ``down``, with a detail; 503 when one is down."""
    report = box.health()
    return json_bytes(report, status_code=200 if report["ok"] else 503)


@router.get(
    "/metrics",
    dependencies=[require(Role.viewer)],  # AE titles and buckets: Prometheus sends a token
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
)
def metrics(box: BoxDep) -> Response:
    """The box's metrics in Prometheus' text format (scrape this URL)."""
    return Response(box.metrics_text(), media_type=CONTENT_TYPE)
