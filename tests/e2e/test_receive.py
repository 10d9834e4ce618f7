"""Receiving, end to end: real DICOM peers (pynetdicom and dcmtk) against a running box.

Each send must become the right jobs, holding exactly the files of that send, stored byte
for byte as they came over the wire, whatever the transfer syntax.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from magickbox.testing.dicomgen import SYNTAXES, make_dataset, save_dataset, write_study
from tests.conftest import BoxServer, copy_bucket
from tests.e2e.peers import (
    QUICK,
    api_jobs,
    associate,
    contexts_for,
    dataset_part,
    echoscu,
    file_syntax,
    input_files,
    install_buckets,
    send_files,
    store,
    wait_for,
    wait_jobs,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def box(box_factory, tmp_path: Path) -> BoxServer:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Recv=QUICK, Off=(QUICK, {"enabled": 0}))
    return box_factory(home=home)


def by_study(jobs: list[dict]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for job in jobs:
        assert job["study_uid"] not in found, f"two jobs for study {job['study_uid']}: {jobs}"
        found[job["study_uid"]] = job
    return found


def assert_stored_verbatim(box: BoxServer, job: dict, sent: list[Path]) -> None:
    """The job's INPUT holds exactly ``sent``: one file per SOP instance, same data set bytes."""
    stored = input_files(box, job["scratchdir"])
    expected = {f"{p.stem}.dcm": p for p in sent}  # dicomgen names files <SOP UID>.dcm
    assert sorted(stored) == sorted(expected), f"INPUT of {job['scratchdir']}"
    for name, path in expected.items():
        assert file_syntax(stored[name]) == file_syntax(path), name
        assert dataset_part(stored[name]) == dataset_part(path), f"{name} changed on the way"


