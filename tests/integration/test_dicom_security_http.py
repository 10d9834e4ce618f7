"""DICOM security over HTTP, on the in-process app: the refused associations' listing
(paging, newest first), routing destinations' TLS checked on save and for C-ECHO, and a
TLS port that cannot start refused by ``magickbox serve`` with a message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from magickbox import cli
from magickbox.testing.certs import ThrowawayCA, make_test_ca
from tests.conftest import InProcessBox, free_port, in_process_box
from tests.e2e.peers import QUICK, install_buckets


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessBox]:
    home = tmp_path_factory.mktemp("dicomsec") / "home"
    install_buckets(home, Open=QUICK)
    with in_process_box(home, dicom=True) as app:
        yield app


def refused_echo(port: int, calling: str, called: str = "Nobody") -> None:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_rejected, f"{calling} -> {called} was not rejected"


def test_rejections_page_newest_first(app: InProcessBox) -> None:
    for calling in ("PAGE1", "PAGE2", "PAGE3"):
        refused_echo(app.dicom_port, calling)
    first = app.get("/api/v1/rejections", params={"limit": 2}).json()
    assert first["total"] >= 3 and first["limit"] == 2 and first["offset"] == 0
    assert [r["calling_aet"] for r in first["rejections"]] == ["PAGE3", "PAGE2"]
    second = app.get("/api/v1/rejections", params={"limit": 2, "offset": 1}).json()
    assert [r["calling_aet"] for r in second["rejections"]] == ["PAGE2", "PAGE1"]
    row = first["rejections"][0]
    assert (row["called_aet"], row["address"], row["port"]) == ("Nobody", "127.0.0.1",
                                                                app.dicom_port)  # fmt: skip
    assert "no enabled bucket" in row["reason"]
    assert row["id"] > second["rejections"][1]["id"]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "x"}])
def test_rejections_bad_paging_is_422(app: InProcessBox, params: dict) -> None:
    assert app.get("/api/v1/rejections", params=params).status_code == 422


def table_with(tls: object) -> str:
    dest = {"IP": "127.0.0.1", "PORT": 104, "AETitleSender": "MB", "AETitleTo": "PACS",
            "TLS": tls}  # fmt: skip
    return json.dumps({"routing": [{"send": [{".*": dest}]}]})


def test_routing_tls_files_are_checked_on_save(
    app: InProcessBox, ca: ThrowawayCA, tmp_path: Path
) -> None:
    good = {"ca": str(ca.ca), "cert": str(ca.client.cert), "key": str(ca.client.key)}
    assert app.client.put("/api/v1/routing", content=table_with(good)).status_code == 200
    assert app.get("/api/v1/routing").json()["routing"][0]["send"][0][".*"]["TLS"] == good
    bad_cases = {
        "no such file": {"ca": str(tmp_path / "missing.pem")},
        "unusable": {"ca": str(ca.client.key)},  # a key is no CA certificate
        "go together": {"cert": str(ca.client.cert)},
        "unknown key": {"certificate": str(ca.client.cert)},
        "must be an object": "yes",
    }
    bad_cases["unusable "] = {**good, "key": str(ca.stranger.key)}  # not the cert's key
    for said, tls in bad_cases.items():
        res = app.client.put("/api/v1/routing", content=table_with(tls))
        assert res.status_code == 400, (said, res.text)
        assert "routing[0].send[0]['.*'].TLS" in res.json()["detail"], res.text
        assert said.strip() in res.json()["detail"], res.text
    # the table saved first is still the one in use
    assert app.get("/api/v1/routing").json()["routing"][0]["send"][0][".*"]["TLS"] == good


def test_echo_with_bad_tls_files_is_400(app: InProcessBox, tmp_path: Path) -> None:
    body = {"IP": "127.0.0.1", "PORT": app.dicom_port, "AETitleTo": "Open",
            "TLS": {"ca": str(tmp_path / "nope.pem")}}  # fmt: skip
    res = app.client.post("/api/v1/destinations/echo", json=body)
    assert res.status_code == 400 and "no such file" in res.json()["detail"]


def test_echo_over_tls_to_a_plain_port_names_the_handshake(
    app: InProcessBox, ca: ThrowawayCA
) -> None:
    body = {"IP": "127.0.0.1", "PORT": app.dicom_port, "AETitleTo": "Open",
            "TLS": {"ca": str(ca.ca)}, "any_destination": True}  # fmt: skip
    res = app.client.post("/api/v1/destinations/echo", json=body)
    assert res.status_code == 200 and not res.json()["ok"]
    assert "TLS handshake failed" in res.json()["message"]


@pytest.mark.parametrize(
    ("files", "said"),
    [
        ({}, "dicom_tls_cert and dicom_tls_key are needed"),
        ({"dicom_tls_port": "DICOM"}, "is also the DICOM or the web port"),
        ({"dicom_tls_cert": "nope.crt", "dicom_tls_key": "nope.key"}, "no such file"),
        ({"dicom_tls_cert": "server.crt", "dicom_tls_key": "client.key"}, "unusable"),
        (
            {"dicom_tls_cert": "server.crt", "dicom_tls_key": "server.key", "dicom_tls_ca": "x"},
            "no such file",
        ),
    ],
)
def test_serve_refuses_a_tls_port_it_cannot_open(
    files: dict[str, str], said: str, ca: ThrowawayCA, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Relative file names are in the home; nothing starts, and the message says why."""
    home = tmp_path / "home"
    home.mkdir()
    for pem in (ca.server.cert, ca.server.key, ca.client.key):
        (home / pem.name).write_bytes(pem.read_bytes())
    dicom_port = free_port()
    sets = {"dicom_tls_port": free_port(), **files}
    if sets["dicom_tls_port"] == "DICOM":
        sets["dicom_tls_port"] = dicom_port
    argv = ["serve", "--home", str(home), "--web-port", str(free_port()),
            "--dicom-port", str(dicom_port)]  # fmt: skip
    argv += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    assert cli.main(argv) == 1
    assert said in capsys.readouterr().err
