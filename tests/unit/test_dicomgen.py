"""Tests for magickbox.testing.dicomgen, the synthetic DICOM generator."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, MRImageStorage

from magickbox.testing import dicomgen as gen

STUDY = "1.2.826.0.1.3680043.8.498.1001"
SERIES = "1.2.826.0.1.3680043.8.498.1001.1"
SOP = "1.2.826.0.1.3680043.8.498.1001.1.1"
LOSSLESS = [name for name in gen.SYNTAXES if name != "jpeg"]


def _dcmtk(tool: str) -> str | None:
    """Path of the real dcmtk ``tool``. pynetdicom's own storescu/storescp scripts may
    come first on PATH, so a candidate only counts if its --version mentions dcmtk."""
    candidates = [str(Path(d) / tool) for d in ("/usr/bin", "/usr/local/bin", "/bin")]
    candidates += [p for d in os.environ.get("PATH", "").split(os.pathsep) if (p := f"{d}/{tool}")]
    for path in candidates:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return path
    return None


DCMDUMP = _dcmtk("dcmdump")


def _dcmdump(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert DCMDUMP is not None
    return subprocess.run([DCMDUMP, *args, str(path)], capture_output=True, text=True, timeout=60)


def _body(data: bytes) -> bytes:
    """The data set bytes after the file meta of a Part 10 byte stream."""
    assert data[128:132] == b"DICM"
    (group_length,) = struct.unpack_from("<L", data, 140)
    return data[144 + group_length :]


def _reference_pixels(**kw: object) -> np.ndarray:
    ds = gen.make_dataset(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP, seed=3, **kw)
    return ds.pixel_array


# ---------------------------------------------------------------- single datasets


@pytest.mark.parametrize("syntax", list(gen.SYNTAXES))
def test_each_syntax_is_valid_and_reads_back(tmp_path: Path, syntax: str) -> None:
    ds = gen.make_dataset(
        study_uid=STUDY, series_uid=SERIES, sop_uid=SOP, transfer_syntax=syntax, seed=3
    )
    path = tmp_path / "img.dcm"
    gen.save_dataset(ds, path)

    if DCMDUMP is not None:
        result = _dcmdump(path, "-q", "-dc")
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""

    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == gen.SYNTAXES[syntax]
    assert back.file_meta.MediaStorageSOPInstanceUID == SOP
    assert back.file_meta.MediaStorageSOPClassUID == MRImageStorage
    assert (back.StudyInstanceUID, back.SeriesInstanceUID, back.SOPInstanceUID) == (
        STUDY,
        SERIES,
        SOP,
    )
    assert back.SOPClassUID == MRImageStorage
    assert back.Modality == "MR"
    assert float(back.EchoTime) > 0 and float(back.RepetitionTime) > 0
    assert len(back.ImagePositionPatient) == 3 and len(back.ImageOrientationPatient) == 6
    assert back.PhotometricInterpretation == "MONOCHROME2"

    pixels = back.pixel_array
    assert pixels.shape == (256, 256)
    reference = _reference_pixels()
    if syntax == "jpeg":
        assert (back.BitsAllocated, back.BitsStored) == (8, 8)
        assert back.LossyImageCompression == "01"
        diff = np.abs(pixels.astype(int) - (reference >> 4).astype(int))
        assert diff.mean() < 4  # lossy, but it is the same picture
    else:
        assert (back.BitsAllocated, back.BitsStored, back.HighBit) == (16, 12, 11)
        np.testing.assert_array_equal(pixels, reference)
        assert reference.max() < 4096 and reference.std() > 100  # 12 bits, real structure


def test_big_endian_file_really_is_big_endian(tmp_path: Path) -> None:
    ds = gen.make_dataset(study_uid=STUDY, series_uid=SERIES, transfer_syntax="bigendian")
    path = tmp_path / "be.dcm"
    gen.save_dataset(ds, path)
    raw = path.read_bytes()
    # (0028,0010) Rows, US, length 2, value 256, all big endian
    assert b"\x00\x28\x00\x10US\x00\x02\x01\x00" in raw
    pixels = np.frombuffer(_body(raw)[-256 * 256 * 2 :], dtype=">u2")
    np.testing.assert_array_equal(pixels.reshape(256, 256), pydicom.dcmread(path).pixel_array)
    if DCMDUMP is not None:
        out = _dcmdump(path, "+P", "Rows", "+P", "PixelData")
        assert out.returncode == 0, out.stderr
        first = "\\".join(f"{v:04x}" for v in pixels[:3])
        assert "US 256" in out.stdout and first in out.stdout


def test_ct_dataset() -> None:
    ds = gen.make_dataset(study_uid=STUDY, series_uid=SERIES, modality="CT", rows=64, cols=80)
    assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
    assert (ds.Rows, ds.Columns) == (64, 80)
    assert ds.RescaleIntercept == -1024 and "EchoTime" not in ds
    hu = ds.pixel_array.astype(int) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    assert hu.min() < -900 and hu.max() > 300  # air around, bone inside


@pytest.mark.parametrize(("rows", "cols"), [(16, 128), (13, 300), (9, 77), (256, 256)])
def test_rle_encoder_is_lossless(rows: int, cols: int) -> None:
    rle = gen.make_dataset(
        study_uid=STUDY, series_uid=SERIES, rows=rows, cols=cols, transfer_syntax="rle", seed=5
    )
    native = gen.make_dataset(study_uid=STUDY, series_uid=SERIES, rows=rows, cols=cols, seed=5)
    np.testing.assert_array_equal(rle.pixel_array, native.pixel_array)
    frame8 = (native.pixel_array % 251).astype(np.uint8)
    encoded = gen.rle_encode_frame(frame8)
    assert struct.unpack_from("<L", encoded)[0] == 1  # one segment for 8-bit data
    assert len(encoded) % 2 == 0


def test_rle_file_decodes_with_dcmtk(tmp_path: Path) -> None:
    dcmdrle = _dcmtk("dcmdrle")
    if dcmdrle is None:
        pytest.skip("dcmtk's dcmdrle is not installed")
    ds = gen.make_dataset(
        study_uid=STUDY, series_uid=SERIES, rows=40, cols=300, transfer_syntax="rle", seed=9
    )
    gen.save_dataset(ds, tmp_path / "rle.dcm")
    out = subprocess.run(
        [dcmdrle, str(tmp_path / "rle.dcm"), str(tmp_path / "raw.dcm")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    native = gen.make_dataset(study_uid=STUDY, series_uid=SERIES, rows=40, cols=300, seed=9)
    np.testing.assert_array_equal(
        pydicom.dcmread(tmp_path / "raw.dcm").pixel_array, native.pixel_array
    )


def test_seed_makes_output_reproducible() -> None:
    def build(seed: int | None, instance: int = 1) -> bytes:
        ds = gen.make_dataset(study_uid=STUDY, series_uid=SERIES, seed=seed, instance=instance)
        return gen.dataset_bytes(ds)

    assert build(1) == build(1)
    assert build(1) != build(2)
    assert build(None) != build(None)
    assert _body(build(1, 1))[-1000:] != _body(build(1, 2))[-1000:]


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="modality"):
        gen.make_dataset(study_uid=STUDY, series_uid=SERIES, modality="US")
    with pytest.raises(ValueError, match="transfer syntax"):
        gen.make_dataset(
            study_uid=STUDY, series_uid=SERIES, transfer_syntax="1.2.840.10008.1.2.4.90"
        )
    with pytest.raises(ValueError, match="series"):
        gen.write_study(tmp_path, n_images=2, series=3)
    assert gen.resolve_syntax("1.2.840.10008.1.2") == gen.SYNTAXES["implicit"]


# -------------------------------------------------------------- studies and corpora


def test_write_study_uids_and_layout(tmp_path: Path) -> None:
    info = gen.write_study(tmp_path / "s", n_images=25, series=3, patient_id="PAT-9")
    assert info.n_images == 25 and len(info.sop_uids) == len(set(info.sop_uids)) == 25
    assert len(info.series_uids) == len(set(info.series_uids)) == 3
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(
        f"{uid}.dcm" for uid in info.sop_uids
    )
    per_series: dict[str, list[int]] = {}
    pixel_hashes = set()
    for sop_uid, path in zip(info.sop_uids, info.paths, strict=True):
        assert path == tmp_path / "s" / f"{sop_uid}.dcm"
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == info.study_uid
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == sop_uid
        assert ds.PatientID == "PAT-9"
        per_series.setdefault(ds.SeriesInstanceUID, []).append(ds.InstanceNumber)
        pixel_hashes.add(hash(ds.PixelData))
        assert float(ds.ImagePositionPatient[2]) == float(ds.SliceLocation)
    assert set(per_series) == set(info.series_uids)
    assert sorted(len(v) for v in per_series.values()) == [8, 8, 9]
    assert all(v == list(range(1, len(v) + 1)) for v in per_series.values())
    assert len(pixel_hashes) == 25  # every image differs


@pytest.mark.parametrize("syntax", list(gen.SYNTAXES))
def test_fast_writer_matches_dcmwrite(tmp_path: Path, syntax: str) -> None:
    """write_study splices pre-encoded bytes: it must equal pydicom's own encoding."""
    info = gen.write_study(
        tmp_path, n_images=4, series=2, transfer_syntax=syntax, seed=11, patient_name="Müller^Jörg"
    )
    layout = [(0, 1), (0, 2), (1, 1), (1, 2)]
    for idx, (series, instance) in enumerate(layout):
        ds = gen.make_dataset(
            study_uid=info.study_uid,
            series_uid=info.series_uids[series],
            sop_uid=info.sop_uids[idx],
            patient_name="Müller^Jörg",
            instance=instance,
            series_number=series + 1,
            series_description=("t1", "t2")[series],
            transfer_syntax=syntax,
            seed=gen._child_seed(11, series),
        )
        expected, written = gen.dataset_bytes(ds), info.paths[idx].read_bytes()
        if syntax == "deflate":  # compressed at another zlib level; compare the content
            assert written[:132] == expected[:132]
            inflate = lambda b: zlib.decompress(_body(b), -zlib.MAX_WBITS)  # noqa: E731
            assert inflate(written) == inflate(expected)
        else:
            assert written == expected
    assert pydicom.dcmread(info.paths[0]).PatientName == "Müller^Jörg"