def test_concurrent_associations_each_a_study_in_its_own_syntax(
    box: BoxServer, tmp_path: Path
) -> None:
    """One association per transfer syntax, all open at once: one job per study, and every
    file's data set stored exactly as it was sent (compressed and big endian included)."""
    names = ["implicit", "explicit", "bigendian", "deflate", "rle", "jpeg"]
    assert set(names) <= set(SYNTAXES)
    studies = {
        name: write_study(tmp_path / name, n_images=3, rows=32, cols=32, transfer_syntax=name)
        for name in names
    }
    all_open = threading.Barrier(len(names), timeout=60)
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def sender(name: str) -> None:
        paths = studies[name].paths
        try:
            assoc = associate(box.dicom_port, "Recv", f"SCU_{name}", contexts_for(paths))
            try:
                # Each association proposed only its file's own syntax and got it.
                accepted = {str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
                assert accepted == {studies[name].transfer_syntax}, accepted
                all_open.wait()  # every association is open before the first file goes
                results[name] = [store(assoc, p) for p in paths]
            finally:
                assoc.release()
        except BaseException as exc:
            errors.append(exc)
            all_open.abort()

    threads = [threading.Thread(target=sender, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == {n: [0, 0, 0] for n in names}

    jobs = by_study(wait_jobs(box, len(names)))
    assert sorted(jobs) == sorted(s.study_uid for s in studies.values())
    for name, study in studies.items():
        job = jobs[study.study_uid]
        assert job["bucket"] == "Recv"
        assert job["caller_aet"] == f"SCU_{name}"
        assert job["caller_ip"] == "127.0.0.1"
        assert job["files"] == 3
        assert job["state"] == "done", job
        assert_stored_verbatim(box, job, study.paths)
        info = json.loads((box.home / "scratch" / job["scratchdir"] / "info.json").read_text())
        assert info["AETitleCalled"] == "Recv"
        assert info["AETitleCaller"] == f"SCU_{name}"
        assert info["CallerIP"] == "127.0.0.1"
        assert info["received"]


def test_one_association_three_studies_makes_three_jobs(box: BoxServer, tmp_path: Path) -> None:
    studies = [write_study(tmp_path / f"s{i}", n_images=2 + i, rows=16, cols=16) for i in range(3)]
    paths = [p for s in studies for p in s.paths]
    sent = send_files(box.dicom_port, "Recv", paths, calling="ONEASSOC")
    assert len(sent.ok) == len(paths)

    jobs = by_study(wait_jobs(box, 3))
    for study in studies:
        assert_stored_verbatim(box, jobs[study.study_uid], study.paths)
    # The listing the seed's scripts read has them too, one per study.
    listing = box.jobs()
    assert sorted(j["pid"] for j in listing) == sorted(s.study_uid for s in studies)


def test_same_study_sent_again_is_a_new_job_and_the_first_input_is_kept(
    box: BoxServer, tmp_path: Path
) -> None:
    study_uid = generate_uid()
    first = write_study(tmp_path / "first", n_images=3, rows=16, cols=16, study_uid=study_uid)
    assert len(send_files(box.dicom_port, "Recv", first.paths).ok) == 3
    (job1,) = wait_jobs(box, 1)
    dir1 = box.home / "scratch" / job1["scratchdir"] / "INPUT"
    before = {p.name: (os.stat(p).st_ino, p.read_bytes()) for p in sorted(dir1.iterdir())}

    archive = box.home / "scratch" / "archive" / study_uid
    assert sorted(p.name for p in archive.iterdir()) == sorted(before)
    for name, (inode, _data) in before.items():
        # INPUT and the archive share the file: a hard link, not a copy.
        assert os.stat(archive / name).st_ino == inode
        assert os.stat(dir1 / name).st_nlink == 2

    # The same study again: the same two SOP instances with other bytes, plus a new one.
    again = tmp_path / "again"
    again.mkdir()
    resent = []
    for i, sop_uid in enumerate([*first.sop_uids[:2], generate_uid()]):
        ds = make_dataset(
            study_uid=study_uid,
            series_uid=first.series_uids[0],
            sop_uid=sop_uid,
            rows=16,
            cols=16,
            instance=i + 1,
            seed=100 + i,
            series_description="resent",
        )
        save_dataset(ds, again / f"{sop_uid}.dcm")
        resent.append(again / f"{sop_uid}.dcm")
    assert len(send_files(box.dicom_port, "Recv", resent).ok) == 3

    jobs = wait_jobs(box, 2)
    (job2,) = [j for j in jobs if j["scratchdir"] != job1["scratchdir"]]
    assert job2["study_uid"] == study_uid
    assert_stored_verbatim(box, job2, resent)
    # The first job's INPUT is exactly as it was: same files, same inodes, same bytes.
    after = {p.name: (os.stat(p).st_ino, p.read_bytes()) for p in sorted(dir1.iterdir())}
    assert after == before
    # The archive holds every image of the study, the newest bytes of each, linked to job 2.
    dir2 = box.home / "scratch" / job2["scratchdir"] / "INPUT"
    assert sorted(p.name for p in archive.iterdir()) == sorted(
        set(before) | {p.name for p in resent}
    )
    for path in resent:
        assert os.stat(archive / path.name).st_ino == os.stat(dir2 / path.name).st_ino
        assert dataset_part(archive / path.name) == dataset_part(path)
    kept = first.paths[2]
    assert os.stat(archive / kept.name).st_ino == before[kept.name][0]


def test_osirix_like_series_on_back_to_back_associations_make_one_job(
    box: BoxServer, tmp_path: Path
) -> None:
    """OsiriX sends each series on its own association: one study must still be one job."""
    study = write_study(tmp_path / "osirix", n_images=6, series=2, rows=16, cols=16)
    series: dict[str, list[Path]] = {}
    for path in study.paths:
        series.setdefault(_series_uid(path), []).append(path)
    assert len(series) == 2
    for paths in series.values():  # back to back, each association released before the next
        assert len(send_files(box.dicom_port, "Recv", paths, calling="OSIRIX").ok) == len(paths)

    (job,) = wait_jobs(box, 1)
    assert job["study_uid"] == study.study_uid
    assert_stored_verbatim(box, job, study.paths)


def _series_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def test_echo_with_dcmtk_echoscu(box: BoxServer) -> None:
    for called in ("MAGICKBOX", "Recv"):  # the box's own AE title, and a bucket's
        done = echoscu(box, called)
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("called", ["NoSuchBucket", "Off"])
def test_unknown_or_disabled_bucket_is_rejected_at_association(
    box: BoxServer, tmp_path: Path, called: str
) -> None:
    study = write_study(tmp_path / "s", n_images=1, rows=16, cols=16)
    done = box.storescu(study.paths[0].parent, called=called, calling="REJECTME")
    assert done.returncode != 0
    assert "Called AE Title Not Recognized" in done.stderr, done.stderr

    def logged() -> bool:
        text = box.log_path.read_text(errors="replace")
        return any("REJECTME" in line and called in line for line in text.splitlines())

    wait_for("the rejection in the server log", logged, timeout=30)
    assert echoscu(box, "Recv").returncode == 0  # the receiver carries on
    assert api_jobs(box) == []
    assert not any((box.home / "scratch" / ".incoming").iterdir())


def test_bucket_added_on_disk_is_accepted_without_restart(box: BoxServer, tmp_path: Path) -> None:
    study = write_study(tmp_path / "s", n_images=2, rows=16, cols=16)
    refused = box.storescu(study.paths[0].parent, called="LateBucket")
    assert refused.returncode != 0  # not there yet

    copy_bucket(box.home, "LateBucket", QUICK)
    done = box.storescu(study.paths[0].parent, called="LateBucket", calling="LATE")
    assert done.returncode == 0, done.stderr
    (job,) = wait_jobs(box, 1)
    assert (job["bucket"], job["caller_aet"], job["state"]) == ("LateBucket", "LATE", "done")
    files_txt = box.home / "scratch" / job["scratchdir"] / "OUTPUT" / "files.txt"
    assert sorted(files_txt.read_text().split()) == sorted(p.name for p in study.paths)
