"""The audit trail: a row for each action, who did it from where, filters, paging, export."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from magickbox.auth.audit import AuditFilter
from magickbox.auth.principal import Principal
from magickbox.auth.roles import Role
from tests.conftest import InProcessBox, copy_bucket, tmpfs
from tests.integration.test_app_inprocess import study_zip, wait_state

QUICK = '#!/bin/sh\necho ok > "$2/out.txt"\n'


def audit(ibox: InProcessBox, **params: object) -> dict:
    res = ibox.client.get("/api/v1/audit", params=params)
    assert res.status_code == 200, res.text
    return res.json()


def test_each_action_leaves_a_row(app_factory: Callable[..., InProcessBox], tmp_path: Path) -> None:
    home = tmp_path / "home"
    copy_bucket(home, "Quick", QUICK)
    ibox = app_factory(home=home)
    client = ibox.client
    upload = {"theFile": ("s.zip", study_zip(tmp_path), "application/zip")}
    made = client.post("/code/php/processZip.php", data={"aetitle": "Quick"}, files=upload)
    sd = made.json()["scratchdir"]
    wait_state(client, sd, {"done", "failed"})
    assert client.get(f"/api/v1/jobs/{sd}/input.zip").status_code == 200
    assert client.get(f"/code/php/getOutputZip.php?folder={sd}").status_code == 200
    assert client.post(f"/api/v1/jobs/{sd}/retry").status_code == 200
    wait_state(client, sd, {"done", "failed"})
    old = '{"routing": []}'
    new = json.dumps({"routing": [{"name": "r", "send": [{"success": {
        "IP": "127.0.0.1", "PORT": 104, "AETitleSender": "MB", "AETitleTo": "X"}}]}]})  # fmt: skip
    assert client.post("/code/php/saveRouting.php", data={"text": old}).status_code == 200
    assert client.put("/api/v1/routing", content=new).status_code == 200
    assert client.delete(f"/api/v1/jobs/{sd}").status_code == 200

    events = audit(ibox)["events"]
    actions = [e["action"] for e in reversed(events)]
    assert actions == ["upload", "download", "download", "retry", "routing_change",
                       "routing_change", "delete"]  # fmt: skip
    assert all(e["actor"] == "token:tests" and e["address"] == "127.0.0.1" for e in events)
    assert {e["detail"].get("part") for e in events if e["action"] == "download"} == {
        "INPUT", "OUTPUT"}  # fmt: skip
    assert all(e["target"] == sd for e in events if e["action"] != "routing_change")
    change = events[1]
    assert change["detail"]["old"] == old and change["detail"]["new"] == new
    # Filters and paging.
    assert [e["action"] for e in audit(ibox, action="download")["events"]] == ["download"] * 2
    page = audit(ibox, limit=2, offset=1)
    assert page["total"] == 7 and [e["id"] for e in page["events"]] == [
        events[1]["id"],
        events[2]["id"],
    ]
    assert audit(ibox, actor="token:nobody")["total"] == 0
    assert audit(ibox, since=events[0]["at"] + 1)["total"] == 0
    # The export: every row, oldest first, one JSON object a line.
    lines = client.get("/api/v1/audit.jsonl").text.splitlines()
    assert [json.loads(line)["action"] for line in lines] == actions
    # Deleting the job (and its study) never removes its rows.
    assert audit(ibox, target=sd)["total"] == 5


def test_a_single_file_download_is_audited_a_picture_on_the_page_not(
    app_factory: Callable[..., InProcessBox], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    copy_bucket(home, "Quick", '#!/bin/sh\nprintf png > "$2/pic.png"\necho ok > "$2/out.txt"\n')
    ibox = app_factory(home=home)
    client = ibox.client
    upload = {"theFile": ("s.zip", study_zip(tmp_path), "application/zip")}
    sd = client.post("/code/php/processZip.php", data={"aetitle": "Quick"},
                     files=upload).json()["scratchdir"]  # fmt: skip
    wait_state(client, sd, {"done"})
    (first,) = client.get(f"/api/v1/jobs/{sd}/files", params={"part": "INPUT"}).json()["files"][:1]
    base = f"/api/v1/jobs/{sd}/files"
    assert client.get(f"{base}/{first['name']}", params={"part": "INPUT"}).status_code == 200
    assert client.get(f"{base}/out.txt").status_code == 200
    assert client.get(f"{base}/pic.png").status_code == 200  # shown inline: not a download
    assert client.get(f"{base}/pic.png", params={"download": 1}).status_code == 200
    rows = [(e["detail"]["part"], e["detail"].get("file")) for e in
            reversed(audit(ibox, action="download", target=sd)["events"])]  # fmt: skip
    assert rows == [("INPUT", first["name"]), ("OUTPUT", "out.txt"), ("OUTPUT", "pic.png")]


def test_a_trusted_network_is_named_in_the_trail(app_factory: Callable[..., InProcessBox]) -> None:
    ibox = app_factory()
    del ibox.client.headers["Authorization"]  # the seed's curl: no credentials, from 127.0.0.1
    assert ibox.client.get("/code/php/deleteStudy.php?scratchdir=tmp.nothere0").status_code == 404
    assert ibox.client.get("/code/php/getOutputZip.php?folder=tmp.nothere0").status_code == 404
    ibox.client.headers["Authorization"] = f"Bearer {ibox.token}"
    assert audit(ibox)["total"] == 0  # nothing happened: nothing recorded
    viewer = ibox.box.auth.store.create_token("v", Role.viewer)[0]
    res = ibox.client.get("/api/v1/audit", headers={"Authorization": f"Bearer {viewer}"})
    assert res.status_code == 403  # the trail is for admins


@pytest.fixture
def scrub_home(tmp_path: Path) -> Iterator[Path]:
    """A home on a small filesystem of its own, so the scrub's high mark can be passed."""
    with tmpfs(tmp_path / "disk") as disk:
        copy_bucket(disk / "home", "Keep", QUICK)
        yield disk / "home"


