"""The HTTP API end to end: /api/v1 and the original endpoints over jobs made by real sends,
and the queue's promises (first in first out per bucket, buckets side by side, timeouts).
The tests that need no DICOM run in process: tests/integration/test_api.py.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from magickbox.jobs import scratch
from magickbox.testing.dicomgen import StudyInfo, write_study
from tests.conftest import BoxServer
from tests.e2e.peers import (
    QUICK,
    api_job,
    api_jobs,
    install_buckets,
    send_files,
    wait_for,
    wait_jobs,
    wait_state,
)

pytestmark = pytest.mark.e2e

# Each send is one association, each job its own caller or study: a short quiet period
# groups them as a long one would, and every wait for a job is shorter.
QUIET = 0.3

FAIL = """#!/bin/sh
echo "about to fail"
exit 3
"""

SLEEPY = """#!/bin/sh
echo "sleeping"
sleep 60
echo "woke up" > "$2/woke.txt"
"""

BUCKETS: dict[str, str | tuple[str, dict]] = {
    "Alpha": QUICK,
    "Beta": QUICK,
    "Fail": FAIL,
    "Sleepy": (SLEEPY, {"timeout": 2}),
    "Hidden": (QUICK, {"enabled": 0}),
}


def send(box: BoxServer, tmp_path: Path, name: str, bucket: str, calling: str) -> StudyInfo:
    study = write_study(tmp_path / name, n_images=2, rows=16, cols=16)
    assert len(send_files(box.dicom_port, bucket, study.paths, calling=calling).ok) == 2
    return study


class Populated:
    """One box with a job of each kind, shared by the tests that only read."""

    def __init__(self, box: BoxServer, folder: Path) -> None:
        self.box = box
        plan = [("a1", "Alpha", "XRAY"), ("a2", "Alpha", "YRAY"), ("b1", "Beta", "XRAY"),
                ("f1", "Fail", "YRAY"), ("s1", "Sleepy", "XRAY")]  # fmt: skip
        self.studies = {name: send(box, folder, name, b, c) for name, b, c in plan}
        jobs = wait_jobs(box, len(plan), timeout=90)
        by_uid = {j["study_uid"]: j for j in jobs}
        self.jobs = {name: by_uid[s.study_uid] for name, s in self.studies.items()}


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Populated]:
    folder = tmp_path_factory.mktemp("api")
    install_buckets(folder / "home", **BUCKETS)
    box = BoxServer(folder / "home", quiet=QUIET).start()
    try:
        yield Populated(box, folder)
    finally:
        box.stop()


def scratchdirs(jobs: list[dict]) -> list[str]:
    return [j["scratchdir"] for j in jobs]


def test_list_filters_and_paging(populated: Populated) -> None:
    box, jobs = populated.box, populated.jobs
    res = box.get("/api/v1/jobs")
    assert res.status_code == 200
    body = res.json()
    assert (body["total"], body["limit"], body["offset"]) == (5, 100, 0)
    # Newest first, the same order as the original's listing.
    assert scratchdirs(body["jobs"]) == [j["scratchdir"] for j in box.jobs()]
    assert scratchdirs(body["jobs"]) == [
        jobs[n]["scratchdir"] for n in ("s1", "f1", "b1", "a2", "a1")
    ]

    def names(**params: object) -> set[str]:
        found = set(scratchdirs(api_jobs(box, **params)))
        return {n for n, j in jobs.items() if j["scratchdir"] in found}

    assert names(bucket="Alpha") == {"a1", "a2"}
    assert names(caller_aet="XRAY") == {"a1", "b1", "s1"}
    assert names(state="failed") == {"f1", "s1"}
    assert names(state="done") == {"a1", "a2", "b1"}
    assert names(bucket="Alpha", caller_aet="YRAY") == {"a2"}
    assert names(study_uid=populated.studies["b1"].study_uid) == {"b1"}
    assert names(bucket="NoSuchBucket") == set()
    assert names(state="queued") == set()

    pages = []
    for offset in (0, 2, 4, 6):
        page = box.get("/api/v1/jobs", params={"limit": 2, "offset": offset}).json()
        assert (page["total"], page["limit"], page["offset"]) == (5, 2, offset)
        pages.append(scratchdirs(page["jobs"]))
    assert [len(p) for p in pages] == [2, 2, 1, 0]
    assert [sd for page in pages for sd in page] == scratchdirs(body["jobs"])
    filtered = box.get("/api/v1/jobs", params={"caller_aet": "XRAY", "limit": 1}).json()
    assert filtered["total"] == 3 and len(filtered["jobs"]) == 1

    for bad in ({"state": "bogus"}, {"limit": 0}, {"offset": -1}, {"limit": "many"}):
        res = box.get("/api/v1/jobs", params=bad)
        assert res.status_code == 422, bad
        assert res.json()["detail"]


def test_one_job_and_not_found(populated: Populated) -> None:
    box = populated.box
    job = populated.jobs["a1"]
    got = api_job(box, job["scratchdir"])
    verdict = got.pop("verdict")  # one job also carries its proc.json; lists do not
    parts = got.pop("parts")  # ... and the other jobs of its study and bucket: none here
    assert got == job
    assert parts == []
    assert verdict == {"success": "success", "message": "listed"}
    assert (got["state"], got["bucket"], got["caller_aet"], got["files"]) == (
        "done", "Alpha", "XRAY", 2)  # fmt: skip
    assert got["caller_ip"] == "127.0.0.1" and got["exit_code"] == 0 and got["attempts"] == 1
    assert got["study_uid"] == populated.studies["a1"].study_uid
    assert got["success"] == "success"
    assert got["received_at"] <= got["started_at"] <= got["finished_at"]
    for key, link in got["links"].items():
        assert box.get(link).status_code == 200, key

    res = box.get("/api/v1/jobs/tmp.zzzzzzzz")
    assert res.status_code == 404 and "tmp.zzzzzzzz" in res.json()["detail"]
    res = box.get("/api/v1/jobs/not-a-job")
    assert res.status_code == 400 and res.json()["detail"]


def test_a_failing_bucket_is_a_failed_job_with_its_exit_code(populated: Populated) -> None:
    box = populated.box
    job = api_job(box, populated.jobs["f1"]["scratchdir"])
    assert (job["state"], job["exit_code"], job["success"]) == ("failed", 3, None)
    assert "3" in job["reason"]
    assert not (box.home / "scratch" / job["scratchdir"] / "proc.json").exists()
    (listed,) = [j for j in box.jobs() if j["scratchdir"] == job["scratchdir"]]
    assert listed["processingTime"] != "0" and int(listed["processingTime"]) >= 1
    assert listed["status"] == "failed"
    assert "about to fail" in box.get(f"/scratch/{job['scratchdir']}/processing.log").text


def test_a_bucket_over_its_timeout_is_stopped_and_failed(populated: Populated) -> None:
    box = populated.box
    job = api_job(box, populated.jobs["s1"]["scratchdir"])
    assert job["state"] == "failed"
    assert "timed out" in job["reason"], job
    assert not (box.home / "scratch" / job["scratchdir"] / "OUTPUT" / "woke.txt").exists()
    (listed,) = [j for j in box.jobs() if j["scratchdir"] == job["scratchdir"]]
    assert listed["processingTime"] != "0"


def test_log_with_offset_and_the_original_log_path(populated: Populated) -> None:
    box = populated.box
    sd = populated.jobs["a1"]["scratchdir"]
    res = box.get(f"/api/v1/jobs/{sd}/log")
    assert res.status_code == 200
    full = res.content
    assert b"listed 2 files" in full
    assert int(res.headers["X-Log-Size"]) == len(full)
    res = box.get(f"/api/v1/jobs/{sd}/log", params={"offset": 5})
    assert res.content == full[5:] and int(res.headers["X-Log-Size"]) == len(full)
    res = box.get(f"/api/v1/jobs/{sd}/log", params={"offset": len(full)})
    assert res.content == b"" and int(res.headers["X-Log-Size"]) == len(full)
    legacy = box.get(f"/scratch/{sd}/processing.log")
    assert legacy.status_code == 200 and legacy.content == full
    assert legacy.headers["content-type"].startswith("text/plain")
    (listed,) = [j for j in box.jobs() if j["scratchdir"] == sd]
    assert listed["processingLogSize"] == len(full)


def zip_names(res: httpx.Response) -> tuple[list[str], zipfile.ZipFile]:
    assert res.status_code == 200, res.text
    assert res.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(res.content))
    assert zf.testzip() is None
    return sorted(zf.namelist()), zf


def test_output_and_input_zips(populated: Populated) -> None:
    box = populated.box
    sd = populated.jobs["b1"]["scratchdir"]
    study = populated.studies["b1"]
    for res in (box.get(f"/api/v1/jobs/{sd}/output.zip"),
                box.get("/code/php/getOutputZip.php", params={"folder": sd})):  # fmt: skip
        names, zf = zip_names(res)
        assert names == [f"{sd}/OUTPUT/files.txt"]
        assert sorted(zf.read(names[0]).decode().split()) == sorted(p.name for p in study.paths)
    assert f"filename={sd}.zip" in res.headers["content-disposition"]
    legacy_input = {"folder": sd, "type": "input"}
    for res in (box.get(f"/api/v1/jobs/{sd}/input.zip"),
                box.get("/code/php/getOutputZip.php", params=legacy_input)):  # fmt: skip
        names, zf = zip_names(res)
        assert names == sorted(f"{sd}/INPUT/{p.name}" for p in study.paths)
        for path in study.paths:
            assert zf.read(f"{sd}/INPUT/{path.name}")[128:132] == b"DICM"


def test_delete_and_retry(box_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Alpha=QUICK)
    box: BoxServer = box_factory(home=home, quiet=QUIET)
    kept = send(box, tmp_path, "kept", "Alpha", "KEEP")
    gone = send(box, tmp_path, "gone", "Alpha", "GONE")
    jobs = {j["caller_aet"]: j for j in wait_jobs(box, 2)}

    sd = jobs["GONE"]["scratchdir"]
    output_and_log = scratch.freed_by(box.home / "scratch" / sd)  # INPUT stays in the archive
    res = box.delete(f"/api/v1/jobs/{sd}")
    assert res.status_code == 200 and res.json() == {"deleted": sd, "freed_bytes": output_and_log}
    assert output_and_log > 0
    assert box.get(f"/api/v1/jobs/{sd}").status_code == 404
    assert box.delete(f"/api/v1/jobs/{sd}").status_code == 404
    assert not (box.home / "scratch" / sd).exists()
    assert scratchdirs(api_jobs(box)) == [jobs["KEEP"]["scratchdir"]]
    assert gone.study_uid not in {j["pid"] for j in box.jobs()}

    sd = jobs["KEEP"]["scratchdir"]
    output = box.home / "scratch" / sd / "OUTPUT"
    (output / "stale.txt").write_text("from the first run")
    res = box.post(f"/api/v1/jobs/{sd}/retry")
    assert res.status_code == 200, res.text
    assert res.json()["state"] in ("queued", "running", "done")
    job = wait_state(box, sd, "done", "failed")
    assert job["state"] == "done"
    runs = (box.home / "memory" / "Alpha" / "runs.txt").read_text().split("\n")
    assert runs.count(f"run {sd}") == 2  # the bucket really ran again
    assert not (output / "stale.txt").exists() and (output / "files.txt").is_file()
    assert sorted((output / "files.txt").read_text().split()) == sorted(p.name for p in kept.paths)
    assert box.post("/api/v1/jobs/tmp.zzzzzzzz/retry").status_code == 404


# Jobs of one bucket: one at a time, in the order they came. Held at the start while
# $MB_MEMORY/hold exists; "busy" catches two runs at once.
FIFO = """#!/bin/sh
[ -e "$MB_MEMORY/busy" ] && echo "overlap $MB_SCRATCHDIR" >> "$MB_MEMORY/stamps"
touch "$MB_MEMORY/busy"
echo "start $MB_SCRATCHDIR" >> "$MB_MEMORY/stamps"
while [ -e "$MB_MEMORY/hold" ]; do sleep 0.1; done
sleep 0.3
echo "end $MB_SCRATCHDIR" >> "$MB_MEMORY/stamps"
rm -f "$MB_MEMORY/busy"
"""

# Two buckets that can only both succeed if they run at the same time: each leaves a mark
# and waits (a minute at most) for the other's.
RENDEZVOUS = """#!/bin/sh
touch "{meet}/$MB_AETITLE_CALLED"
i=0
while [ ! -e "{meet}/{other}" ]; do
  i=$((i + 1)); [ $i -gt 600 ] && {{ echo "{other} never came"; exit 1; }}
  sleep 0.1
