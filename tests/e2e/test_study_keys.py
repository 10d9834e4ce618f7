"""StudyInstanceUIDs that are not proper UIDs, end to end, from real peers (pynetdicom, dcmtk).

Hashes (64 hex characters) are seen in the wild as StudyInstanceUIDs, and storescp and
Orthanc store them. The box stores them too: the job keeps the real value, the archive
folder is the safe key of :func:`magickbox.names.study_key`. Only a value the box cannot
keep as it is (control characters) is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from magickbox.names import study_key
from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer
from tests.e2e.peers import QUICK, api_jobs, input_files, install_buckets, send_files, wait_jobs

# The peers are told to send values pydicom finds invalid: that is the point.
pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

# Each send is one association, each job its own caller or study: a short quiet period
# (the harness's default is 1 s) makes every wait for a job shorter.
QUIET = 0.3

HEX_UID = hashlib.sha256(b"a study from the wild").hexdigest()


@pytest.fixture
def box(box_factory, tmp_path: Path) -> BoxServer:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Recv=QUICK)
    return box_factory(quiet=QUIET, home=home)


def archive_of(box: BoxServer) -> Path:
    return box.home / "scratch" / "archive"


def test_a_hex_study_uid_is_stored_archived_under_its_key_and_kept(
    box: BoxServer, tmp_path: Path
) -> None:
    study = write_study(tmp_path / "hex", n_images=3, rows=16, cols=16, study_uid=HEX_UID)
    sent = send_files(box.dicom_port, "Recv", study.paths, calling="WILDPACS")
    assert len(sent.ok) == 3, f"statuses: {[hex(s) for _, s in sent.statuses]}"

    (job,) = wait_jobs(box, 1)
    assert job["study_uid"] == HEX_UID  # /api/v1/jobs: the real value
    stored = input_files(box, job["scratchdir"])
    assert sorted(stored) == sorted(p.name for p in study.paths)
    assert {str(dcmread(p).StudyInstanceUID) for p in stored.values()} == {HEX_UID}

    key = study_key(HEX_UID)
    assert key.startswith("x-") and key != HEX_UID
    assert sorted(p.name for p in archive_of(box).iterdir()) == [key]
    assert sorted(p.name for p in (archive_of(box) / key).iterdir()) == sorted(stored)
    # The seed's listing and the archive list show the real value too.
    assert [j["pid"] for j in box.jobs()] == [HEX_UID]
    (listed,) = box.get("/api/v1/archive").json()["studies"]
    assert listed["StudyInstanceUID"] == HEX_UID and listed["files"] == 3


def test_a_hex_study_from_storescu_lands_with_the_same_study(
    box: BoxServer, tmp_path: Path
) -> None:
    """Two sends of one hashed study (pynetdicom, then dcmtk) share one archive folder."""
    first = write_study(tmp_path / "a", n_images=2, rows=16, cols=16, study_uid=HEX_UID)
    assert len(send_files(box.dicom_port, "Recv", first.paths).ok) == 2
    wait_jobs(box, 1)
    second = write_study(tmp_path / "b", n_images=2, rows=16, cols=16, study_uid=HEX_UID)
    res = box.storescu(second.paths[0].parent, "Recv", "DCMTKSCU")
    assert res.returncode == 0, res.stderr

    jobs = wait_jobs(box, 2)
    assert {j["study_uid"] for j in jobs} == {HEX_UID}
    folder = archive_of(box) / study_key(HEX_UID)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in [*first.paths, *second.paths]
    )
    for job in jobs:
        info = json.loads((box.home / "scratch" / job["scratchdir"] / "info.json").read_text())
        assert info["AETitleCalled"] == "Recv"


def test_deleting_a_hex_study_by_its_real_uid(box: BoxServer, tmp_path: Path) -> None:
    study = write_study(tmp_path / "hex", n_images=1, rows=16, cols=16, study_uid=HEX_UID)
    assert send_files(box.dicom_port, "Recv", study.paths).ok
    (job,) = wait_jobs(box, 1)

    res = box.delete(f"/api/v1/studies/{HEX_UID}", timeout=60)
    assert res.status_code == 200, res.text
    assert res.json()["deleted_jobs"] == [job["scratchdir"]] and res.json()["archive_deleted"]
    assert not (archive_of(box) / study_key(HEX_UID)).exists()
    assert not (box.home / "scratch" / job["scratchdir"]).exists()


@pytest.fixture(scope="module")
def refusing_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoxServer]:
    """One box for the refusals below: each looks only at the job and archive folder its
    own send adds (a box start costs more than the test)."""
    home = tmp_path_factory.mktemp("refusals") / "home"
    install_buckets(home, Recv=QUICK)
    box = BoxServer(home, quiet=QUIET).start()
    yield box
    box.stop()


def archived(box: BoxServer) -> set[str]:
    folder = archive_of(box)
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.mark.parametrize("bad", ["1.2.3\n4", "1.2\x1b[31m3", "\x01"])
def test_a_study_uid_with_control_characters_is_refused(
    refusing_box: BoxServer, tmp_path: Path, bad: str
) -> None:
    box = refusing_box
    jobs_before, archive_before = {j["scratchdir"] for j in api_jobs(box)}, archived(box)
    study = write_study(tmp_path / "bad", n_images=1, rows=16, cols=16, study_uid=bad)
    sent = send_files(box.dicom_port, "Recv", study.paths)
    assert [s for _, s in sent.statuses] == [0xC000]
    good = write_study(tmp_path / "good", n_images=1, rows=16, cols=16)
    assert send_files(box.dicom_port, "Recv", good.paths).ok  # the box goes on receiving
    jobs = wait_jobs(box, len(jobs_before) + 1)
    (job,) = [j for j in jobs if j["scratchdir"] not in jobs_before]
    assert job["study_uid"] == good.study_uid
    assert sorted(archived(box) - archive_before) == [good.study_uid]
