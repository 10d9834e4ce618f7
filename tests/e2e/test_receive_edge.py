"""Receiving what real senders send, end to end: the edge cases real peers produce.

Deflated data sets with a pad byte after the stream (dcmtk), storage classes pynetdicom
does not list, SOP Instance UIDs that are garbage or shared, and the box's own AE title.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from magickbox.testing.dicomgen import make_dataset, save_dataset, write_study
from tests.conftest import BoxServer, dcmtk
from tests.e2e.peers import (
    QUICK,
    api_jobs,
    dataset_part,
    echoscu,
    input_files,
    install_buckets,
    send_files,
    wait_for,
    wait_jobs,
)

pytestmark = pytest.mark.e2e

COLOR_PALETTE = "1.2.840.10008.5.1.4.39.1"
HANGING_PROTOCOL = "1.2.840.10008.5.1.4.38.1"
DEFLATED = "1.2.840.10008.1.2.1.99"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoxServer]:
    """One box for the module (a start and a stop fewer per test): each test sends with a
    calling AE title of its own and looks at the jobs of that title only."""
    home = tmp_path_factory.mktemp("edge") / "home"
    install_buckets(home, Recv=QUICK)
    server = BoxServer(home).start()
    yield server
    server.stop()


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def logged(box: BoxServer, *words: str) -> bool:
    """Some line of the server log holds every one of ``words``."""
    text = box.log_path.read_text(errors="replace")
    return any(all(w in line for w in words) for line in text.splitlines())


def image(folder: Path, **kw: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(study_uid=kw.pop("study_uid", generate_uid()), series_uid=generate_uid(),
                      rows=16, cols=16, **kw)  # fmt: skip
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    save_dataset(ds, path)
    return path


# -- 1: deflated data sets whose stream has bytes after it -------------------------------


@pytest.mark.timeout(180)
def test_deflated_files_from_dcmsend_and_storescu_are_stored(
    box: BoxServer, tmp_path: Path
) -> None:
    """dcmsend of pydicom's image_dfl.dcm (a pad byte after its deflate stream) and
    storescu -xd (dcmtk deflates on the fly and pads odd lengths) both get an answer."""
    dfl = tmp_path / "dfl" / "image_dfl.dcm"
    dfl.parent.mkdir()
    shutil.copy(get_testdata_file("image_dfl.dcm"), dfl)  # type: ignore[arg-type]
    sent = run([dcmtk("dcmsend"), "-aet", "DCMSEND", "-aec", "Recv",
                "127.0.0.1", str(box.dicom_port), str(dfl)])  # fmt: skip
    assert sent.returncode == 0, sent.stderr + sent.stdout
    (job,) = wait_jobs(box, 1, caller_aet="DCMSEND")
    stored = input_files(box, job["scratchdir"])
    assert sorted(stored) == [f"{dcmread(dfl).SOPInstanceUID}.dcm"]
    got = dcmread(next(iter(stored.values())))  # dcmtk deflates anew: compare the content
    assert str(got.file_meta.TransferSyntaxUID) == DEFLATED
    assert (got.pixel_array == dcmread(dfl).pixel_array).all()

    plain = write_study(tmp_path / "plain", n_images=3, rows=33, cols=17)  # odd lengths
    done = box.storescu(plain.paths[0].parent, "Recv", "STORESCU", "-xd")
    assert done.returncode == 0, done.stderr
    (job2,) = wait_jobs(box, 1, caller_aet="STORESCU")
    assert job2["study_uid"] == plain.study_uid
    stored = input_files(box, job2["scratchdir"])
    assert sorted(stored) == sorted(p.name for p in plain.paths)
    for path in stored.values():  # kept deflated, as it came, and readable
        assert str(dcmread(path).file_meta.TransferSyntaxUID) == DEFLATED
        assert dcmread(path).pixel_array.shape == (33, 17)
    assert echoscu(box, "Recv").returncode == 0  # nothing spins: the receiver still answers


# -- 2: storage classes pynetdicom does not list -----------------------------------------


@pytest.mark.parametrize("sop_class", [COLOR_PALETTE, HANGING_PROTOCOL])
def test_storage_classes_pynetdicom_does_not_list_are_accepted(
    box: BoxServer, tmp_path: Path, sop_class: str
) -> None:
    path = image(tmp_path / "s")
    ds = dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    save_dataset(ds, path)
    calling = "PALETTE" if sop_class == COLOR_PALETTE else "HANGING"
    sent = send_files(box.dicom_port, "Recv", [path], calling=calling)
    assert sent.ok == [path]
    (job,) = wait_jobs(box, 1, caller_aet=calling)
    assert sorted(input_files(box, job["scratchdir"])) == [path.name]


# -- 3: SOP Instance UIDs that are garbage or shared -------------------------------------


def with_request_uid(path: Path, uid: str) -> Path:
    """The file with ``uid`` in its meta: pynetdicom's chunked send puts it in the request."""
    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    dcmwrite(path, ds, enforce_file_format=False)  # as it is: save_dataset would mend it
    assert str(dcmread(path).file_meta.MediaStorageSOPInstanceUID) == uid
    return path


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_garbage_request_uid_is_replaced_by_the_data_sets_own(
    box: BoxServer, tmp_path: Path
) -> None:
    """dcmtk sends "31" as Affected SOP Instance UID for all-UN files: two such instances
    must not end up in one file."""
    study_uid = generate_uid()
    paths = [with_request_uid(image(tmp_path / "s", study_uid=study_uid, instance=i + 1), uid)
             for i, uid in enumerate(["31", "31", "not a uid"])]  # fmt: skip
    sent = send_files(box.dicom_port, "Recv", paths, calling="DCMTKISH")
    assert sent.ok == paths
    (job,) = wait_jobs(box, 1, caller_aet="DCMTKISH")
    stored = input_files(box, job["scratchdir"])
    assert sorted(stored) == sorted(f"{dcmread(p).SOPInstanceUID}.dcm" for p in paths)
    for path in paths:
        assert dataset_part(stored[f"{dcmread(path).SOPInstanceUID}.dcm"]) == dataset_part(path)


