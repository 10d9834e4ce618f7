"""DICOM security with real peers: allow-lists, refused associations recorded, the TLS port
(mutual TLS) and routing sends over TLS, against dcmtk's storescu and storescp.

One box serves the module (its plain and TLS ports, a throwaway CA); each test tells its
own rows of /api/v1/rejections apart by AE titles or by the port they came to.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from magickbox.jobs.store import JobFilter
from magickbox.testing.certs import ThrowawayCA, make_test_ca
from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer, dcmtk, free_port, in_process_box
from tests.e2e.destinations import StoreSCP
from tests.e2e.peers import QUICK, install_buckets, wait_for, wait_jobs

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    write_study(folder, n_images=2, rows=16, cols=16)
    return folder


class SecureBox(BoxServer):
    """A box whose DICOM TLS port is known to the test."""

    tls_port: int = 0


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, ca: ThrowawayCA) -> Iterator[SecureBox]:
    """Buckets Open (anyone) and Guarded (GOOD only); a TLS port requiring client certs."""
    home = tmp_path_factory.mktemp("secure") / "home"
    install_buckets(home, Open=QUICK, Guarded=(QUICK, {"allowed_callers": [{"AETitle": "GOOD"}]}))
    tls_port = free_port()
    settings = {
        "dicom_tls_port": tls_port,
        "dicom_tls_cert": ca.server.cert,
        "dicom_tls_key": ca.server.key,
        "dicom_tls_ca": ca.ca,
        "routing_retries": 0,
    }
    args = [a for name, value in settings.items() for a in ("--set", f"{name}={value}")]
    server = SecureBox(home, quiet=0.3, extra_args=args)
    server.tls_port = tls_port
    server.start()
    yield server
    server.stop()


def storescu(
    port: int, folder: Path, called: str, calling: str, *tls: str
) -> subprocess.CompletedProcess[str]:
    cmd = [dcmtk("storescu"), "+sd", "+r", "-nh", "-aet", calling, "-aec", called, *tls,
           "127.0.0.1", str(port), str(folder)]  # fmt: skip
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def with_cert(ca: ThrowawayCA, pair: str = "client") -> tuple[str, ...]:
    chosen = getattr(ca, pair)
    return ("+tls", str(chosen.key), str(chosen.cert), "+cf", str(ca.ca))


def rejections(box: SecureBox, **match: object) -> list[dict]:
    rows = box.get("/api/v1/rejections", params={"limit": 1000}).json()["rejections"]
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_a_caller_off_the_allow_list_is_rejected_and_recorded(box: SecureBox, study: Path) -> None:
    refused = storescu(box.dicom_port, study, "Guarded", "BAD")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    [row] = rejections(box, calling_aet="BAD")
    assert (row["called_aet"], row["address"], row["port"]) == ("Guarded", "127.0.0.1",
                                                                  box.dicom_port)  # fmt: skip
    assert row["reason"].startswith("calling AE title not recognized")
    # the caller on the list gets in, and its send is a job
    assert storescu(box.dicom_port, study, "Guarded", "GOOD").returncode == 0
    [job] = wait_jobs(box, 1, bucket="Guarded", caller_aet="GOOD")
    assert job["files"] == 2
    assert rejections(box, calling_aet="GOOD") == []


@pytest.mark.parametrize(
    ("called", "calling", "said", "reason"),
    [
        ("Nobody", "LOST", "Called AE Title Not Recognized", "no enabled bucket"),
        ("MAGICKBOX", "OWNER", "Called AE Title Not Recognized", "Verification only"),
    ],
)
def test_unknown_and_own_called_titles_are_recorded(
    box: SecureBox, study: Path, called: str, calling: str, said: str, reason: str
) -> None:
    result = storescu(box.dicom_port, study, called, calling)
    assert result.returncode != 0 and said in result.stdout + result.stderr
    [row] = rejections(box, calling_aet=calling)
    assert row["called_aet"] == called and reason in row["reason"]


def test_the_tls_port_takes_a_send_with_a_client_certificate(
    box: SecureBox, study: Path, ca: ThrowawayCA
) -> None:
    result = storescu(box.tls_port, study, "Open", "TLSCALLER", *with_cert(ca))
    assert result.returncode == 0, result.stderr
    [job] = wait_jobs(box, 1, bucket="Open", caller_aet="TLSCALLER")
    assert job["files"] == 2


def client_options(ca: ThrowawayCA, how: str) -> tuple[str, ...]:
    """storescu's TLS options for a caller the TLS port must refuse."""
    if how == "no certificate":
        return ("+tla", "+cf", str(ca.ca))
    if how == "another CA's certificate":
        return with_cert(ca, "stranger")
    return ()  # plain DICOM to the TLS port


