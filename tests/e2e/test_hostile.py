"""Hostile input, end to end: HTTP parameters, zip uploads, DICOM data and peers.

Nothing outside the home is read or deleted, nothing passes through a shell, every refusal
is a JSON error with a 4xx status, and the box carries on serving after each attack.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom.config
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from magickbox.routing import dimse
from magickbox.testing.dicomgen import (
    dataset_bytes,
    make_dataset,
    malformed_dataset_bytes,
    save_dataset,
    write_study,
)
from tests.conftest import BoxServer
from tests.e2e.peers import (
    QUICK,
    api_jobs,
    associate,
    contexts_for,
    dataset_part,
    echo,
    echoscu,
    input_files,
    install_buckets,
    send_files,
    store,
    wait_for,
    wait_jobs,
)

pytestmark = pytest.mark.e2e

# Each send is one association, its files one study: a short quiet period
# groups them as a long one would, and every wait for a job is shorter.
QUIET = 0.3

SECRET = "MAGICKBOX-CANARY-SECRET"

# Plants links to files and folders outside the home among its real results.
EVIL = """#!/bin/sh
ln -s /etc/passwd "$2/passwd"
ln -s / "$2/rootdir"
ln -s "$MB_HOME/.." "$2/outside"
mkdir "$2/sub"
ln -s /etc "$2/sub/etc"
echo real > "$2/real.txt"
echo nested > "$2/sub/nested.txt"
"""

# Writes its argv (one per line) and the caller's AE title as it got them.
ARGS = """#!/bin/sh
printf '%s\\n' "$@" > "$2/args.txt"
printf '%s\\n' "$MB_AETITLE_CALLER" > "$2/caller.txt"
"""


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoxServer]:
    """One box for the module (a start costs more than most tests here): each test looks
    only at the jobs and archive folders its own sends add."""
    beside = tmp_path_factory.mktemp("hostile")
    home = beside / "home"
    install_buckets(home, Recv=QUICK, Evil=EVIL, Args=ARGS)
    # Canaries beside the home: a traversal that reaches them must not read or delete them.
    (beside / "canary.txt").write_text(SECRET)
    (beside / "x").mkdir()
    (beside / "x" / "processing.log").write_text(SECRET)
    (beside / "etc").mkdir()
    (beside / "etc" / "processing.log").write_text(SECRET)
    server = BoxServer(home, quiet=QUIET).start()
    yield server
    server.stop()


def scratchdirs(box: BoxServer) -> set[str]:
    return {j["scratchdir"] for j in api_jobs(box)}


def archived(box: BoxServer) -> set[str]:
    return {p.name for p in (box.home / "scratch" / "archive").iterdir()}


def new_jobs(box: BoxServer, before: set[str], n: int) -> list[dict]:
    """Wait for exactly ``n`` finished jobs more than ``before``; those ``n``."""
    return [j for j in wait_jobs(box, len(before) + n) if j["scratchdir"] not in before]


def raw_get(box: BoxServer, target: str) -> tuple[int, bytes, str]:
    """GET ``target`` exactly as written: no client-side normalisation of ``..`` or ``%2F``."""
    conn = http.client.HTTPConnection("127.0.0.1", box.web_port, timeout=30)
    try:
        conn.request("GET", target)
        res = conn.getresponse()
        return res.status, res.read(), res.getheader("content-type") or ""
    finally:
        conn.close()


def assert_json_error(status: int, body: bytes, ctype: str, target: str) -> None:
    assert 400 <= status < 500, f"{target}: {status} {body[:200]!r}"
    assert ctype.startswith("application/json"), f"{target}: {ctype}"
    assert json.loads(body)["detail"], target
    assert SECRET.encode() not in body and b"root:" not in body, target


def canaries_intact(box: BoxServer) -> None:
    beside = box.home.parent
    assert (beside / "canary.txt").read_text() == SECRET
    assert (beside / "x" / "processing.log").read_text() == SECRET
    assert (beside / "etc" / "processing.log").read_text() == SECRET
    assert (box.home / "magickbox.db").is_file()
    assert (box.home / "scratch" / "archive").is_dir()
    assert (box.home / "streams" / "bucketRecv" / "work.sh").is_file()


# -- HTTP ----------------------------------------------------------------------------------


def test_zip_downloads_stay_inside_the_job(box: BoxServer, tmp_path: Path) -> None:
    before = scratchdirs(box)
    study = write_study(tmp_path / "s", n_images=1, rows=16, cols=16)
    assert send_files(box.dicom_port, "Evil", study.paths).ok
    (job,) = new_jobs(box, before, 1)
    sd = job["scratchdir"]
    # A folder that looks like a job but is none (no row in the database) is not served.
    planted = box.home / "scratch" / "tmp.Planted1"
    (planted / "OUTPUT").mkdir(parents=True)
    (planted / "OUTPUT" / "secret.txt").write_text(SECRET)

    for folder in ["../..", "/etc", "..%2F..%2Fetc", "%2Fetc", f"{sd}%2F..%2F..", f"{sd}/../..",
                   "archive", ".incoming", "tmp.Planted1", f"..%2F{sd}", "tmp.%2E%2E"]:  # fmt: skip
        for kind in ("", "&type=input"):
            target = f"/code/php/getOutputZip.php?folder={folder}{kind}"
            assert_json_error(*raw_get(box, target), target)
    for path in ["/api/v1/jobs/..%2F..%2Fetc/output.zip", "/api/v1/jobs/tmp.Planted1/input.zip"]:
        assert_json_error(*raw_get(box, path), path)

    res = box.get("/code/php/getOutputZip.php", params={"folder": sd})
    assert res.status_code == 200
    with zipfile.ZipFile(io.BytesIO(res.content)) as zf:
        names = sorted(zf.namelist())
        assert names == [f"{sd}/OUTPUT/real.txt", f"{sd}/OUTPUT/sub/nested.txt"]
        assert zf.read(f"{sd}/OUTPUT/real.txt") == b"real\n"
    assert b"root:" not in res.content and SECRET.encode() not in res.content
    # The links are there on disk: the zip left them out, not the bucket.
    assert (box.home / "scratch" / sd / "OUTPUT" / "passwd").is_symlink()


def test_delete_refuses_names_that_are_not_jobs_or_studies(box: BoxServer, tmp_path: Path) -> None:
    before = scratchdirs(box)
    study = write_study(tmp_path / "s", n_images=1, rows=16, cols=16)
    assert send_files(box.dicom_port, "Recv", study.paths).ok
    (job,) = new_jobs(box, before, 1)
    sd = job["scratchdir"]

    for query in ["scratchdir=../../x", "scratchdir=..%2F..%2Fx", "scratchdir=/tmp",
                  f"scratchdir={sd}/../..", "scratchdir=archive", "scratchdir=.",
                  "SIUID=../..", "SIUID=..%2F..", "SIUID=/etc", "SIUID=../../x",
                  f"SIUID={study.study_uid}/../..", "SIUID=1.2.3%2F..%2F..%2F..", "SIUID=.",
                  "SIUID=..", "", "scratchdir=&SIUID="]:  # fmt: skip
        target = f"/code/php/deleteStudy.php?{query}"
        assert_json_error(*raw_get(box, target), target)
        canaries_intact(box)
    res = box.delete("/api/v1/studies/..%2F..")
    assert 400 <= res.status_code < 500
    canaries_intact(box)

    # Nothing was deleted on the way; a real name still works.
    assert scratchdirs(box) == before | {sd}
    assert (box.home / "scratch" / "archive" / study.study_uid).is_dir()
    res = box.get("/code/php/deleteStudy.php", params={"SIUID": study.study_uid})
    assert res.status_code == 200 and res.json()["deleted_jobs"] == [sd]
    assert not (box.home / "scratch" / sd).exists()
    assert not (box.home / "scratch" / "archive" / study.study_uid).exists()
    canaries_intact(box)


# -- DICOM data ----------------------------------------------------------------------------


def bad_files(folder: Path) -> dict[str, Path]:
    """Datasets the box must refuse, each written as a Part 10 file."""
    folder.mkdir()
    files = {}
    for kind in ("overlong", "overlong_pixel", "unterminated_sequence"):
        files[kind] = folder / f"{kind}.dcm"
        files[kind].write_bytes(malformed_dataset_bytes(kind))
    ds = make_dataset(study_uid=generate_uid(), series_uid=generate_uid(), rows=16, cols=16)
    del ds.StudyInstanceUID
    files["no study"] = folder / "nostudy.dcm"
    save_dataset(ds, files["no study"])
    for name, uid in (("dots", "../../etc"), ("slash", "1.2.3/../../../x"), ("empty", "")):
        ds = make_dataset(study_uid=generate_uid(), series_uid=generate_uid(), rows=16, cols=16)
        with pydicom.config.disable_value_validation():
            ds.StudyInstanceUID = uid
            files[f"study uid {name}"] = folder / f"uid-{name}.dcm"
            save_dataset(ds, files[f"study uid {name}"])
    return files


def test_malformed_datasets_fail_and_the_association_carries_on(
    box: BoxServer, tmp_path: Path
) -> None:
    before, archived_before = scratchdirs(box), archived(box)
    bad = bad_files(tmp_path / "bad")
    good = write_study(tmp_path / "good", n_images=1, rows=16, cols=16).paths[0]
    contexts = contexts_for([*bad.values(), good])
    assert contexts == [(MRImageStorage, ExplicitVRLittleEndian)]

    assoc = associate(box.dicom_port, "Recv", "HOSTILE", contexts, echo=True)
    try:
        statuses = {name: store(assoc, path) for name, path in bad.items()}
        good_status = store(assoc, good)
        dimse.park_reactor(assoc)  # see peers.store
        echo_status = assoc.send_c_echo().Status
    finally:
        assoc.release()
    refused = {name: s for name, s in statuses.items() if s != 0x0000}
    assert sorted(refused) == sorted(bad), f"accepted: {set(bad) - set(refused)}"
    assert (good_status, echo_status) == (0x0000, 0x0000)

    (job,) = new_jobs(box, before, 1)
    stored = input_files(box, job["scratchdir"])
    assert list(stored) == [good.name]
    assert dataset_part(stored[good.name]) == dataset_part(good)
    assert sorted(archived(box) - archived_before) == [job["study_uid"]]
    assert not (box.home / "etc").exists() and not (box.home.parent / "etc" / "x").exists()
    assert not any((box.home / "scratch" / ".partial").iterdir())
    assert echo(box.dicom_port, "Recv") == 0x0000


def raw_associate(port: int, called: str, calling: str, sop_class: str, syntax: str):  # type: ignore[no-untyped-def]
    """Open an association by hand (A-ASSOCIATE-RQ bytes); return the socket once accepted."""

    def item(kind: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(payload)) + payload

    context = item(
        0x20, bytes([1, 0, 0, 0]) + item(0x30, sop_class.encode()) + item(0x40, syntax.encode())
    )
    user = item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.826.0.1.3680043.9"))
    body = (
        struct.pack(">HH", 1, 0)
        + called.encode().ljust(16)
        + calling.encode().ljust(16)
        + bytes(32)
        + item(0x10, b"1.2.840.10008.3.1.1.1")
        + context
        + user
    )
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(struct.pack(">BBI", 0x01, 0, len(body)) + body)
    header = sock.recv(6, socket.MSG_WAITALL)
    assert header[0] == 0x02, f"association not accepted: PDU type {header[0]:#x}"
    (length,) = struct.unpack(">I", header[2:])
    sock.recv(length, socket.MSG_WAITALL)
    return sock


def test_peers_that_vanish_mid_send_leave_the_box_serving(box: BoxServer, tmp_path: Path) -> None:
    before = scratchdirs(box)
    # 1. A raw peer: C-STORE command, part of the data set, then the connection just closes
    #    in the middle of a P-DATA-TF PDU.
    ds = make_dataset(study_uid=generate_uid(), series_uid=generate_uid(), rows=128, cols=128)
    sock = raw_associate(box.dicom_port, "Recv", "RAWPEER", MRImageStorage, ExplicitVRLittleEndian)
    req = C_STORE()
    req.MessageID, req.Priority = 1, 0
    req.AffectedSOPClassUID = MRImageStorage
    req.AffectedSOPInstanceUID = ds.SOPInstanceUID
    whole = dataset_bytes(ds)
    req.DataSet = io.BytesIO(whole[len(whole) - len(dataset_part_of(whole)) :])
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    pdus = []
    for p_data in msg.encode_msg(1, 16384):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        pdus.append(pdu.encode())
    assert len(pdus) >= 3  # the command, then the data set in several PDUs
    sock.sendall(pdus[0] + pdus[1] + pdus[2][: len(pdus[2]) // 2])
    sock.close()

    # 2. A pynetdicom peer that aborts after two acknowledged files of three.
    study = write_study(tmp_path / "aborted", n_images=3, rows=16, cols=16)
    assoc = associate(box.dicom_port, "Recv", "ABORTER", contexts_for(study.paths))
    acked = [p for p in study.paths[:2] if store(assoc, p) == 0x0000]
    assoc.abort()
    assert len(acked) == 2

    assert echoscu(box, "Recv").returncode == 0
    (job,) = new_jobs(box, before, 1)
    assert job["caller_aet"] == "ABORTER"
    assert sorted(input_files(box, job["scratchdir"])) == sorted(p.name for p in acked)
    assert not api_jobs(box, caller_aet="RAWPEER")
    # The half-received data set of the raw peer was not kept anywhere.
    wait_for(
        "the raw peer's partial data set to be cleaned up",
        lambda: not any((box.home / "scratch" / ".partial").iterdir()),
        timeout=30,
    )
    assert echo(box.dicom_port, "Recv") == 0x0000


def dataset_part_of(part10: bytes) -> bytes:
    (meta_length,) = struct.unpack_from("<L", part10, 140)
    return part10[144 + meta_length :]


def test_caller_ae_titles_with_shell_characters_are_plain_data(
    box: BoxServer, tmp_path: Path
) -> None:
    callers = ["a;rm -rf", "$(touch PWNED)", "`touch PWN`|x>y"]
    before = scratchdirs(box)
    study = write_study(tmp_path / "s", n_images=1, rows=16, cols=16)
    for calling in callers:
        assert send_files(box.dicom_port, "Args", study.paths, calling=calling).ok
    jobs = new_jobs(box, before, len(callers))
    listing = {j["scratchdir"]: j for j in box.jobs()}
    assert sorted(j["caller_aet"] for j in jobs) == sorted(callers)
    for job in jobs:
        calling = job["caller_aet"]
        assert job["state"] == "done"
        assert listing[job["scratchdir"]]["AETitleCaller"] == calling
        folder = box.home / "scratch" / job["scratchdir"]
        assert json.loads((folder / "info.json").read_text())["AETitleCaller"] == calling
        assert (folder / "OUTPUT" / "caller.txt").read_text() == calling + "\n"
        assert api_jobs(box, caller_aet=calling) == [job]
        for where in (folder, folder / "OUTPUT", box.home, Path.cwd(), tmp_path):
            assert not (where / "PWNED").exists() and not (where / "PWN").exists()


def test_called_ae_titles_that_are_no_bucket_are_rejected(box: BoxServer) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="PROBE")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = 30
    for called in ["../bucketRecv", "bucketRecv", "Recv/..", "Re*", "recv", "/", ".."]:
        assoc = ae.associate("127.0.0.1", box.dicom_port, ae_title=called)
        assert assoc.is_rejected, called
    assert echo(box.dicom_port, "Recv") == 0x0000
