"""Tests for the example bucket ProcBucket (magickbox.buckets.examples.derive)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from magickbox.buckets.examples import derive

REPO_ROOT = Path(__file__).resolve().parents[2]
BUCKET_DIR = REPO_ROOT / "magickbox" / "buckets" / "examples" / "ProcBucket"
STUDY_UID = "1.2.826.0.1.3680043.8.498.99001"
PATIENT_ID = "MB-TEST-0001"
BITS_STORED = 12


def reference_edges(img: np.ndarray, bits_stored: int) -> np.ndarray:
    """Sobel magnitude via an explicit 3x3 correlation (independent of derive.py)."""
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
    ky = kx.T
    p = np.pad(img.astype(np.float64), 1, mode="edge")
    h, w = img.shape
    gx = np.zeros((h, w))
    gy = np.zeros((h, w))
    for dy in range(3):
        for dx in range(3):
            window = p[dy : dy + h, dx : dx + w]
            gx += kx[dy, dx] * window
            gy += ky[dy, dx] * window
    mag = np.sqrt(gx**2 + gy**2)
    maxval = (1 << bits_stored) - 1
    if mag.max() == 0:
        return np.zeros_like(mag)
    return np.rint(mag * maxval / mag.max())


def phantom(seed: int, rows: int = 64, cols: int = 64) -> np.ndarray:
    """A bright rectangle plus noise: has clear edges and differs per seed."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 50, size=(rows, cols), dtype=np.uint16)
    r0, c0 = 10 + seed % 7, 12 + seed % 5
    img[r0 : r0 + 30, c0 : c0 + 25] += 2000
    return img