@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("no certificate", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        ("another CA's certificate", "CERTIFICATE_VERIFY_FAILED"),
        ("no TLS", "WRONG_VERSION_NUMBER"),
    ],
)
def test_the_tls_port_refuses_other_callers_and_records_why(
    box: SecureBox, study: Path, ca: ThrowawayCA, how: str, why: str
) -> None:
    before = {r["id"] for r in rejections(box, port=box.tls_port)}
    result = storescu(box.tls_port, study, "Open", "NOCERT", *client_options(ca, how))
    assert result.returncode != 0
    new = [r for r in rejections(box, port=box.tls_port) if r["id"] not in before]
    assert len(new) == 1, new
    assert new[0]["reason"].startswith("TLS handshake failed") and why in new[0]["reason"]
    assert new[0]["address"] == "127.0.0.1"
    assert box.get("/api/v1/jobs", params={"caller_aet": "NOCERT"}).json()["total"] == 0


def test_a_stalled_handshake_holds_up_nobody_else(
    box: SecureBox, study: Path, ca: ThrowawayCA
) -> None:
    """A peer that connects to the TLS port and says nothing does not stall the listener."""
    with socket.create_connection(("127.0.0.1", box.tls_port), timeout=10):
        result = storescu(box.tls_port, study, "Open", "PATIENT", *with_cert(ca))
        assert result.returncode == 0, result.stderr
    wait_jobs(box, 1, bucket="Open", caller_aet="PATIENT")


def test_without_a_ca_setting_no_client_certificate_is_asked_for(
    tmp_path: Path, study: Path, ca: ThrowawayCA
) -> None:
    """TLS without dicom_tls_ca: an anonymous TLS client (storescu +tla) is let in."""
    home = tmp_path / "home"
    install_buckets(home, Open=QUICK)
    tls = {"dicom_tls_port": free_port(), "dicom_tls_cert": str(ca.server.cert),
           "dicom_tls_key": str(ca.server.key)}  # fmt: skip
    with in_process_box(home, dicom=True, **tls) as app:
        result = storescu(app.box.settings.dicom_tls_port, study, "Open", "ANON",
                          "+tla", "+cf", str(ca.ca))  # fmt: skip
        assert result.returncode == 0, result.stderr
        anon = JobFilter(caller_aet="ANON")
        found = wait_for("the job", lambda: app.box.find_jobs(anon, 1, 0)[0])
        [(job, _log_size)] = found
        assert job.nfiles == 2


def test_the_allow_list_holds_on_the_tls_port(box: SecureBox, study: Path, ca: ThrowawayCA) -> None:
    result = storescu(box.tls_port, study, "Guarded", "TLSBAD", *with_cert(ca))
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
    [row] = rejections(box, calling_aet="TLSBAD")
    assert row["port"] == box.tls_port


def test_a_routing_send_over_tls_to_storescp(
    box: SecureBox, study: Path, ca: ThrowawayCA, tmp_path: Path
) -> None:
    """The box routes a received study to dcmtk's storescp +tls, which requires (and
    verifies) the box's client certificate; the box checks storescp's certificate."""
    server_tls = ["+tls", str(ca.server.key), str(ca.server.cert), "+cf", str(ca.ca)]
    scp = StoreSCP(tmp_path / "received", aet="TLSSTORE", args=server_tls).start()
    try:
        tls = {"ca": str(ca.ca), "cert": str(ca.client.cert), "key": str(ca.client.key)}
        dest = {"IP": "127.0.0.1", "PORT": scp.port, "AETitleSender": "MAGICKBOX",
                "AETitleTo": "TLSSTORE", "TLS": tls}  # fmt: skip
        table = {"routing": [{"name": "tls", "AETitleFrom": "^ROUTEME$",
                              "RouteDirectory": "INPUT", "send": [{".*": dest}]}]}  # fmt: skip
        saved = box.request("PUT", "/api/v1/routing", content=json.dumps(table), timeout=30)
        assert saved.status_code == 200, saved.text
        echo = box.post("/api/v1/destinations/echo", json=dest, timeout=30)
        assert echo.json()["ok"], echo.text
        assert storescu(box.dicom_port, study, "Open", "ROUTEME").returncode == 0
        [job] = wait_jobs(box, 1, caller_aet="ROUTEME")
        sends = wait_for(
            "the send to be done",
            lambda: [
                s
                for s in box.get(f"/api/v1/jobs/{job['scratchdir']}/sends").json()
                if s["state"] in ("done", "failed")
            ],
        )
        assert sends[0]["state"] == "done", sends
        assert sends[0]["TLS"] == {**tls, "check_hostname": True}
        assert len(scp.files()) == 2
    finally:
        scp.stop()