done
echo "met {other}"
"""


def test_queue_is_fifo_per_bucket_and_parallel_across_buckets(box_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    meet = tmp_path / "meet"
    meet.mkdir()
    install_buckets(
        home,
        Fifo=FIFO,
        Left=RENDEZVOUS.format(meet=meet, other="Right"),
        Right=RENDEZVOUS.format(meet=meet, other="Left"),
    )
    memory = home / "memory" / "Fifo"
    memory.mkdir(parents=True)
    (memory / "hold").touch()
    box: BoxServer = box_factory(home=home, quiet=QUIET)

    order = [send(box, tmp_path, "first", "Fifo", "ORDER")]
    first = wait_for("the first job to run", lambda: api_jobs(box, bucket="Fifo", state="running"))
    for i in range(2, 5):  # each its own send, one after the other
        order.append(send(box, tmp_path, f"s{i}", "Fifo", "ORDER"))
        wait_for(f"job {i} to be queued", lambda i=i: len(api_jobs(box, state="queued")) == i - 1)
    assert api_jobs(box, bucket="Fifo", state="running") == first

    status = {row[0]: row for row in box.get("/code/php/getStatus.php").json()}
    assert status["Fifo"] == ["Fifo", 3, 1, 1]
    assert status["Left"] == ["Left", 0, 0, 1]
    queue = {row["bucket"]: row for row in box.get("/api/v1/queue").json()}
    assert queue["Fifo"] == {"bucket": "Fifo", "queued": 3, "running": 1, "workers": 1}

    # While Fifo is held, two other buckets run, and at the same time as each other.
    send(box, tmp_path, "left", "Left", "PAR")
    send(box, tmp_path, "right", "Right", "PAR")
    for job in wait_jobs(box, 2, caller_aet="PAR"):
        assert job["state"] == "done", box.get(f"/api/v1/jobs/{job['scratchdir']}/log").text
    assert len(api_jobs(box, bucket="Fifo", state="queued")) == 3

    (memory / "hold").unlink()
    done = wait_jobs(box, 4, bucket="Fifo")
    assert all(j["state"] == "done" for j in done)
    by_uid = {j["study_uid"]: j["scratchdir"] for j in done}
    expected = []
    for study in order:
        expected += [f"start {by_uid[study.study_uid]}", f"end {by_uid[study.study_uid]}"]
    assert (memory / "stamps").read_text().splitlines() == expected