def test_the_scrub_never_deletes_audit_rows(scrub_home: Path) -> None:
    """Jobs the scrub removes (and their archived studies) keep every audit row naming them."""
    from tests.integration.test_retention import DAY, add_job, end, make_box

    box = make_box(scrub_home, scrub_high=50, scrub_low=30)
    who = Principal("token", "scrubtest", Role.operator, "10.0.0.1")
    names = [add_job(box, n) for n in range(8)]
    for age, name in enumerate(names):
        end(box, name, (9 - age) * DAY)
        box.audit(who, "download", name, part="OUTPUT")
        box.audit(who, "retry", name)
    before = box.audit_page(AuditFilter(), limit=1000, offset=0)

    removed = box.sweep()

    gone = [r.name for r in removed if r.kind == "job"]
    assert gone and [r for r in removed if r.kind == "study"]  # the scrub did remove things
    assert all(box.store.get(name) is None for name in gone)
    after = box.audit_page(AuditFilter(), limit=1000, offset=0)
    assert after == before and after["total"] == 2 * len(names)
    for name in gone:
        assert box.audit_page(AuditFilter(target=name), 10, 0)["total"] == 2


def test_settings_changes_are_recorded_with_old_and_new(
    app_factory: Callable[..., InProcessBox],
) -> None:
    ibox = app_factory(concurrency=2)
    assert ibox.client.patch("/api/v1/setup", json={"concurrency": 3}).status_code == 200
    res = ibox.client.get("/code/php/setup.php",
                          params={"command": "set", "value": "container_memory='1g'"})  # fmt: skip
    assert res.status_code == 200, res.text
    refused = ibox.client.patch("/api/v1/setup", json={"concurrency": -1})
    assert refused.status_code == 400  # nothing changed: nothing recorded
    page = audit(ibox, action="settings_change")
    assert "settings_change" in page["actions"]  # the page's filter offers it
    events = page["events"]
    assert [(e["target"], e["detail"]["new"]) for e in events] == [
        ("container_memory", {"container_memory": "1g"}),
        ("concurrency", {"concurrency": 3}),
    ]
    assert events[1]["detail"]["old"] == {"concurrency": 2}
    assert all(e["actor"] == "token:tests" for e in events)
