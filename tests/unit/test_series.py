"""SeriesView: summaries built file by file, and the default rules on real files."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import orjson
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from magickbox.errors import Invalid
from magickbox.study.classify import parse_rules
from magickbox.study.series import SeriesView, json_value
from magickbox.testing.dicomgen import write_study


def bundled(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)  # bundled files only: no network
    assert isinstance(path, str), name
    return pydicom.dcmread(path, stop_before_pixels=True)


def view_of(paths: list[Path]) -> SeriesView:
    view = SeriesView()
    for p in paths:
        view.add(pydicom.dcmread(p, stop_before_pixels=True))
    return view


def test_summary_of_mr_small_has_plain_json_values() -> None:
    view = SeriesView()
    view.add(bundled("MR_small.dcm"))
    out = view.to_json()
    assert out["NumFiles"] == 1
    assert out["Modality"] == "MR"
    assert out["EchoTime"] == 240.0
    assert out["RepetitionTime"] == 4000.0
    assert out["SeriesNumber"] == 1
    assert out["ImageOrientationPatient"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert out["ImageType"] == ["DERIVED", "SECONDARY", "OTHER"]
    assert isinstance(out["PatientName"], str)
    assert "SeriesDescription" not in out  # the file has none
    assert out["ClassifyType"] == ["MR", "T2", "axial"]
    orjson.dumps(out)  # everything is JSON


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("MR_small.dcm", ["MR", "T2", "axial"]),
        ("CT_small.dcm", ["CT", "axial"]),
        ("JPEG2000.dcm", []),  # NM, no orientation
        ("rtplan.dcm", []),
    ],
)
def test_default_rules_on_pydicom_test_files(name: str, expected: list[str]) -> None:
    view = SeriesView()
    view.add(bundled(name))
    assert view.to_json()["ClassifyType"] == expected


def test_generated_mr_study(tmp_path: Path) -> None:
    info = write_study(tmp_path, n_images=8, series=4, modality="MR", rows=16, cols=16, seed=3)
    by_series: dict[str, list[Path]] = {}
    for p in info.paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        by_series.setdefault(ds.SeriesInstanceUID, []).append(p)
    got = {}
    for uid, paths in by_series.items():
        out = view_of(paths).to_json()
        assert out["NumFiles"] == 2
        assert out["SeriesInstanceUID"] == uid
        got[out["SeriesDescription"]] = out["ClassifyType"]
    assert got == {
        "t1": ["MR", "T1", "axial"],
        "t2": ["MR", "T2", "axial"],
        "flair": ["MR", "FLAIR", "axial"],
        "dwi": ["MR", "DWI", "axial"],
    }


def test_generated_ct_study_and_num_files(tmp_path: Path) -> None:
    info = write_study(tmp_path, n_images=5, modality="CT", rows=16, cols=16, seed=1)
    view = view_of(info.paths)
    big = parse_rules(
        [{"type": "big", "rules": [{"tag": ["NumFiles"], "value": 4, "operator": ">"}]}]
    )
    assert view.to_json()["ClassifyType"] == ["CT", "axial"]
    assert view.num_files == 5
    assert view.to_json(big)["ClassifyType"] == ["big"]  # not the default set
    assert view.relpath() == PurePosixPath(
        "views", "raw", info.study_uid, f"{info.series_uids[0]}.json"
    )


def test_first_value_wins_and_missing_values_are_filled_later() -> None:
    first, second = Dataset(), Dataset()
    first.SeriesInstanceUID = second.SeriesInstanceUID = "1.2.3"
    first.SeriesDescription = "first"
    second.SeriesDescription = "second"
    first.EchoTime = ""  # empty in the first file
    second.EchoTime = "12.5"
    view = SeriesView()
    view.add(first)
    view.add(second)
    assert view.summary() == {
        "SeriesInstanceUID": "1.2.3",
        "SeriesDescription": "first",
        "EchoTime": 12.5,
        "NumFiles": 2,
    }


def test_a_file_of_another_series_is_refused() -> None:
    a, b = Dataset(), Dataset()
    a.SeriesInstanceUID, b.SeriesInstanceUID = "1.2.3", "1.2.4"
    view = SeriesView()
    view.add(a)
    with pytest.raises(Invalid, match=r"series 1\.2\.4 "):
        view.add(b)
    assert view.num_files == 1


def test_relpath_needs_uids() -> None:
    with pytest.raises(Invalid):
        SeriesView().relpath()


def test_json_value_types() -> None:
    ds = Dataset()
    ds.SeriesNumber = "7"
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.PatientName = "Doe^Jane"
    assert json_value(ds.SeriesNumber) == 7
    assert json_value(ds.PixelSpacing) == [0.5, 0.5]
    assert json_value(ds.PatientName) == "Doe^Jane"
    assert json_value(b"AB") == "AB"
