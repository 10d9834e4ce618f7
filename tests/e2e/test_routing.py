"""Routing end to end: a real box sends results to real DICOM nodes (dcmtk storescp,
Orthanc, a picky pynetdicom SCP) by the rules of routing.json, retries, and resumes
after kill -9.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer, free_port
from tests.e2e.destinations import Orthanc, PickySCP, StoreSCP
from tests.e2e.peers import api_jobs, install_buckets, send_files, wait_for, wait_jobs

pytestmark = pytest.mark.e2e

# Each send is one association, each job its own caller or study: a short quiet period
# (the harness's default is 1 s) makes every wait for a job shorter.
QUIET = 0.3

COPY = """#!/bin/sh
cp "$1"/* "$2"/
echo "not DICOM" > "$2/notes.txt"
echo '[{"success": "success", "message": "copied"}]' > "$MB_PROC_JSON"
"""
FAIL = """#!/bin/sh
echo "step 1 ok"
echo "error: the segmentation did not converge"
echo '[{"success": "failed", "message": "no convergence"}]' > "$MB_PROC_JSON"
"""
SINK = """#!/bin/sh
echo '[{"success": "success"}]' > "$MB_PROC_JSON"
"""
FAST = {
    "MAGICKBOX_ROUTING_RETRY_DELAY": "0.3",
    "MAGICKBOX_ROUTING_MAX_DELAY": "1",
    "MAGICKBOX_ROUTING_TIMEOUT": "5",
    "MAGICKBOX_ROUTING_RETRIES": "50",
}


def dest(port: int, aet: str, ip: str = "127.0.0.1", **extra: object) -> dict[str, object]:
    return {"IP": ip, "PORT": str(port), "AETitleSender": "MBROUTE", "AETitleTo": aet, **extra}


def save_table(box: BoxServer, rules: list[dict]) -> None:
    res = post(box, "/code/php/saveRouting.php", data={"text": json.dumps({"routing": rules})})
    assert res.status_code == 200, res.text


def post(box: BoxServer, path: str, **kw: object) -> httpx.Response:
    return box.post(path, **kw)


def put(box: BoxServer, path: str, **kw: object) -> httpx.Response:
    return box.put(path, **kw)


def sends_of(box: BoxServer, scratchdir: str) -> list[dict]:
    res = box.get(f"/api/v1/jobs/{scratchdir}/sends")
    assert res.status_code == 200, res.text
    return res.json()


def tries(box: BoxServer, scratchdir: str) -> int:
    """Tries of a job's one send so far (0 also before its routing has listed the send)."""
    sends = sends_of(box, scratchdir)
    return int(sends[0]["attempts"]) if sends else 0


def wait_sends(box: BoxServer, scratchdir: str, *states: str, timeout: float = 60) -> list[dict]:
    def probe() -> list[dict] | None:
        sends = sends_of(box, scratchdir)
        return sends if sends and all(s["state"] in states for s in sends) else None

    return wait_for(f"sends of {scratchdir} to be {states}", probe, timeout)


def job_of(box: BoxServer, bucket: str) -> dict:
    (job,) = wait_jobs(box, 1, bucket=bucket)
    return job


@pytest.fixture
def peers(tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list = []

    def start(peer):  # type: ignore[no-untyped-def]
        started.append(peer)
        return peer.start()

    yield start
    for peer in started:
        peer.stop()


def test_success_and_failure_routes_error_image_and_me_port(box_factory, tmp_path, peers):
    results = peers(StoreSCP(tmp_path / "results", "RESULTS"))
    errors = peers(StoreSCP(tmp_path / "errors", "ERRORS"))
    home = tmp_path / "home"
    install_buckets(home, copy=COPY, fail=FAIL, Sink=SINK)
    box = box_factory(quiet=QUIET, home=home, env=FAST)
    save_table(
        box,
        [
            {
                "name": "results",
                "AETitleIn": "^copy$",
                "send": [
                    {"success": dest(results.port, "RESULTS"), "fail": dest(errors.port, "ERRORS")}
                ],
            },
            {
                "name": "errors",
                "AETitleIn": "FAIL",
                "status": 1,
                "send": [{"fail": dest(errors.port, "ERRORS", sendErrorAsDcm=1)}],
            },
            {"name": "off", "status": 0, "send": [{".*": dest(errors.port, "ERRORS")}]},
            {
                "name": "home",
                "AETitleIn": "copy",
                "AETitleFrom": "^IP44$",
                "send": [
                    {
                        ".*": {
                            "IP": "$me",
                            "PORT": "$port",
                            "AETitleSender": "ROUTED",
                            "AETitleTo": "Sink",
                        }
                    }
                ],
            },
        ],
    )
    good = write_study(tmp_path / "good", n_images=3, rows=32, cols=32)
    bad = write_study(tmp_path / "bad", n_images=2, rows=32, cols=32, patient_id="P-BAD")
    assert box.storescu(good.paths[0].parent, "copy").returncode == 0
    assert box.storescu(bad.paths[0].parent, "fail").returncode == 0

    copy_job, fail_job = job_of(box, "copy"), job_of(box, "fail")
    copy_sends = wait_sends(box, copy_job["scratchdir"], "done")
    assert sorted(
        (s["destination"]["AETitleTo"], s["files"], s["accepted"]) for s in copy_sends
    ) == [("RESULTS", 3, 3), ("Sink", 3, 3)]
    assert results.sop_uids() == sorted(good.sop_uids)  # notes.txt is not DICOM: not sent

    (fail_send,) = wait_sends(box, fail_job["scratchdir"], "done")
    assert (fail_send["rule_name"], fail_send["success"]) == ("errors", "failed")
    (image,) = errors.files()  # only the log image: OUTPUT was empty, "off" is disabled
    ds = dcmread(image)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (ds.StudyInstanceUID, ds.PatientID) == (bad.study_uid, "P-BAD")
    assert ds.Rows > 100 and ds.pixel_array.max() > 0  # text was drawn

    # $me/$port: the box sent the copy's OUTPUT to itself, as a new job of bucket Sink.
    sink = job_of(box, "Sink")
    assert (sink["caller_aet"], sink["files"]) == ("ROUTED", 3)

    entries = box.get("/code/php/getRoutingLog.php").json()
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    done = [e for e in entries if e["outcome"] == "done"]
    assert {(e["destination"], e["files"]) for e in done} >= {
        (f"RESULTS@127.0.0.1:{results.port}", 3),
        (f"ERRORS@127.0.0.1:{errors.port}", 1),
    }


def test_which_input_sender_and_compressed_to_orthanc(box_factory, tmp_path, peers):
    orthanc = peers(Orthanc(tmp_path / "orthanc"))
    home = tmp_path / "home"
    install_buckets(home, Proc=SINK)
    box = box_factory(quiet=QUIET, home=home, env=FAST)
    save_table(
        box,
        [
            {
                "name": "t1 back",
                "AETitleIn": "proc",
                "RouteDirectory": "INPUT",
                "break": 1,
                "send": [
                    {
                        "succ": {
                            "IP": "$sender",
                            "PORT": orthanc.port,
                            "AETitleSender": "MB",
                            "AETitleTo": "ORTHANC",
                            "which": [{"0008,103e": "^T1$"}],
                        }
                    }
                ],
            },
            {"name": "after break", "send": [{".*": dest(orthanc.port, "ORTHANC")}]},
        ],
    )
    mixed = write_study(tmp_path / "mixed", n_images=4, series=2, rows=32, cols=32)
    rle = write_study(
        tmp_path / "rle",
        n_images=2,
        rows=32,
        cols=32,
        series=1,
        transfer_syntax="1.2.840.10008.1.2.5",
    )
    assert box.storescu(mixed.paths[0].parent, "Proc").returncode == 0
    wait_jobs(box, 1, bucket="Proc")
    sent = send_files(box.dicom_port, "Proc", rle.paths, calling="RLEPEER")  # as they are
    assert len(sent.ok) == 2
    jobs = wait_jobs(box, 2, bucket="Proc")
    for job in jobs:
        wait_sends(box, job["scratchdir"], "done")

    got = {i["SOPInstanceUID"]: i for i in orthanc.instances()}
    t1 = [p for p in mixed.paths if dcmread(p).SeriesDescription == "t1"]
    assert sorted(got) == sorted([str(dcmread(p).SOPInstanceUID) for p in t1] + rle.sop_uids)
    base = f"http://127.0.0.1:{orthanc.http_port}"
    for ident in httpx.get(f"{base}/instances", timeout=10).json():
        syntax = httpx.get(f"{base}/instances/{ident}/metadata/TransferSyntax", timeout=10).text
        uid = httpx.get(f"{base}/instances/{ident}/simplified-tags", timeout=10).json()
        if uid["SOPInstanceUID"] in rle.sop_uids:
            assert syntax == "1.2.840.10008.1.2.5"  # sent as it was, not decompressed


def test_a_destination_down_at_first_gets_every_file_once(box_factory, tmp_path, peers):
    later = StoreSCP(tmp_path / "later", "LATER")
    home = tmp_path / "home"
    install_buckets(home, copy=COPY)
    box = box_factory(quiet=QUIET, home=home, env=FAST)
    save_table(box, [{"send": [{"success": dest(later.port, "LATER")}]}])
    study = write_study(tmp_path / "s", n_images=5, rows=32, cols=32)
    assert box.storescu(study.paths[0].parent, "copy").returncode == 0
    job = job_of(box, "copy")
    wait_for("two failed tries", lambda: tries(box, job["scratchdir"]) >= 2)
    (send,) = sends_of(box, job["scratchdir"])
    assert send["state"] in ("pending", "sending") and send["reason"]
    peers(later)
    (send,) = wait_sends(box, job["scratchdir"], "done")
    assert later.sop_uids() == sorted(study.sop_uids)  # +uf: a second copy would show


def test_refused_files_keep_the_send_failed_until_a_retry_sends_the_rest(
    box_factory, tmp_path, peers
):
    picky = peers(PickySCP(lambda ds: int(ds.InstanceNumber) % 2 == 1))
    home = tmp_path / "home"
    install_buckets(home, copy=COPY)
    box = box_factory(quiet=QUIET, home=home, env={**FAST, "MAGICKBOX_ROUTING_RETRIES": "1"})
    save_table(box, [{"send": [{"success": dest(picky.port, "PICKY")}]}])
    study = write_study(tmp_path / "s", n_images=4, rows=32, cols=32)
    assert box.storescu(study.paths[0].parent, "copy").returncode == 0
    job = job_of(box, "copy")
    (send,) = wait_sends(box, job["scratchdir"], "failed")
    assert (send["attempts"], send["files"], send["accepted"]) == (2, 4, 2)
    assert "2 refused" in send["reason"] and "0xA700" in send["reason"]
    assert len(picky.received) == 2  # the second try sent only the refused files again

    picky.refuse = lambda ds: False
    res = post(box, f"/api/v1/sends/{send['id']}/retry")
    assert res.status_code == 200, res.text
    (send,) = wait_sends(box, job["scratchdir"], "done")
    assert send["accepted"] == 4
    assert sorted(picky.received) == sorted(study.sop_uids)  # each file exactly once
    assert post(box, f"/api/v1/sends/{send['id']}/retry").status_code == 409


def test_sends_pending_at_a_kill_go_on_after_the_restart(box_factory, tmp_path, peers):
    later = StoreSCP(tmp_path / "later", "LATER")
    home = tmp_path / "home"
    install_buckets(home, copy=COPY)
    env = {**FAST, "MAGICKBOX_ROUTING_RETRY_DELAY": "0.5"}
    box = box_factory(quiet=QUIET, home=home, env=env)
    save_table(box, [{"send": [{"success": dest(later.port, "LATER")}]}])
    study = write_study(tmp_path / "s", n_images=3, rows=32, cols=32)
    assert box.storescu(study.paths[0].parent, "copy").returncode == 0
    job = job_of(box, "copy")
    wait_for("a failed try", lambda: tries(box, job["scratchdir"]) >= 1)
    box.kill9()
    peers(later)
    again = box_factory(quiet=QUIET, home=home, env=env,
                        web_port=box.web_port, dicom_port=box.dicom_port)  # fmt: skip
    wait_sends(again, job["scratchdir"], "done")
    assert later.sop_uids() == sorted(study.sop_uids)
    assert len(api_jobs(again)) == 1


def test_saving_a_broken_table_is_refused_and_echo_tells_reachability(box_factory, tmp_path, peers):
    scp = peers(StoreSCP(tmp_path / "scp", "ECHOME"))
    box = box_factory(quiet=QUIET)
    good = {"routing": [{"name": "a", "send": [{"success": dest(104, "PACS")}]}]}
    assert post(box, "/code/php/saveRouting.php", data={"text": json.dumps(good)}).json()["ok"]
    for text, problem in [
        ("{oops", "not valid JSON"),
        ('{"routing": [{"AETitleIn": "[", "send": []}]}', "routing[0].AETitleIn: bad regular"),
        ('{"routing": [{"send": [{"s": {"IP": "x", "PORT": 4}}]}]}', "missing key AETitleTo"),
    ]:
        res = post(box, "/code/php/saveRouting.php", data={"text": text})
        assert res.status_code == 400 and problem in res.json()["detail"], res.text
        res2 = put(box, "/api/v1/routing", content=text)
        assert res2.status_code == 400 and problem in res2.json()["detail"], res2.text
    assert box.get("/api/v1/routing").json() == good  # the stored table is untouched
    assert json.loads((box.home / "routing.json").read_text()) == good

    echo = {"IP": "127.0.0.1", "PORT": scp.port, "AETitleSender": "MB", "AETitleTo": "ECHOME"}
    res = post(box, "/api/v1/destinations/echo", json=echo)  # not in the table: no probing
    assert res.status_code == 403 and "any_destination" in res.json()["detail"], res.text
    echo["any_destination"] = True  # an admin asking explicitly
    res = post(box, "/api/v1/destinations/echo", json=echo)
    assert res.status_code == 200 and res.json()["ok"] is True, res.text
    res = post(box, "/api/v1/destinations/echo", json={**echo, "PORT": free_port()})
    assert res.status_code == 200 and res.json()["ok"] is False
    assert "not reachable (Connection refused)" in res.json()["message"]


def test_a_job_failed_by_a_restart_takes_the_failure_route(box_factory, tmp_path, peers):
    errors = peers(StoreSCP(tmp_path / "errors", "ERRORS"))
    home = tmp_path / "home"
    install_buckets(home, slow='#!/bin/sh\necho "working on it"\nsleep 60\n')
    env = {**FAST, "MAGICKBOX_RERUN_INTERRUPTED": "false"}
    box = box_factory(quiet=QUIET, home=home, env=env)
    save_table(
        box,
        [
            {
                "send": [
                    {
                        "success": dest(errors.port, "ERRORS"),
                        "couldNotRead": dest(errors.port, "ERRORS", sendErrorAsDcm=1),
                    }
                ]
            }
        ],
    )
    study = write_study(tmp_path / "s", n_images=2, rows=32, cols=32)
    assert box.storescu(study.paths[0].parent, "slow").returncode == 0
    wait_for("the job to run", lambda: [j for j in api_jobs(box) if j["state"] == "running"])
    box.kill9()
    again = box_factory(quiet=QUIET, home=home, env=env,
                        web_port=box.web_port, dicom_port=box.dicom_port)  # fmt: skip
    (job,) = wait_jobs(again, 1)
    assert job["state"] == "failed" and "interrupted" in job["reason"]
    (send,) = wait_sends(again, job["scratchdir"], "done")
    assert send["success"] == "couldNotReadProcJSON"
    (image,) = errors.files()  # OUTPUT was empty: only the log image
    assert dcmread(image).StudyInstanceUID == study.study_uid
