"""Run again on stored data: studies sent by dcmtk's storescu to a real ``magickbox serve``
become new jobs of another bucket from the archive, through the API (one study, a list)
and through ``mb run`` (by UID and by a regex over the archive)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from magickbox.testing.dicomgen import StudyInfo, write_study
from tests.conftest import BoxServer, copy_bucket
from tests.e2e.peers import api_job, api_jobs, dataset_part, input_files, wait_jobs, wait_state
from tests.e2e.test_mb import Mb

pytestmark = pytest.mark.e2e

# Writes its arguments, one per line, so the test sees how they were split.
AGAIN_SH = """#!/bin/sh
shift 2
for a in "$@"; do echo "$a"; done > "$MB_JOB_DIR/OUTPUT/args.txt"
"""


class Site:
    def __init__(self, box: BoxServer, studies: list[StudyInfo]) -> None:
        self.box, self.studies = box, studies

    def post(self, path: str, body: object) -> httpx.Response:
        return self.box.post(path, json=body, timeout=30)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("again")
    home = root / "home"
    copy_bucket(home, "Recv", "#!/bin/sh\ntrue\n")
    copy_bucket(home, "Again", AGAIN_SH, concurrency=2)
    box = BoxServer(home, quiet=0.3).start()
    try:
        studies = [
            write_study(
                root / "sent" / f"s{i}", n_images=3, rows=16, cols=16, patient_id=f"PAT-{i}", seed=i
            )
            for i in range(2)
        ]
        sent = box.storescu(root / "sent", "Recv", "SCANNER")  # one send, a job per study
        assert sent.returncode == 0, sent.stderr
        wait_jobs(box, 2, bucket="Recv")
        yield Site(box, studies)
    finally:
        box.stop()


def test_a_study_runs_again_from_the_archive(site: Site) -> None:
    study = site.studies[0]
    res = site.post(f"/api/v1/studies/{study.study_uid}/run",
                    {"bucket": "Again", "arguments": "--level 'two words'"})  # fmt: skip
    assert res.status_code == 201, res.text
    (job,) = res.json()["jobs"]
    assert (job["bucket"], job["study_uid"], job["source"]) == ("Again", study.study_uid, "archive")
    assert job["caller_aet"] == "archive" and job["arguments"] == ["--level", "two words"]
    done = wait_state(site.box, job["scratchdir"], "done", "failed")
    assert done["state"] == "done", done
    args = (site.box.home / "scratch" / job["scratchdir"] / "OUTPUT" / "args.txt").read_text()
    assert args.splitlines() == ["--level", "two words"]
    # The new job's INPUT is the study as it was sent, image for image.
    got = input_files(site.box, job["scratchdir"])
    assert len(got) == study.n_images
    sent = {dataset_part(p) for p in study.paths}
    assert {dataset_part(p) for p in got.values()} == sent
    # The archive is left as it was: no temporary links, the same files.
    archive = site.box.home / "scratch" / "archive" / study.study_uid
    assert sorted(p.name for p in archive.iterdir()) == sorted(got)


def test_many_studies_in_one_call_and_all_or_nothing(site: Site) -> None:
    uids = [s.study_uid for s in site.studies]
    before = len(api_jobs(site.box, bucket="Again"))
    body = {"bucket": "Again", "studies": uids, "arguments": ["a b", "c"], "sender": "rerun"}
    res = site.post("/api/v1/studies/run", body)
    assert res.status_code == 201, res.text
    jobs = res.json()["jobs"]
    assert [j["study_uid"] for j in jobs] == uids
    assert all(j["caller_aet"] == "rerun" and j["arguments"] == ["a b", "c"] for j in jobs)
    for j in jobs:
        assert wait_state(site.box, j["scratchdir"], "done", "failed")["state"] == "done"
    missing = site.post("/api/v1/studies/run", {"bucket": "Again", "studies": [uids[0], "1.2.9"]})
    assert missing.status_code == 404 and "1.2.9" in missing.json()["detail"]
    assert len(api_jobs(site.box, bucket="Again")) == before + 2  # nothing made by the 404
    for body, status in (
        ({"bucket": "NoSuch", "studies": uids}, 404),
        ({"bucket": "Again", "studies": ["../etc"]}, 400),
        ({"bucket": "Again", "studies": []}, 422),
        ({"bucket": "Again", "studies": uids, "arguments": "'open"}, 400),
    ):
        res = site.post("/api/v1/studies/run", body)
        assert res.status_code == status, (body, res.text)
    assert site.post("/api/v1/studies/1.2.9/run", {"bucket": "Again"}).status_code == 404


@pytest.fixture
def mb(tmp_path: Path, site: Site) -> Mb:
    work = tmp_path / "work"
    work.mkdir()
    runner = Mb(tmp_path / "mbconfig", work)
    runner("activeMachines", "add", "127.0.0.1", str(site.box.web_port),
           "--token-file", token_file(site.box, tmp_path))  # fmt: skip
    runner("setSender", "me")
    return runner


def test_mb_run_by_uid_and_by_match(site: Site, mb: Mb) -> None:
    first, second = site.studies
    plan = mb.json("run", "Again", "--study", first.study_uid, "--dry-run")
    assert plan == [{"StudyInstanceUID": first.study_uid, "aetitle": "Again",
                     "Machine": "127.0.0.1", "Port": str(site.box.web_port)}]  # fmt: skip
    (ran,) = mb.json("run", "Again", "--study", first.study_uid, "--arguments", "x y")
    assert ran["pid"] == first.study_uid and ran["Port"] == str(site.box.web_port)
    job = api_job(site.box, ran["scratchdir"])
    assert job["caller_aet"] == "me" and job["arguments"] == ["x", "y"]
    (matched,) = mb.json("run", "Again", "--match", "^PAT-1$")
    assert matched["pid"] == second.study_uid
    missing = mb("run", "Again", "--study", "1.2.9", ok=False)
    assert missing.returncode == 1 and "1.2.9 is in no archive" in missing.stderr
    assert json.loads(missing.stdout) == []


def token_file(box: BoxServer, folder: Path) -> str:
    """The harness's admin token in a file only its owner may read, for mb --token-file."""
    path = folder / "box.token"
    path.write_text(box.token + "\n")
    path.chmod(0o600)
    return str(path)
