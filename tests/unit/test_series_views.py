"""Series views as the receiver makes them (raw elements from its one walk), against
pydicom reading the same files; and the default rules on real and generated series."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.uid import generate_uid

from magickbox.receive.structure import walk_stored_file
from magickbox.study.series import (
    SERIES_TAGS,
    VIEW_TAGS,
    RawHeader,
    SeriesSet,
    SeriesView,
    collect_files,
)
from magickbox.study.views import identity
from magickbox.testing.dicomgen import save_dataset, write_study

BUNDLED = Path(pydicom.data.__file__).parent / "test_files"  # in the wheel: no download


def raw_header(path: Path) -> RawHeader:
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    walked = walk_stored_file(path, syntax, VIEW_TAGS)
    return RawHeader(walked.values, walked.vrs, walked.implicit, walked.little)


def receiver_view(paths: list[Path]) -> SeriesView:
    view = SeriesView()
    for p in paths:
        view.add(raw_header(p))  # type: ignore[arg-type]
    return view


def pydicom_view(paths: list[Path]) -> SeriesView:
    view = SeriesView()
    for p in paths:
        view.add(pydicom.dcmread(p, stop_before_pixels=True))
    return view


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "bigendian", "deflate", "rle", "jpeg"])
def test_raw_elements_give_the_view_pydicom_gives(tmp_path: Path, syntax: str) -> None:
    """Big endian US (Rows), implicit VR, deflated data sets: decoded as pydicom does."""
    # 32 rows: the US value's bytes are b" \0", which must not read as an empty text
    info = write_study(tmp_path, n_images=3, rows=32, cols=16, transfer_syntax=syntax, seed=5,
                       patient_name="Müller^Jörg")  # fmt: skip
    got = receiver_view(info.paths).to_json()
    assert got == pydicom_view(info.paths).to_json()
    assert got["Rows"] == 32 and got["NumFiles"] == 3
    assert got["PatientName"] == "Müller^Jörg"  # ISO_IR 100 from SpecificCharacterSet
    assert got["ClassifyType"] == ["MR", "T1", "axial"]


def test_raw_header_decodes_only_what_the_view_still_lacks(tmp_path: Path) -> None:
    info = write_study(tmp_path, n_images=3, rows=16, cols=16, seed=6)
    view = SeriesView()
    headers = [raw_header(p) for p in info.paths]
    for h in headers:
        view.add(h)  # type: ignore[arg-type]
    assert headers[0]._ds is not None  # the first file is decoded...
    assert all(h._ds is None for h in headers[1:])  # ...the others are not


def _bundled_files() -> list[str]:
    return sorted(n for n in os.listdir(BUNDLED) if n.endswith(".dcm"))


# The default rules on pydicom's bundled files: (file, ClassifyType).
BUNDLED_TABLE = [
    ("MR_small.dcm", ["MR", "T2", "axial"]),
    ("MR_small_bigendian.dcm", ["MR", "T2", "axial"]),
    ("MR_small_implicit.dcm", ["MR", "T2", "axial"]),
    ("MR_small_RLE.dcm", ["MR", "T2", "axial"]),
    ("examples_overlay.dcm", ["MR", "T1", "axial"]),  # TR 5.53, TE 2.81
    ("CT_small.dcm", ["CT", "axial"]),
    ("693_J2KI.dcm", ["CT", "axial"]),
    ("J2K_pixelrep_mismatch.dcm", ["CT", "oblique"]),  # tilted 22 degrees
    ("JPEG2000.dcm", []),  # NM
    ("rtplan.dcm", []),
]


@pytest.mark.parametrize(("name", "expected"), BUNDLED_TABLE)
def test_default_rules_classify_bundled_files(name: str, expected: list[str]) -> None:
    assert name in _bundled_files()
    view = pydicom_view([BUNDLED / name])
    assert view.to_json()["ClassifyType"] == expected


AXIAL = ["1", "0", "0", "0", "1", "0"]
CORONAL = ["1", "0", "0", "0", "0", "-1"]
SAGITTAL = ["0", "1", "0", "0", "0", "-1"]
OBLIQUE = ["1", "0", "0", "0", "0.7071", "-0.7071"]

# Generated series: (modality, SeriesDescription, TR, TE, orientation, ClassifyType).
GENERATED_TABLE = [
    ("MR", "t1_mprage", "500", "12", AXIAL, ["MR", "T1", "axial"]),
    ("MR", "t1 coronal", "500", "12", CORONAL, ["MR", "T1", "coronal"]),
    ("MR", "t2_tse", "4000", "90", SAGITTAL, ["MR", "T2", "sagittal"]),
    ("MR", "t2_tse tilted", "4000", "90", OBLIQUE, ["MR", "T2", "oblique"]),
    ("MR", "t2_flair", "9000", "90", AXIAL, ["MR", "FLAIR", "axial"]),
    ("MR", "ep2d_diff dwi", "5000", "90", AXIAL, ["MR", "DWI", "axial"]),
    ("MR", "fMRI rest bold", "2000", "30", AXIAL, ["MR", "fMRI", "axial"]),
    ("MR", "localizer", "8", "4", SAGITTAL, ["MR", "localizer", "sagittal"]),
    ("MR", "pd", "2500", "30", AXIAL, ["MR", "axial"]),  # neither T1 nor T2
    ("CT", "head axial", None, None, AXIAL, ["CT", "axial"]),
    ("CT", "scout", None, None, CORONAL, ["CT", "localizer", "coronal"]),
]


@pytest.mark.parametrize(
    ("modality", "description", "tr", "te", "iop", "expected"),
    GENERATED_TABLE,
    ids=[row[1] for row in GENERATED_TABLE],
)
def test_default_rules_classify_generated_series(
    tmp_path: Path, modality: str, description: str, tr: str | None, te: str | None,
    iop: list[str], expected: list[str],
) -> None:  # fmt: skip
    info = write_study(tmp_path / "in", n_images=2, rows=16, cols=16, modality=modality, seed=1)
    out = []
    for i, path in enumerate(info.paths):
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = description
        ds.ImageOrientationPatient = iop
        if tr is not None:
            ds.RepetitionTime, ds.EchoTime = tr, te
        target = tmp_path / f"{i}.dcm"
        save_dataset(ds, target)
        out.append(target)
    assert receiver_view(out).to_json()["ClassifyType"] == expected


def test_series_set_splits_by_series_and_keeps_file_names(tmp_path: Path) -> None:
    info = write_study(tmp_path, n_images=6, series=3, rows=16, cols=16, seed=2)
    (tmp_path / "notes.txt").write_text("not DICOM")
    found = collect_files(tmp_path)
    assert len(found) == 3
    by_uid = {view.series_uid: files for view, files in found.items()}
    assert set(by_uid) == set(info.series_uids)
    assert sorted(n for files in by_uid.values() for n in files) == sorted(
        p.name for p in info.paths
    )
    facts = identity((v.summary() for v, _ in found.items()), info.study_uid)
    assert facts["patient_id"] == "MB-0001" and facts["series_count"] == 3
    assert facts["modalities"] == "MR" and facts["study_date"]


def test_files_without_series_uid_are_not_counted() -> None:
    ds = pydicom.Dataset()
    ds.StudyInstanceUID = generate_uid()
    found = SeriesSet()
    found.add(ds, "a.dcm")
    assert len(found) == 0


def test_identity_prefers_the_job_study_and_lists_modalities() -> None:
    views = [
        {"StudyInstanceUID": "1.2", "Modality": "MR", "PatientID": "other"},
        {"StudyInstanceUID": "1.3", "Modality": "CT", "PatientID": "P7", "StudyDate": "20240102"},
        {"StudyInstanceUID": "1.3", "Modality": "MR"},
    ]
    facts = identity(views, "1.3")
    assert facts["patient_id"] == "P7"
    assert facts["modalities"] == "CT\\MR"
    assert facts["series_count"] == 3
    assert facts["study_date"] == "20240102"
    assert facts["accession_number"] == ""


def test_view_tags_cover_every_series_tag() -> None:
    assert len(VIEW_TAGS) == len(SERIES_TAGS) + 1  # and SpecificCharacterSet


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "bigendian", "deflate"])
def test_files_on_disk_give_the_views_pydicom_gives(tmp_path: Path, syntax: str) -> None:
    """Uploads: the receiver's walk over Part 10 files (the syntax from their file meta)."""
    info = write_study(tmp_path, n_images=4, series=2, rows=32, cols=16, transfer_syntax=syntax,
                       seed=8)  # fmt: skip
    found = collect_files(tmp_path)
    got = {view.series_uid: view.to_json() for view, _ in found.items()}
    for uid in info.series_uids:
        paths = [p for p in info.paths if pydicom.dcmread(p).SeriesInstanceUID == uid]
        assert got[uid] == pydicom_view(paths).to_json()


def test_a_data_set_without_file_meta_is_read_by_pydicom(tmp_path: Path) -> None:
    info = write_study(tmp_path / "in", n_images=1, rows=16, cols=16, seed=9)
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(info.paths[0])
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)  # the data set alone: no preamble, no file meta
    bare = tmp_path / "bare" / "x.dcm"
    bare.parent.mkdir()
    bare.write_bytes(buf.getvalue())
    assert bare.read_bytes()[128:132] != b"DICM"
    ((view, files),) = collect_files(bare.parent).items()
    assert files == ["x.dcm"] and view.to_json() == pydicom_view(info.paths).to_json()