def base_dataset(series_uid: str, series_number: int, instance: int, desc: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = "Test^Patient"
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = STUDY_UID
    ds.StudyDate = "20240102"
    ds.StudyTime = "101010"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = desc
    ds.InstanceNumber = instance
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.FrameOfReferenceUID = STUDY_UID + ".7"
    ds.PixelSpacing = [1.0, 1.0]
    ds.ImagePositionPatient = [0.0, 0.0, float(instance)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.WindowCenter = 1000
    ds.WindowWidth = 2000
    return ds


def write_mr(
    path: Path,
    series_uid: str,
    series_number: int,
    instance: int,
    desc: str,
    pixels: np.ndarray,
    syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    ds = base_dataset(series_uid, series_number, instance, desc)
    ds.set_pixel_data(pixels, "MONOCHROME2", BITS_STORED, generate_instance_uid=False)
    if syntax == RLELossless:
        ds.compress(RLELossless, generate_instance_uid=False)
    elif syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


@pytest.fixture
def inputs(tmp_path: Path) -> dict:
    """2 series x 3 MR 64x64 images (one RLE, one series implicit VR), a text file and
    a DICOM without pixel data (in series A)."""
    in_dir = tmp_path / "job" / "input"
    series_a, series_b = generate_uid(), generate_uid()
    originals: dict[str, dict] = {}
    for i in range(3):
        px = phantom(i)
        ds = write_mr(in_dir / "a" / f"img{i}.dcm", series_a, 5, i + 1, "T1 axial", px)
        originals[ds.SOPInstanceUID] = {"series": series_a, "pixels": px}
    for i in range(3):
        px = phantom(10 + i)
        syntax = RLELossless if i == 1 else ImplicitVRLittleEndian
        ds = write_mr(in_dir / "b" / "sub" / f"img{i}", series_b, 7, i + 1, "T2 sag", px, syntax)
        originals[ds.SOPInstanceUID] = {"series": series_b, "pixels": px, "syntax": syntax}
    (in_dir / "notes.txt").write_text("this is not DICOM\n")
    nopix = base_dataset(series_a, 5, 99, "T1 axial")
    nopix.save_as(in_dir / "a" / "nopixels.dcm", enforce_file_format=True)
    return {
        "in_dir": in_dir,
        "out_dir": tmp_path / "job" / "output",
        "series_a": series_a,
        "series_b": series_b,
        "originals": originals,
    }


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    proc = tmp_path / "proc" / "proc.json"
    memory = tmp_path / "memory"
    monkeypatch.setenv("MB_PROC_JSON", str(proc))
    monkeypatch.setenv("MB_MEMORY", str(memory))
    return {"proc": proc, "memory": memory}


def read_outputs(out_dir: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted((out_dir / "dicom").glob("*.dcm"))]


def test_rle_input_is_really_compressed(inputs: dict) -> None:
    rle = pydicom.dcmread(inputs["in_dir"] / "b" / "sub" / "img1")
    assert rle.file_meta.TransferSyntaxUID == RLELossless
    assert rle.pixel_array.shape == (64, 64)


def test_main_writes_derived_instances(inputs: dict, env: dict) -> None:
    assert derive.main([str(inputs["in_dir"]), str(inputs["out_dir"])]) == 0
    outs = read_outputs(inputs["out_dir"])
    originals = inputs["originals"]
    assert len(outs) == 6

    input_series = {inputs["series_a"], inputs["series_b"]}
    mapping: dict[str, set[str]] = {}
    for ds in outs:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert "NumberOfFrames" not in ds
        assert ds.SOPInstanceUID not in originals
        assert (inputs["out_dir"] / "dicom" / f"{ds.SOPInstanceUID}.dcm").is_file()
        assert ds.SeriesInstanceUID not in input_series
        assert ds.StudyInstanceUID == STUDY_UID
        assert ds.PatientID == PATIENT_ID
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert "RescaleSlope" not in ds

        src_uid = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
        src = originals[src_uid]
        mapping.setdefault(src["series"], set()).add(ds.SeriesInstanceUID)
        if src["series"] == inputs["series_a"]:
            assert ds.SeriesNumber == 1005
            assert ds.SeriesDescription == "MB edges of T1 axial"
        else:
            assert ds.SeriesNumber == 1007
            assert ds.SeriesDescription == "MB edges of T2 sag"

        arr = ds.pixel_array
        assert arr.shape == (64, 64)
        assert not np.array_equal(arr, src["pixels"])
        assert int(arr.max()) == (1 << BITS_STORED) - 1
        expected = reference_edges(src["pixels"], BITS_STORED)
        assert np.abs(arr.astype(np.int64) - expected).max() <= 1

    # one new series per input series, deterministic within the run, all distinct
    assert set(mapping) == input_series
    assert all(len(v) == 1 for v in mapping.values())
    assert len(set().union(*mapping.values())) == 2


def test_summary_counts(inputs: dict, env: dict) -> None:
    derive.main([str(inputs["in_dir"]), str(inputs["out_dir"])])
    summary = json.loads((inputs["out_dir"] / "summary.json").read_text())
    assert summary["files"] == 8
    assert summary["non_dicom"] == 1
    assert summary["decoded"] == 6
    assert summary["skipped"] == 2

    a = summary["series"][inputs["series_a"]]
    b = summary["series"][inputs["series_b"]]
    assert (a["files"], a["decoded"], a["skipped"]) == (4, 3, 1)
    assert a["skip_reasons"] == {"no pixel data": 1}
    assert (b["files"], b["decoded"], b["skipped"]) == (3, 3, 0)

    pix_a = np.stack(
        [v["pixels"] for v in inputs["originals"].values() if v["series"] == inputs["series_a"]]
    )
    assert a["min"] == pix_a.min()
    assert a["max"] == pix_a.max()
    assert a["mean"] == pytest.approx(float(pix_a.mean()))

    outs = read_outputs(inputs["out_dir"])
    out_series = {ds.SeriesInstanceUID for ds in outs}
    assert set(summary["new_series_instance_uids"]) == out_series
    assert len(a["new_series_instance_uids"]) == 1
    assert a["new_series_instance_uids"][0] in out_series
    assert a["new_series_instance_uids"] != b["new_series_instance_uids"]


def test_preview_png_uses_largest_series(inputs: dict, env: dict) -> None:
    # series B gets 5 decodable images, series A keeps 3 -> preview shows series B
    for i in (3, 4):
        write_mr(
            inputs["in_dir"] / "b" / f"more{i}.dcm",
            inputs["series_b"],
            7,
            i + 1,
            "T2 sag",
            phantom(20 + i),
        )
    derive.main([str(inputs["in_dir"]), str(inputs["out_dir"])])
    with Image.open(inputs["out_dir"] / "preview.png") as img:
        img.load()
        assert img.format == "PNG"
        assert img.mode == "L"
        arr = np.asarray(img)
    # 5 tiles -> 3 columns x 2 rows of 128px tiles with 2px gaps
    assert arr.shape == (2 * 130 + 2, 3 * 130 + 2)
    assert arr.max() > 200
    summary = json.loads((inputs["out_dir"] / "summary.json").read_text())
    assert summary["preview_series_instance_uid"] == inputs["series_b"]


def test_preview_is_capped_at_16_images(tmp_path: Path, env: dict) -> None:
    in_dir = tmp_path / "job" / "input"
    series = generate_uid()
    for i in range(20):
        write_mr(in_dir / f"{i:02d}.dcm", series, 1, i + 1, "many", phantom(i, 32, 32))
    derive.main([str(in_dir), str(tmp_path / "job" / "output")])
    assert len(list((tmp_path / "job" / "output" / "dicom").glob("*.dcm"))) == 20
    with Image.open(tmp_path / "job" / "output" / "preview.png") as img:
        assert img.size == (4 * 130 + 2, 4 * 130 + 2)


def test_proc_json_success_and_run_counter(inputs: dict, env: dict) -> None:
    derive.main([str(inputs["in_dir"]), str(inputs["out_dir"])])
    proc = json.loads(env["proc"].read_text())
    assert isinstance(proc, list) and len(proc) == 1
    assert proc[0]["success"] == "success"
    assert "6" in proc[0]["message"]
    assert (env["memory"] / "runs.txt").read_text().strip() == "1"
    derive.main([str(inputs["in_dir"]), str(inputs["out_dir"])])
    assert (env["memory"] / "runs.txt").read_text().strip() == "2"


def test_empty_input_gives_failed(tmp_path: Path, env: dict) -> None:
    in_dir = tmp_path / "job" / "input"
    in_dir.mkdir(parents=True)
    out_dir = tmp_path / "job" / "output"
    assert derive.main([str(in_dir), str(out_dir)]) == 0
    proc = json.loads(env["proc"].read_text())
    assert proc[0]["success"] == "failed"
    assert proc[0]["message"]
    assert not list((out_dir / "dicom").glob("*.dcm"))
    assert not (out_dir / "preview.png").exists()


def test_only_non_images_gives_failed(inputs: dict, env: dict) -> None:
    in_dir = inputs["in_dir"].parent / "other"
    in_dir.mkdir()
    (in_dir / "readme.txt").write_text("hello")
    base_dataset(generate_uid(), 1, 1, "x").save_as(in_dir / "x.dcm", enforce_file_format=True)
    derive.main([str(in_dir), str(inputs["out_dir"])])
    proc = json.loads(env["proc"].read_text())
    assert proc[0]["success"] == "failed"
    assert "no pixel data" in proc[0]["message"]


def test_proc_json_fallback_location(inputs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MB_PROC_JSON", raising=False)
    monkeypatch.delenv("MB_MEMORY", raising=False)
    derive.main([str(inputs["in_dir"]), str(inputs["out_dir"]), "--ignored", "value"])
    proc = json.loads((inputs["out_dir"].parent / "proc.json").read_text())
    assert proc[0]["success"] == "success"
    summary = json.loads((inputs["out_dir"] / "summary.json").read_text())
    assert summary["extra_args"] == ["--ignored", "value"]


def test_undecodable_transfer_syntax_is_skipped(tmp_path: Path, env: dict, capsys) -> None:
    in_dir = tmp_path / "job" / "input"
    series = generate_uid()
    write_mr(in_dir / "ok.dcm", series, 3, 1, "mixed", phantom(1))
    # JPEG-LS with garbage data: no JPEG-LS decoder is installed here
    bad = base_dataset(series, 3, 2, "mixed")
    bad.file_meta.TransferSyntaxUID = JPEGLSLossless
    bad.Rows, bad.Columns = 64, 64
    bad.SamplesPerPixel = 1
    bad.PhotometricInterpretation = "MONOCHROME2"
    bad.BitsAllocated, bad.BitsStored, bad.HighBit, bad.PixelRepresentation = 16, 12, 11, 0
    bad.PixelData = encapsulate([b"\xff\xd8 not a real codestream \xff\xd9"])
    bad["PixelData"].VR = "OB"
    bad.save_as(in_dir / "bad.dcm", enforce_file_format=True)

    assert derive.main([str(in_dir), str(tmp_path / "job" / "output")]) == 0
    summary = json.loads((tmp_path / "job" / "output" / "summary.json").read_text())
    assert summary["decoded"] == 1
    assert summary["series"][series]["skipped"] == 1
    log = capsys.readouterr().out
    assert "bad.dcm" in log and "JPEG-LS" in log
    assert json.loads(env["proc"].read_text())[0]["success"] == "success"


def test_multiframe_and_colour_inputs(tmp_path: Path, env: dict) -> None:
    in_dir = tmp_path / "job" / "input"
    # multi-frame 16-bit: only the first frame is used, output is single frame
    frames = np.stack([phantom(3), phantom(4), phantom(5)])
    mf = base_dataset(generate_uid(), 9, 1, "cine")
    mf.SOPClassUID = UltrasoundMultiFrameImageStorage
    mf.file_meta.MediaStorageSOPClassUID = mf.SOPClassUID
    mf.set_pixel_data(frames, "MONOCHROME2", BITS_STORED, generate_instance_uid=False)
    in_dir.mkdir(parents=True)
    mf.save_as(in_dir / "mf.dcm", enforce_file_format=True)
    # 8-bit RGB secondary capture
    rgb = np.zeros((40, 50, 3), dtype=np.uint8)
    rgb[10:30, 15:35] = (200, 100, 50)
    sc = base_dataset(generate_uid(), 2, 1, "photo")
    sc.SOPClassUID = SecondaryCaptureImageStorage
    sc.file_meta.MediaStorageSOPClassUID = sc.SOPClassUID
    sc.set_pixel_data(rgb, "RGB", 8, generate_instance_uid=False)
    sc.save_as(in_dir / "rgb.dcm", enforce_file_format=True)

    derive.main([str(in_dir), str(tmp_path / "job" / "output")])
    outs = {
        str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID): ds
        for ds in read_outputs(tmp_path / "job" / "output")
    }
    assert len(outs) == 2
    d_mf = outs[mf.SOPInstanceUID]
    assert d_mf.SOPClassUID == SecondaryCaptureImageStorage
    assert int(d_mf.get("NumberOfFrames", 1)) == 1
    assert d_mf.pixel_array.shape == (64, 64)
    assert np.abs(d_mf.pixel_array - reference_edges(frames[0], BITS_STORED)).max() <= 1
    d_rgb = outs[sc.SOPInstanceUID]
    assert d_rgb.BitsAllocated == 8 and d_rgb.SamplesPerPixel == 1
    assert d_rgb.pixel_array.shape == (40, 50)
    assert d_rgb.pixel_array.max() == 255
    assert d_rgb.pixel_array[20, 25] == 0  # flat inside the rectangle


def test_bucket_files() -> None:
    info = json.loads((BUCKET_DIR / "info.json").read_text())
    assert info["AETitle"] == "ProcBucket"
    assert info["name"] == "ProcBucket"
    assert info["enabled"] == 1
    assert info["license"] == "MIT"
    assert info["version"] == "1.0.0"
    assert info["description"]
    work = BUCKET_DIR / "work.sh"
    assert work.read_text().startswith("#!/bin/sh\n")
    assert os.stat(work).st_mode & stat.S_IXUSR


def test_work_sh_subprocess(inputs: dict, tmp_path: Path) -> None:
    job = inputs["out_dir"].parent
    inputs["out_dir"].mkdir()
    proc_path = tmp_path / "proc_sub.json"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO_ROOT),
        "MB_PYTHON": sys.executable,
        "MB_PROC_JSON": str(proc_path),
        "MB_MEMORY": str(tmp_path / "mem"),
        "MB_SCRATCHDIR": str(tmp_path / "scratch"),
        "MB_AETITLE_CALLED": "ProcBucket",
        "MB_AETITLE_CALLER": "TESTSCU",
        "MB_CALLER_IP": "127.0.0.1",
    }
    result = subprocess.run(
        [str(BUCKET_DIR / "work.sh"), str(inputs["in_dir"]), str(inputs["out_dir"]), "extra1"],
        cwd=job,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "extra1" in result.stdout
    assert "progress 8/8" in result.stdout
    assert json.loads(proc_path.read_text())[0]["success"] == "success"
    outs = read_outputs(inputs["out_dir"])
    assert len(outs) == 6
    assert all(ds.StudyInstanceUID == STUDY_UID for ds in outs)
    assert (tmp_path / "mem" / "runs.txt").read_text().strip() == "1"
    with Image.open(inputs["out_dir"] / "preview.png") as img:
        assert img.size[0] > 0
