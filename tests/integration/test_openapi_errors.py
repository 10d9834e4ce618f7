"""The OpenAPI document says what the box really answers: zips as application/zip, and the
error answers of each operation (401/403 unless public, 404 for a named thing, 400/409 for
a change), each the one handler's {"detail": ...}; checked against real answers."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from fastapi.testclient import TestClient

from tests.conftest import InProcessBox

ZIPS = ("/api/v1/jobs/{scratchdir}/output.zip", "/api/v1/jobs/{scratchdir}/input.zip",
        "/code/php/getOutputZip.php")  # fmt: skip


def test_zips_are_declared_as_zips_and_errors_as_detail(
    app_factory: Callable[..., InProcessBox],
) -> None:
    app = app_factory()
    paths = app.get("/openapi.json").json()["paths"]
    for path in ZIPS:
        answers = paths[path]["get"]["responses"]
        assert list(answers["200"]["content"]) == ["application/zip"], answers["200"]
    operations = [(p, m, op) for p, ops in paths.items() for m, op in ops.items()]
    for path, method, op in operations:
        codes = set(op["responses"])
        assert any(code[0] in "45" for code in codes), (path, method, codes)
        if "{" in path:
            assert "404" in codes, (path, method)
    health = paths["/api/v1/health"]["get"]["responses"]
    assert "401" not in health and "503" in health  # public, and its own 503 kept
    delete = paths["/api/v1/jobs/{scratchdir}"]["delete"]["responses"]
    assert {"400", "401", "403", "404", "409"} <= set(delete)
    assert delete["404"]["content"]["application/json"]["schema"]["required"] == ["detail"]


def test_the_declared_errors_are_what_comes(app_factory: Callable[..., InProcessBox]) -> None:
    app = app_factory()
    missing = app.get("/api/v1/jobs/tmp.nothere1/output.zip")
    assert missing.status_code == 404 and isinstance(missing.json()["detail"], str)
    anonymous = TestClient(app.client.app, base_url="http://127.0.0.1")
    refused: httpx.Response = anonymous.get("/api/v1/jobs/tmp.nothere1/output.zip")
    assert refused.status_code == 401 and isinstance(refused.json()["detail"], str)
    retry = app.client.post("/api/v1/jobs/tmp.nothere1/retry")
    assert retry.status_code in (404, 409) and isinstance(retry.json()["detail"], str)