def test_write_corpus(tmp_path: Path) -> None:
    studies = gen.write_corpus(
        tmp_path, n_studies=3, images_per_study=4, transfer_syntax=["explicit", "rle"], seed=1
    )
    assert [p.name for p in sorted(tmp_path.iterdir())] == [f"study_{i:04d}" for i in range(3)]
    assert len({s.study_uid for s in studies}) == 3
    assert [s.patient_id for s in studies] == ["MB-0001", "MB-0002", "MB-0003"]
    assert [s.transfer_syntax for s in studies] == [
        gen.SYNTAXES["explicit"],
        gen.SYNTAXES["rle"],
        gen.SYNTAXES["explicit"],
    ]
    for i, study in enumerate(studies):
        assert sorted(p.name for p in (tmp_path / f"study_{i:04d}").iterdir()) == sorted(
            f"{u}.dcm" for u in study.sop_uids
        )
    again = gen.write_corpus(
        tmp_path / "again",
        n_studies=3,
        images_per_study=4,
        transfer_syntax=["explicit", "rle"],
        seed=1,
    )
    assert [s.sop_uids for s in again] == [s.sop_uids for s in studies]


def test_cli(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "magickbox.testing.dicomgen", str(tmp_path / "out"),
         "--studies", "2", "--images", "3", "--modality", "CT", "--rows", "32", "--cols", "48",
         "--syntax", "deflate"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "wrote 6 files in 2 studies" in out.stdout
    files = sorted((tmp_path / "out").glob("study_*/*.dcm"))
    assert len(files) == 6
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "CT" and (ds.Rows, ds.Columns) == (32, 48)
    assert ds.file_meta.TransferSyntaxUID == gen.SYNTAXES["deflate"]


# ------------------------------------------------------------------ hostile input


@pytest.mark.parametrize("kind", gen.MALFORMED_KINDS)
def test_malformed_bytes_are_rejected_by_dcmtk(tmp_path: Path, kind: str) -> None:
    data = gen.malformed_dataset_bytes(kind)
    assert data[128:132] == b"DICM" and b"MagickBox" in data  # looks like DICOM at first sight
    if kind.startswith("overlong"):
        vr_len = {"overlong": (b"LT", 0xFFF0), "overlong_pixel": (b"OW\x00\x00", 0x7FFFFFF0)}
        vr, length = vr_len[kind]
        at = data.rindex(vr) + len(vr)
        fmt = "<H" if len(vr) == 2 else "<L"
        claimed = struct.unpack_from(fmt, data, at)[0]
        assert claimed == length > len(data) - at
    if DCMDUMP is None:
        pytest.skip("dcmdump is not installed")
    path = tmp_path / f"{kind}.dcm"
    path.write_bytes(data)
    assert _dcmdump(path, "-q").returncode != 0


def test_unknown_malformed_kind() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        gen.malformed_dataset_bytes("nope")


def test_truncated_file(tmp_path: Path) -> None:
    path = gen.truncated_file(tmp_path / "cut.dcm")
    full = gen.dataset_bytes(
        gen.make_dataset(
            study_uid=gen._derived_uid("truncated-study"),
            series_uid=gen._derived_uid("truncated-series"),
            seed=0,
        )
    )
    data = path.read_bytes()
    assert len(data) == len(full) // 2 and full.startswith(data)
    ds = pydicom.dcmread(path)  # the header still parses ...
    assert ds.Modality == "MR"
    with pytest.raises(ValueError):
        ds.pixel_array  # noqa: B018 - ... but the pixel data is short
    if DCMDUMP is not None:
        assert _dcmdump(path, "-q").returncode != 0

    # in place, by byte count
    victim = tmp_path / "victim.dcm"
    victim.write_bytes(full)
    gen.truncated_file(victim, source=victim, keep=300)
    assert victim.read_bytes() == full[:300]
    with pytest.raises(ValueError):
        gen.truncated_file(tmp_path / "x.dcm", source=victim, keep=300)


# --------------------------------------------------------------- dcmtk integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# storescu proposes compressed transfer syntaxes only for one -x option at a time. Its
# default proposal also fills all 128 presentation contexts with uncompressed ones. A
# plain "storescu +sd +r" therefore cannot send RLE or JPEG files: it logs "E: Store
# Failed" and still exits 0. This profile proposes one context per (SOP class, syntax).
_STORESCU_PROFILE = """\
[[TransferSyntaxes]]
{syntaxes}
[[PresentationContexts]]
[Mixed]
{contexts}
[[Profiles]]
[Mixed]
PresentationContexts = Mixed
"""
_DCMTK_SYNTAX_NAMES = {
    "explicit": "LittleEndianExplicit",
    "implicit": "LittleEndianImplicit",
    "bigendian": "BigEndianExplicit",
    "deflate": "DeflatedLittleEndianExplicit",
    "rle": "RLELossless",
    "jpeg": "JPEGBaseline",
}


def _storescu_profile(path: Path) -> Path:
    syntaxes = "\n".join(f"[{k}]\nTransferSyntax1 = {v}" for k, v in _DCMTK_SYNTAX_NAMES.items())
    pairs = [(sop, k) for sop in ("MRImageStorage", "CTImageStorage") for k in _DCMTK_SYNTAX_NAMES]
    contexts = "\n".join(
        f"PresentationContext{i} = {sop}\\{k}" for i, (sop, k) in enumerate(pairs, start=1)
    )
    path.write_text(_STORESCU_PROFILE.format(syntaxes=syntaxes, contexts=contexts))
    return path


def test_mixed_syntax_folder_goes_through_dcmtk(tmp_path: Path) -> None:
    storescp, storescu = _dcmtk("storescp"), _dcmtk("storescu")
    if storescp is None or storescu is None:
        pytest.skip("dcmtk's storescp/storescu are not installed")
    src, received = tmp_path / "send", tmp_path / "received"
    received.mkdir()
    expected: dict[str, str] = {}  # SOP Instance UID -> transfer syntax UID
    for i, syntax in enumerate(gen.SYNTAXES):
        modality = "CT" if i % 2 else "MR"
        info = gen.write_study(
            src / syntax, n_images=3, modality=modality, rows=64, cols=64, transfer_syntax=syntax
        )
        expected.update(dict.fromkeys(info.sop_uids, info.transfer_syntax))
    profile = _storescu_profile(tmp_path / "storescu.cfg")

    env = {**os.environ, "TCP_NODELAY": "1"}
    port = _free_port()
    log = (tmp_path / "storescp.log").open("wb")
    server = subprocess.Popen(
        [storescp, "-od", str(received), "+xa", "-aet", "MB", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert server.poll() is None, (tmp_path / "storescp.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "storescp did not start listening"
                time.sleep(0.05)
        sent = subprocess.run(
            [storescu, "-xf", str(profile), "Mixed", "+sd", "+r", "-nh", "-aet", "ME",
             "-aec", "MB", "127.0.0.1", str(port), str(src)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "E:" not in sent.stdout + sent.stderr, sent.stdout + sent.stderr
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()

    files = [p for p in received.iterdir() if p.is_file()]
    arrived = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        arrived[ds.SOPInstanceUID] = ds.file_meta.TransferSyntaxUID
    assert len(files) == len(expected) == 18
    assert arrived == expected  # every file arrived, each in the syntax it was sent in
