"""The /api/v1 endpoints the web page uses, over a live box that received real sends:
search and A–Z filters, day ranges, a job's files, per-day counts, disk, the
archive, sends still being received and bucket means. The tests that need no DICOM (setup,
the page's own files) run in process: tests/integration/test_page_api.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from magickbox.testing.dicomgen import StudyInfo, write_study
from tests.conftest import BoxServer
from tests.e2e.peers import (
    QUICK,
    api_jobs,
    associate,
    contexts_for,
    install_buckets,
    send_files,
    store,
    wait_for,
    wait_jobs,
)

pytestmark = pytest.mark.e2e

# Each send is one association, each job its own caller or study: a short quiet period
# groups them as a long one would, and every wait for a job is shorter.
QUIET = 0.3

PLAN = [("x1", "XRAY", "PAT-1"), ("x2", "xray2", "PAT-2"), ("c1", "CT_100%", "PAT-3")]


@dataclass
class Site:
    box: BoxServer
    folder: Path
    studies: dict[str, StudyInfo]
    jobs: dict[str, dict]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("pageapi")
    install_buckets(folder / "home", ProcBucket=QUICK)
    box = BoxServer(folder / "home", quiet=QUIET).start()
    try:
        studies = {}
        for name, calling, patient in PLAN:
            studies[name] = write_study(folder / name, n_images=2, rows=16, cols=16,
                                        patient_id=patient)  # fmt: skip
            assert len(send_files(box.dicom_port, "ProcBucket", studies[name].paths,
                                  calling=calling).ok) == 2  # fmt: skip
        by_uid = {j["study_uid"]: j for j in wait_jobs(box, len(PLAN), timeout=90)}
        jobs = {name: by_uid[s.study_uid] for name, s in studies.items()}
        yield Site(box, folder, studies, jobs)
    finally:
        box.stop()


def names(jobs: list[dict]) -> set[str]:
    return {j["scratchdir"] for j in jobs}


def test_q_searches_every_text_field_case_insensitively(site: Site) -> None:
    x1, x2, c1 = (site.jobs[n]["scratchdir"] for n in ("x1", "x2", "c1"))
    assert names(api_jobs(site.box, q="xray")) == {x1, x2}
    assert names(api_jobs(site.box, q=site.studies["c1"].study_uid[-10:])) == {c1}
    assert names(api_jobs(site.box, q=x2[4:])) == {x2}
    assert names(api_jobs(site.box, q="PROCBUCK")) == {x1, x2, c1}
    assert names(api_jobs(site.box, q="127.0.0")) == {x1, x2, c1}
    assert names(api_jobs(site.box, q="done")) == {x1, x2, c1}
    # LIKE's wildcards are plain characters here.
    assert names(api_jobs(site.box, q="100%")) == {c1}
    assert api_jobs(site.box, q="%") == api_jobs(site.box, q="100%")
    assert api_jobs(site.box, q="nothing-like-this") == []


def test_q_combines_with_other_filters_and_paging(site: Site) -> None:
    res = site.box.get("/api/v1/jobs", params={"q": "xray", "limit": 1}).json()
    assert res["total"] == 2 and len(res["jobs"]) == 1
    assert (
        api_jobs(site.box, q="xray", caller_aet="XRAY")[0]["scratchdir"]
        == (site.jobs["x1"]["scratchdir"])
    )


def test_initial_filters_by_the_senders_first_letter(site: Site) -> None:
    x = names(api_jobs(site.box, initial="x"))
    assert x == {site.jobs["x1"]["scratchdir"], site.jobs["x2"]["scratchdir"]}
    assert names(api_jobs(site.box, initial="C")) == {site.jobs["c1"]["scratchdir"]}
    assert api_jobs(site.box, initial="Q") == []
    assert site.box.get("/api/v1/jobs", params={"initial": "XR"}).status_code == 422


def test_since_and_until_bound_the_received_time(site: Site) -> None:
    received = {name: _epoch(job["received_at"]) for name, job in site.jobs.items()}
    first = min(received.values())
    everything = names(api_jobs(site.box))
    assert names(api_jobs(site.box, since=first, until=time.time() + 60)) == everything
    assert api_jobs(site.box, until=first) == []  # until is exclusive
    assert api_jobs(site.box, since=time.time() + 3600) == []


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_job_view_has_the_log_size(site: Site) -> None:
    job = site.jobs["x1"]
    log = site.box.home / "scratch" / job["scratchdir"] / "processing.log"
    assert site.box.get(f"/api/v1/jobs/{job['scratchdir']}").json()["log_size"] == (
        log.stat().st_size
    )
    assert api_jobs(site.box, q=job["scratchdir"])[0]["log_size"] == log.stat().st_size


def test_files_lists_output_and_input_but_no_links(site: Site, tmp_path: Path) -> None:
    name = site.jobs["c1"]["scratchdir"]
    out = site.box.home / "scratch" / name / "OUTPUT"
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "hidden.txt").write_text("outside the job")
    os.symlink(secret, out / "linked-dir")
    os.symlink(secret / "hidden.txt", out / "linked-file")
    (out / "sub").mkdir()
    (out / "sub" / "result.txt").write_text("12345")
    listing = site.box.get(f"/api/v1/jobs/{name}/files").json()
    assert listing["part"] == "OUTPUT"
    assert {f["name"]: f["size"] for f in listing["files"]} == {
        "files.txt": (out / "files.txt").stat().st_size,
        "sub/result.txt": 5,
    }
    inputs = site.box.get(f"/api/v1/jobs/{name}/files", params={"part": "INPUT"}).json()
    assert sorted(f["name"] for f in inputs["files"]) == sorted(
        p.name for p in site.studies["c1"].paths
    )
    assert inputs["total"] == 2


@pytest.mark.parametrize("part", ["../INPUT", "output", "OUTPUT/..", ""])
def test_files_refuses_other_parts(site: Site, part: str) -> None:
    name = site.jobs["x1"]["scratchdir"]
    assert site.box.get(f"/api/v1/jobs/{name}/files", params={"part": part}).status_code == 422


def test_jobs_per_day(site: Site) -> None:
    res = site.box.get("/api/v1/stats/days").json()
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert res["days"] == 365
    assert res["counts"] == {today: len(site.jobs)}
    # Far ahead of UTC the same jobs may fall on another date, never in another count.
    shifted = site.box.get("/api/v1/stats/days", params={"utc_offset_minutes": 840}).json()
    assert sum(shifted["counts"].values()) == len(site.jobs)
    assert site.box.get("/api/v1/stats/days", params={"days": 0}).status_code == 422


def test_disk_use(site: Site) -> None:
    quick = site.box.get("/api/v1/disk").json()
    assert quick["total"] >= quick["free"] > 0 and quick["scratch_bytes"] is None
    # The folder's size is summed in the background: asked for, it comes a moment later.
    full = wait_for(
        "the scratch size",
        lambda: (
            (d := site.box.get("/api/v1/disk", params={"scratch_size": "true"}).json())
            and d["scratch_bytes"] is not None
            and d
        ),
    )
    images = sum(p.stat().st_size for s in site.studies.values() for p in s.paths)
    # INPUT and archive share their files by hard links: counted once.
    assert images <= full["scratch_bytes"] < 2 * images + 1_000_000


def test_archive_lists_studies_with_their_tags(site: Site) -> None:
    res = site.box.get("/api/v1/archive").json()
    assert res["total"] == len(site.studies)
    by_uid = {s["StudyInstanceUID"]: s for s in res["studies"]}
    c1 = by_uid[site.studies["c1"].study_uid]
    assert c1["PatientID"] == "PAT-3" and c1["files"] == 2
    assert c1["PatientName"] == "Test^Patient" and c1["StudyDescription"] == "MagickBox test"
    assert set(c1) >= {"AccessionNumber", "StudyDate"}
    page = site.box.get("/api/v1/archive", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == len(site.studies) and len(page["studies"]) == 1
    assert page["studies"][0] == res["studies"][1]


def test_receiving_shows_a_send_until_it_becomes_a_job(site: Site) -> None:
    study = write_study(site.folder / "open", n_images=1, rows=16, cols=16)
    assoc = associate(site.box.dicom_port, "ProcBucket", "HOLDER", contexts_for(study.paths))
    try:
        assert store(assoc, study.paths[0]) == 0
        # A receiver worker tells the box of kept files in batches, at most 0.1 s late.
        sends = wait_for(
            "the file to be counted",
            lambda: (got := site.box.get("/api/v1/receiving").json()) and got[0]["files"] and got,
        )
        assert len(sends) == 1
        send = sends[0]
        assert send["caller_aet"] == "HOLDER" and send["called_aet"] == "ProcBucket"
        assert send["study_uid"] == study.study_uid
        assert send["files"] == 1 and send["open_associations"] == 1
    finally:
        assoc.release()
    wait_for("the send to become a job", lambda: site.box.get("/api/v1/receiving").json() == [])
    # ... and its job ended: the site is shared, and a job still running would change the
    # bucket figures between two looks of the next test
    wait_jobs(site.box, 1, study_uid=study.study_uid)


def test_buckets_carry_their_mean_processing_time(site: Site) -> None:
    (bucket,) = site.box.get("/api/v1/buckets").json()
    assert bucket["aetitle"] == "ProcBucket"
    jobs = api_jobs(site.box, bucket="ProcBucket", state="done")
    mean = sum(j["processing_seconds"] for j in jobs) / len(jobs)
    assert bucket["mean_processing_seconds"] == pytest.approx(mean, abs=0.01)
