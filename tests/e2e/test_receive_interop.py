"""Real senders into the box's receiver: dcmtk storescu with compressed proposals,
pynetdicom with several contexts and transfer syntaxes on one association, and Orthanc
sending over DICOM what was uploaded to its REST API. Each file arrives byte for byte
(data set as sent, in the transfer syntax it was sent in) and becomes part of a job.

dcmsend and storescu -xd with deflate are in test_receive_edge.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer, dcmtk
from tests.e2e.destinations import Orthanc
from tests.e2e.peers import (
    api_jobs,
    dataset_part,
    echoscu,
    file_syntax,
    input_files,
    recv_box,
    send_files,
    wait_for,
)

pytestmark = pytest.mark.e2e

# pydicom's own test files, one per compressed syntax (baseline and extended JPEG,
# JPEG 2000 lossless and lossy, RLE)
COMPRESSED = ["SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm", "JPEG2000.dcm",
              "MR_small_jp2klossless.dcm", "SC_rgb_rle.dcm"]  # fmt: skip


@pytest.fixture
def box(box_factory, tmp_path: Path) -> BoxServer:  # type: ignore[no-untyped-def]
    return recv_box(box_factory, tmp_path)


def compressed_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for name in COMPRESSED:
        found = get_testdata_file(name)
        assert found is not None, name
        paths.append(Path(shutil.copy(str(found), folder / name)))
    return paths


def stored_from(box: BoxServer, caller: str, n_files: int) -> dict[str, Path]:
    """SOP Instance UID -> stored file, once ``caller``'s jobs hold ``n_files`` and are done
    (how sends are grouped into jobs is test_receive.py's business)."""

    def probe() -> list[dict] | None:
        jobs = api_jobs(box, caller_aet=caller)
        done = all(j["state"] in ("done", "failed") for j in jobs)
        return jobs if done and sum(j["files"] for j in jobs) >= n_files else None

    out = {}
    for job in wait_for(f"{n_files} files from {caller}", probe):
        for path in input_files(box, job["scratchdir"]).values():
            out[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return out


def assert_kept_as_sent(sent: list[Path], stored: dict[str, Path], exact: bool = True) -> None:
    """Each file stored in the syntax it was sent in: byte for byte when the sender sends
    the file's own bytes (pynetdicom); dcmtk writes the data set anew from what it read
    (group lengths and trailing padding go), so there the elements and the compressed
    pixels must match."""
    for path in sent:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert uid in stored, f"{path.name} was not stored"
        assert file_syntax(stored[uid]) == file_syntax(path), path.name
        if exact:
            assert dataset_part(stored[uid]) == dataset_part(path), f"{path.name} changed"
            continue
        got, want = dcmread(stored[uid]), dcmread(path)
        assert got.PixelData == want.PixelData, f"{path.name}: the pixel data changed"
        for elem in want:
            if elem.tag.element != 0 and elem.tag not in (0x7FE00010, 0xFFFCFFFC):
                assert got[elem.tag].value == elem.value, f"{path.name}: {elem.tag} changed"


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TCP_NODELAY": "1"})  # fmt: skip


@pytest.mark.timeout(240)
def test_dcmsend_and_storescu_proposing_compressed_syntaxes(
    box: BoxServer, tmp_path: Path
) -> None:
    """dcmsend proposes each file's own (compressed) syntax; storescu proposes the one
    its option names (-xy JPEG baseline, -xx JPEG extended, -xv JPEG 2000 lossless,
    -xr RLE). Either way each is stored as it was sent, not converted."""
    sent = compressed_files(tmp_path / "c")
    done = run([dcmtk("dcmsend"), "-v", "-aet", "DCMSEND", "-aec", "Recv", "127.0.0.1",
                str(box.dicom_port), *map(str, sent)])  # fmt: skip
    assert done.returncode == 0 and "with status SUCCESS  : 5" in done.stderr, done.stderr
    assert_kept_as_sent(sent, stored_from(box, "DCMSEND", len(sent)), exact=False)

    by_option = {"-xy": sent[0], "-xx": sent[1], "-xv": sent[3], "-xr": sent[4]}
    for option, path in by_option.items():
        done = run([dcmtk("storescu"), "-v", option, "-aet", "STORESCU", "-aec", "Recv",
                    "127.0.0.1", str(box.dicom_port), str(path)])  # fmt: skip
        out = done.stdout + done.stderr
        assert done.returncode == 0 and "Store Response (Success)" in out, (option, out)
    stored = stored_from(box, "STORESCU", len(by_option))
    assert_kept_as_sent(list(by_option.values()), stored, exact=False)


@pytest.mark.timeout(180)
def test_pynetdicom_with_several_contexts_and_syntaxes_on_one_association(
    box: BoxServer, tmp_path: Path
) -> None:
    plain = write_study(tmp_path / "le", n_images=2, rows=16, cols=16)
    implicit = write_study(tmp_path / "ile", n_images=2, rows=16, cols=16,
                           transfer_syntax="1.2.840.10008.1.2")  # fmt: skip
    sent = [*compressed_files(tmp_path / "c"), *plain.paths, *implicit.paths]
    result = send_files(box.dicom_port, "Recv", sent, calling="PYSCU")
    assert len(result.ok) == len(sent), result.statuses
    assert_kept_as_sent(sent, stored_from(box, "PYSCU", len(sent)))


@pytest.mark.timeout(240)
def test_orthanc_sends_what_was_uploaded_to_it(box: BoxServer, tmp_path: Path, request) -> None:  # type: ignore[no-untyped-def]
    orthanc = Orthanc(tmp_path / "orthanc", aet="ORTHSEND",
                      modalities={"box": ["Recv", "127.0.0.1", box.dicom_port]})  # fmt: skip
    request.addfinalizer(orthanc.stop)
    orthanc.start()
    plain = write_study(tmp_path / "s", n_images=3, rows=16, cols=16)
    sent = [*plain.paths, *compressed_files(tmp_path / "c")[:2]]
    ids = [orthanc.upload(path) for path in sent]
    answer = orthanc.store_to("box", ids)
    assert answer.get("FailedInstancesCount", 0) == 0, answer
    stored = stored_from(box, "ORTHSEND", len(sent))
    assert len(stored) == len(sent)
    for path in sent:  # Orthanc may transcode on the way: the content must be the same
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert uid in stored, f"{path.name} did not arrive from Orthanc"
        assert dcmread(stored[uid]).PatientID == dcmread(path).PatientID
    assert echoscu(box, "Recv").returncode == 0
