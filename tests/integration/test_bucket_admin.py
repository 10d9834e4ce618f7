"""Admins enable and disable buckets over HTTP (``POST /api/v1/buckets/{name}/enable|disable``):
the roles, the audit row, a real DICOM association refused while the bucket is disabled, and
``magickbox buckets enable|disable`` doing the same through the same function."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from magickbox import cli
from magickbox.auth.roles import Role
from tests.conftest import InProcessBox, copy_bucket, in_process_box

QUICK = '#!/bin/sh\necho ok > "$2/out.txt"\n'


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessBox]:
    home = tmp_path_factory.mktemp("bucketadmin") / "home"
    copy_bucket(home, "Toggle", QUICK)
    with in_process_box(home, dicom=True, trusted_networks=[]) as app:
        yield app


def info_enabled(app: InProcessBox, name: str) -> object:
    return json.loads((app.home / "streams" / f"bucket{name}" / "info.json").read_text())["enabled"]


def associates(app: InProcessBox, called: str) -> bool:
    """A real C-ECHO association to ``called``: accepted (True) or rejected (False)."""
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", app.dicom_port, ae_title=called)
    accepted = assoc.is_established
    if accepted:
        assoc.release()
    return accepted


def audit_rows(app: InProcessBox, action: str) -> list[dict]:
    res = app.client.get("/api/v1/audit", params={"action": action})
    assert res.status_code == 200, res.text
    return res.json()["events"]


def test_an_admin_disables_and_enables_a_bucket(app: InProcessBox) -> None:
    assert associates(app, "Toggle")
    res = app.client.post("/api/v1/buckets/Toggle/disable")
    assert res.status_code == 200, res.text
    assert res.json()["enabled"] is False and res.json()["ready"] is False
    assert info_enabled(app, "Toggle") == 0
    assert not associates(app, "Toggle")  # the receiver reads info.json per association
    listed = {b["aetitle"]: b for b in app.client.get("/api/v1/buckets?all=true").json()}
    assert listed["Toggle"]["enabled"] is False
    assert "Toggle" not in {b["aetitle"] for b in app.client.get("/api/v1/buckets").json()}

    res = app.client.post("/api/v1/buckets/Toggle/enable")
    assert res.status_code == 200 and res.json()["ready"] is True
    assert info_enabled(app, "Toggle") == 1
    assert associates(app, "Toggle")

    for action in ("bucket_disable", "bucket_enable"):
        (row,) = audit_rows(app, action)[:1]
        assert row["target"] == "Toggle"
        assert row["actor"] == "token:tests" and row["address"] == "127.0.0.1"


def test_only_admins_may_and_an_unknown_bucket_is_404(app: InProcessBox) -> None:
    store = app.box.auth.store
    before = len(audit_rows(app, "bucket_disable"))
    for role in (Role.viewer, Role.operator):
        token = store.create_token(f"bucket-{role.name}", role)[0]
        res = app.client.post("/api/v1/buckets/Toggle/disable",
                              headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert res.status_code == 403, role
    bare = TestClient(app.client.app, base_url="http://127.0.0.1")  # no credentials at all
    assert bare.post("/api/v1/buckets/Toggle/disable").status_code == 401
    assert info_enabled(app, "Toggle") == 1 and associates(app, "Toggle")
    assert app.client.post("/api/v1/buckets/Nothing/disable").status_code == 404
    assert len(audit_rows(app, "bucket_disable")) == before  # refusals change nothing


def test_the_cli_does_the_same_and_is_audited_too(app: InProcessBox) -> None:
    home = str(app.home)
    assert cli.main(["buckets", "disable", "Toggle", "--home", home]) == 0
    assert info_enabled(app, "Toggle") == 0 and not associates(app, "Toggle")
    assert cli.main(["buckets", "enable", "Toggle", "--home", home]) == 0
    assert info_enabled(app, "Toggle") == 1 and associates(app, "Toggle")
    assert cli.main(["buckets", "enable", "Nothing", "--home", home]) == 4
    rows = audit_rows(app, "bucket_disable")
    assert rows[0]["target"] == "Toggle" and rows[0]["actor"].startswith("cli:")