def test_two_data_sets_with_one_sop_uid_are_both_kept(box: BoxServer, tmp_path: Path) -> None:
    study_uid, sop_uid = generate_uid(), generate_uid()
    paths = []
    for i in range(2):
        ds = make_dataset(study_uid=study_uid, series_uid=generate_uid(), sop_uid=sop_uid,
                          rows=16, cols=16, seed=i, series_description=f"copy {i}")  # fmt: skip
        paths.append(tmp_path / f"copy{i}.dcm")
        save_dataset(ds, paths[-1])
    again = tmp_path / "again.dcm"  # the first sent again, byte for byte: a retry
    shutil.copy(paths[0], again)
    sent = send_files(box.dicom_port, "Recv", [*paths, again], calling="SAMEUID")
    assert len(sent.ok) == 3
    (job,) = wait_jobs(box, 1, caller_aet="SAMEUID")
    stored = input_files(box, job["scratchdir"])
    assert sorted(stored) == [f"{sop_uid}-2.dcm", f"{sop_uid}.dcm"]
    assert {dataset_part(p) for p in stored.values()} == {dataset_part(p) for p in paths}
    wait_for("the duplicate in the log", lambda: logged(box, "SAMEUID", sop_uid), timeout=10)


# -- 4 and 5: the box's own AE title; refusals say who, what and why ----------------------


def test_storage_to_the_own_ae_title_fails_loudly_and_echo_works(
    box: BoxServer, tmp_path: Path
) -> None:
    study = write_study(tmp_path / "s", n_images=2, rows=16, cols=16)
    done = box.storescu(study.paths[0].parent, "MAGICKBOX", "OWNTITLE")
    assert done.returncode != 0 or "error" in done.stderr.lower(), done.stderr
    wait_for("the refusal in the log", lambda: logged(box, "OWNTITLE", "MAGICKBOX", "own AE"))
    assert echoscu(box, "MAGICKBOX").returncode == 0
    assert api_jobs(box, caller_aet="OWNTITLE") == []
    assert not any((box.home / "scratch" / ".incoming").iterdir())


def test_a_refused_c_store_is_logged_with_both_titles_the_uid_and_the_reason(
    box: BoxServer, tmp_path: Path
) -> None:
    path = image(tmp_path / "s")
    ds: Dataset = dcmread(path)
    del ds.StudyInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    save_dataset(ds, path)
    sent = send_files(box.dicom_port, "Recv", [path], calling="NOSTUDY")
    assert sent.statuses == [(path, 0xC000)]
    words = ("NOSTUDY", "'Recv'", ds.SOPInstanceUID, "no StudyInstanceUID")
    wait_for("the refusal in the log", lambda: logged(box, *words), timeout=10)
