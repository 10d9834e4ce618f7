"""Schemathesis against the OpenAPI document, as an admin, bounded in examples: no 500s, no
answer that breaks its documented schema (in process: the real app over a real Box)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from magickbox.auth.roles import Role
from magickbox.box import Box
from magickbox.config import load_settings
from magickbox.web.app import create_app
from tests.conftest import free_port

# schemathesis and hypothesis are imported by the fixture and the test, not here: every
# xdist worker collects this module, and they take a second to import (pyproject.toml
# keeps their pytest plugins, which nothing uses, from loading too).

EXAMPLES = 3  # per operation: the whole run stays within seconds


class StartedOnce:
    """The app with its lifespan answered here: schemathesis runs one per call, the Box is
    started once by the fixture."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            for phase in ("startup", "shutdown"):
                await receive()
                await send({"type": f"lifespan.{phase}.complete"})
            return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def app_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    home = tmp_path_factory.mktemp("schemathesis") / "home"
    settings = load_settings(home, announce=False, dicom_port=free_port(), quiet_seconds=0.2)
    box = Box(settings)
    token = box.auth.store.create_token("schemathesis", Role.admin)[0]
    box.start(dicom=False)
    try:
        yield StartedOnce(create_app(box, dicom=False)), token
    finally:
        box.stop()


@pytest.fixture(scope="module")
def api_schema(app_box: tuple[Any, str]):  # type: ignore[no-untyped-def]
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app_box[0],
                                            headers={"Host": "127.0.0.1"})  # fmt: skip
    # Revoking tokens by a generated id could revoke this run's own admin token.
    return schema.exclude(path="/api/v1/tokens/{token}", method="DELETE")


def test_every_operation_answers_within_its_schema(api_schema, app_box: tuple[Any, str]) -> None:  # type: ignore[no-untyped-def]
    """Each operation with generated inputs (schemathesis' strategies, hypothesis-driven:
    its pytest plugin does not run on this pytest)."""
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    # No 500, and every answer within its documented schema; 4xx answers to generated junk
    # (a bad name is 400, a missing job 404) are expected and not all listed per route.
    checks = [not_a_server_error, response_schema_conformance]
    headers = {"Authorization": f"Bearer {app_box[1]}", "Host": "127.0.0.1"}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 40
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(headers=headers, checks=checks)

        check()
