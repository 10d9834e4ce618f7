"""Example bucket worker: Sobel edge-magnitude images derived from incoming DICOM.

Run by ``ProcBucket/work.sh`` as::

    python -m magickbox.buckets.examples.derive <input dir> <output dir> [arguments...]

For every DICOM file below the input directory that carries pixel data pydicom can
decode with the installed plugins, the first frame is turned into an edge-magnitude
image (3x3 Sobel, numpy only), rescaled to the input's bit range and written as a new
single-frame DERIVED\\SECONDARY instance (explicit VR little endian, uncompressed) to
``<output>/dicom/<SOPInstanceUID>.dcm``.  Patient and study stay the same; every input
series gets one new series.  Files that are not DICOM, have no pixel data, or cannot be
decoded are skipped with a log line.

Also written: ``<output>/summary.json`` (per input series counts and intensities),
``<output>/preview.png`` (montage of up to 16 derived images of the largest series) and
the bucket's ``proc.json`` at ``$MB_PROC_JSON`` (fallback ``<output>/../proc.json``).
The exit code is 0 whether or not an image could be processed; proc.json says which.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder, pixel_array
from pydicom.tag import BaseTag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalIntraOralXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

VERSION = "1.0.0"
PREVIEW_MAX_IMAGES = 16
PREVIEW_TILE = 128
PROGRESS_EVERY = 100

# Single-frame image classes whose header can be kept (minus pixel-related
# attributes) for the derived instance.  Anything else (multi-frame, enhanced,
# unknown) becomes a Secondary Capture built from a list of copied attributes.
_KEEP_CLASS = {
    CTImageStorage,
    MRImageStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalIntraOralXRayImageStorageForPresentation,
    UltrasoundImageStorage,
    SecondaryCaptureImageStorage,
    PositronEmissionTomographyImageStorage,
}

# Group 0028 attributes that still describe the derived image correctly.
_KEEP_0028 = {
    BaseTag(0x00280030),  # PixelSpacing
    BaseTag(0x00280034),  # PixelAspectRatio
    BaseTag(0x00280A02),  # PixelSpacingCalibrationType
    BaseTag(0x00280A04),  # PixelSpacingCalibrationDescription
    BaseTag(0x00280301),  # BurnedInAnnotation
    BaseTag(0x00280302),  # RecognizableVisualFeatures
    BaseTag(0x00282110),  # LossyImageCompression
    BaseTag(0x00282112),  # LossyImageCompressionRatio
    BaseTag(0x00282114),  # LossyImageCompressionMethod
}

_DROP_KEYWORDS = (
    "IconImageSequence",
    "SourceImageSequence",
    "DerivationCodeSequence",
    "EncryptedAttributesSequence",
    "PresentationLUTShape",
    "NumberOfFrames",
)

# Attributes copied into a Secondary Capture built for non-classic inputs.
_SC_COPY = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
    "Modality",
    "SeriesDate",
    "SeriesTime",
    "Laterality",
    "BodyPartExamined",
    "PatientPosition",
    "ProtocolName",
    "OperatorsName",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "Manufacturer",
    "InstitutionName",
    "StationName",
    "InstanceNumber",
    "AcquisitionNumber",
    "AcquisitionDate",
    "AcquisitionTime",
    "PatientOrientation",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "SliceThickness",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceLocation",
    "BurnedInAnnotation",
    "LossyImageCompression",
)
_SC_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "InstanceNumber",
    "PatientOrientation",
)

NO_SERIES_UID = "(no SeriesInstanceUID)"


def log(msg: str) -> None:
    print(f"[derive] {msg}", flush=True)


# --------------------------------------------------------------------------- image math


def sobel_magnitude(img: np.ndarray) -> np.ndarray:
    """Return the 3x3 Sobel gradient magnitude of a 2-D image (edge-replicated border)."""
    p = np.pad(np.asarray(img, dtype=np.float32), 1, mode="edge")
    # Separable Sobel: smooth [1 2 1] across, derivative [-1 0 1] along.
    v = p[:-2, :] + 2.0 * p[1:-1, :] + p[2:, :]  # shape (H, W+2)
    gx = v[:, 2:] - v[:, :-2]
    h = p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]  # shape (H+2, W)
    gy = h[2:, :] - h[:-2, :]
    return np.hypot(gx, gy)


def to_gray(frame: np.ndarray) -> np.ndarray | None:
    """One frame as a 2-D array (colour is reduced to luminance); None if not an image."""
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[-1] == 3:
        f = frame.astype(np.float32)
        return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
    if frame.ndim == 3 and frame.shape[-1] == 1:
        return frame[..., 0]
    return None


def output_bits(ds: Dataset) -> tuple[int, int]:
    """(BitsAllocated, BitsStored) of the derived image: the input's bit range, unsigned."""
    allocated = int(ds.get("BitsAllocated", 16) or 16)
    stored = int(ds.get("BitsStored", allocated) or allocated)
    out_alloc = 8 if allocated <= 8 else 16
    out_stored = max(1, min(stored, out_alloc))
    return out_alloc, out_stored


def rescale(mag: np.ndarray, bits_stored: int, bits_allocated: int) -> np.ndarray:
    maxval = (1 << bits_stored) - 1
    dtype = np.uint8 if bits_allocated == 8 else np.uint16
    peak = float(mag.max()) if mag.size else 0.0
    if peak <= 0.0:
        return np.zeros(mag.shape, dtype=dtype)
    out = np.rint(mag * np.float32(maxval / peak))
    return np.clip(out, 0, maxval).astype(dtype)


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class SeriesStats:
    series_uid: str
    description: str = ""
    number: str = ""
    modality: str = ""
    files: int = 0
    decoded: int = 0
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    new_series_uid: str | None = None
    in_min: float = math.inf
    in_max: float = -math.inf
    in_sum: float = 0.0
    in_count: int = 0
    outputs: list[tuple[int, int, str]] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        key = reason.split(":", 1)[0]
        self.skip_reasons[key] = self.skip_reasons.get(key, 0) + 1

    def as_json(self) -> dict[str, Any]:
        have = self.in_count > 0
        return {
            "series_instance_uid": self.series_uid,
            "series_number": self.number,
            "series_description": self.description,
            "modality": self.modality,
            "files": self.files,
            "decoded": self.decoded,
            "skipped": self.skipped,
            "skip_reasons": self.skip_reasons,
            "min": self.in_min if have else None,
            "max": self.in_max if have else None,
            "mean": (self.in_sum / self.in_count) if have else None,
            "new_series_instance_uids": [self.new_series_uid] if self.new_series_uid else [],
        }


@dataclass
class RunState:
    out_dicom: Path
    series: dict[str, SeriesStats] = field(default_factory=dict)
    non_dicom: int = 0
    unreadable: int = 0
    derived: int = 0
    order: int = 0
    now_date: str = ""
    now_time: str = ""


# --------------------------------------------------------------------------- derivation


def _int_or(value: Any, default: int) -> int:
    try:
        return int(float(str(value)))
    except (TypeError, ValueError):
        return default


def _decode_first_frame(ds: Dataset) -> tuple[np.ndarray | None, str | None]:
    """(frame, None) or (None, reason for skipping)."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            return None, "float pixel data: not supported"
        return None, "no pixel data"
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not tsyntax:
        return None, "no transfer syntax: file meta lacks TransferSyntaxUID"
    tsyntax = UID(str(tsyntax))
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        return None, f"unsupported transfer syntax: {tsyntax.name} ({tsyntax})"
    if not decoder.is_available:
        return None, (
            f"undecodable transfer syntax: {tsyntax.name} ({tsyntax}) needs a plugin "
            "that is not installed"
        )
    try:
        frame = pixel_array(ds, index=0)
    except Exception as exc:
        return None, f"decoding failed: {tsyntax.name}: {type(exc).__name__}: {exc}"
    return frame, None


def _strip_header(ds: Dataset) -> Dataset:
    """Reuse a classic single-frame dataset as the header of the derived image."""
    ds.remove_private_tags()
    for tag in list(ds.keys()):
        group = tag.group
        if (
            group == 0x7FE0
            or (group == 0x0028 and tag not in _KEEP_0028)
            or (group & 0xFF01) in (0x5000, 0x6000)  # curves, overlays
            or group in (0x4FFE, 0xFFFA, 0xFFFC)  # MAC, signatures, padding
        ):
            del ds[tag]
    for keyword in _DROP_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def _secondary_capture(src: Dataset) -> Dataset:
    """A new Secondary Capture header carrying patient/study/series context of src."""
    new = Dataset()
    for keyword in _SC_COPY:
        if keyword in src:
            new[keyword] = src[keyword]
    for keyword in _SC_TYPE2:
        if keyword not in new:
            setattr(new, keyword, None)
    if "Modality" not in new or not new.Modality:
        new.Modality = "OT"
    new.SOPClassUID = SecondaryCaptureImageStorage
    new.ConversionType = "WSD"
    return new


def derive_dataset(
    src: Dataset, pixels: np.ndarray, bits: tuple[int, int], new_series_uid: str, st: RunState
) -> Dataset:
    src_class = str(src.get("SOPClassUID", ""))
    src_sop = str(src.get("SOPInstanceUID", ""))
    frames = _int_or(src.get("NumberOfFrames", 1), 1)
    original_image_type = list(src.get("ImageType", []) or [])
    original_description = str(src.get("SeriesDescription", "") or "")
    series_number = _int_or(src.get("SeriesNumber", 0), 0) + 1000

    keep_header = src_class in _KEEP_CLASS and frames <= 1
    ds = _strip_header(src) if keep_header else _secondary_capture(src)

    sop_uid = generate_uid()
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = new_series_uid
    ds.SeriesNumber = series_number
    label = original_description or "unnamed series"
    ds.SeriesDescription = f"MB edges of {label}"[:64]
    ds.ImageType = ["DERIVED", "SECONDARY", *original_image_type[2:]]
    ds.DerivationDescription = "Sobel edge magnitude of first frame (MagickBox ProcBucket)"
    if src_class and src_sop:
        ref = Dataset()
        ref.ReferencedSOPClassUID = src_class
        ref.ReferencedSOPInstanceUID = src_sop
        ds.SourceImageSequence = [ref]
    ds.InstanceCreationDate = st.now_date
    ds.InstanceCreationTime = st.now_time
    ds.ContentDate = st.now_date
    ds.ContentTime = st.now_time

    bits_allocated, bits_stored = bits
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    maxval = (1 << bits_stored) - 1
    ds.WindowCenter = str((maxval + 1) // 2)
    ds.WindowWidth = str(maxval + 1)
    data = pixels.astype("<u2" if bits_allocated == 16 else "u1", copy=False).tobytes()
    if len(data) % 2:
        data += b"\x00"
    ds.add_new(0x7FE00010, "OW" if bits_allocated == 16 else "OB", data)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"MB_DERIVE_{VERSION}"[:16]
    ds.file_meta = meta
    return ds


def process_file(path: Path, st: RunState) -> None:
    try:
        ds = pydicom.dcmread(path, force=False)
    except InvalidDicomError:
        st.non_dicom += 1
        log(f"skip {path}: not a DICOM file")
        return
    except Exception as exc:
        st.unreadable += 1
        log(f"skip {path}: unreadable DICOM ({type(exc).__name__}: {exc})")
        return

    key = str(ds.get("SeriesInstanceUID", "") or "") or NO_SERIES_UID
    stats = st.series.get(key)
    if stats is None:
        stats = SeriesStats(
            series_uid=key,
            description=str(ds.get("SeriesDescription", "") or ""),
            number=str(ds.get("SeriesNumber", "") or ""),
            modality=str(ds.get("Modality", "") or ""),
        )
        st.series[key] = stats
    stats.files += 1

    frame, reason = _decode_first_frame(ds)
    gray = None
    if frame is not None:
        gray = to_gray(frame)
        if gray is None:
            reason = f"unexpected pixel layout: array shape {frame.shape}"
    if reason is not None or gray is None or frame is None:
        stats.skip(reason or "not decodable")
        log(f"skip {path}: {reason}")
        return

    try:
        bits = output_bits(ds)
        derived = rescale(sobel_magnitude(gray), bits[1], bits[0])
        if stats.new_series_uid is None:
            stats.new_series_uid = generate_uid()
        instance = _int_or(ds.get("InstanceNumber", 0), 0)
        f_min, f_max = float(frame.min()), float(frame.max())
        f_sum, f_count = float(frame.sum(dtype=np.float64)), int(frame.size)
        out = derive_dataset(ds, derived, bits, stats.new_series_uid, st)
        target = st.out_dicom / f"{out.SOPInstanceUID}.dcm"
        out.save_as(target, enforce_file_format=True)
    except Exception as exc:
        stats.skip(f"derivation failed: {type(exc).__name__}: {exc}")
        log(f"skip {path}: derivation failed ({type(exc).__name__}: {exc})")
        return

    stats.decoded += 1
    stats.in_min = min(stats.in_min, f_min)
    stats.in_max = max(stats.in_max, f_max)
    stats.in_sum += f_sum
    stats.in_count += f_count
    stats.outputs.append((instance, st.order, target.name))
    st.order += 1
    st.derived += 1


# --------------------------------------------------------------------------- outputs


def list_files(in_dir: Path, exclude: Path) -> list[Path]:
    files: list[Path] = []
    excluded = os.path.realpath(exclude)
    for dirpath, dirnames, filenames in os.walk(in_dir):
        dirnames[:] = sorted(
            d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) != excluded
        )
        files.extend(Path(dirpath, name) for name in sorted(filenames))
    return files


def write_preview(st: RunState, out_dir: Path) -> str | None:
    """Montage of up to 16 derived images of the largest series; returns its series UID."""
    candidates = [s for s in st.series.values() if s.outputs]
    if not candidates:
        return None
    largest = max(candidates, key=lambda s: len(s.outputs))
    outputs = sorted(largest.outputs)
    if len(outputs) > PREVIEW_MAX_IMAGES:
        picks = np.linspace(0, len(outputs) - 1, PREVIEW_MAX_IMAGES).round().astype(int)
        outputs = [outputs[i] for i in sorted(set(picks.tolist()))]

    from PIL import Image

    count = len(outputs)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    gap = 2
    canvas = Image.new(
        "L", (cols * (PREVIEW_TILE + gap) + gap, rows * (PREVIEW_TILE + gap) + gap), 0
    )
    for i, (_, _, name) in enumerate(outputs):
        arr = pydicom.dcmread(st.out_dicom / name).pixel_array.astype(np.float32)
        peak = float(arr.max())
        img8 = (arr * (255.0 / peak)).astype(np.uint8) if peak > 0 else arr.astype(np.uint8)
        tile = Image.fromarray(img8)
        scale = min(PREVIEW_TILE / tile.width, PREVIEW_TILE / tile.height)
        size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
        tile = tile.resize(size, Image.Resampling.BILINEAR)
        x0 = gap + (i % cols) * (PREVIEW_TILE + gap) + (PREVIEW_TILE - size[0]) // 2
        y0 = gap + (i // cols) * (PREVIEW_TILE + gap) + (PREVIEW_TILE - size[1]) // 2
        canvas.paste(tile, (x0, y0))
    canvas.save(out_dir / "preview.png")
    log(f"preview.png: {count} image(s) of series {largest.series_uid}")
    return largest.series_uid


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_proc(path: Path, ok: bool, message: str) -> None:
    write_json(path, [{"success": "success" if ok else "failed", "message": message}])
    log(f"proc.json ({'success' if ok else 'failed'}): {path}")


def bump_run_counter() -> None:
    memory = os.environ.get("MB_MEMORY")
    if not memory:
        return
    try:
        counter = Path(memory) / "runs.txt"
        counter.parent.mkdir(parents=True, exist_ok=True)
        try:
            runs = int(counter.read_text(encoding="utf-8").strip() or 0)
        except (FileNotFoundError, ValueError):
            runs = 0
        runs += 1
        counter.write_text(f"{runs}\n", encoding="utf-8")
        log(f"run number {runs} of this bucket ({counter})")
    except OSError as exc:
        log(f"warning: could not update run counter in {memory}: {exc}")


def run(in_dir: Path, out_dir: Path, extra: list[str]) -> tuple[bool, str]:
    started = time.monotonic()
    out_dicom = out_dir / "dicom"
    out_dicom.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now()
    st = RunState(
        out_dicom=out_dicom, now_date=now.strftime("%Y%m%d"), now_time=now.strftime("%H%M%S")
    )

    if in_dir.is_dir():
        files = list_files(in_dir, out_dir)
    else:
        log(f"input directory {in_dir} does not exist")
        files = []
    total = len(files)
    log(f"{total} file(s) found below {in_dir}")

    for n, path in enumerate(files, 1):
        process_file(path, st)
        if n % PROGRESS_EVERY == 0 or n == total:
            log(
                f"progress {n}/{total} files, {st.derived} derived "
                f"({time.monotonic() - started:.1f}s)"
            )

    preview_series = None
    try:
        preview_series = write_preview(st, out_dir)
    except Exception as exc:
        log(f"warning: preview failed ({type(exc).__name__}: {exc})")

    skipped_dicom = sum(s.skipped for s in st.series.values())
    reasons: dict[str, int] = {}
    for s in st.series.values():
        for reason, count in s.skip_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
    if st.non_dicom:
        reasons["not DICOM"] = st.non_dicom
    if st.unreadable:
        reasons["unreadable DICOM"] = st.unreadable
    new_series = [s.new_series_uid for s in st.series.values() if s.new_series_uid]
    elapsed = time.monotonic() - started

    summary = {
        "tool": "magickbox.buckets.examples.derive",
        "version": VERSION,
        "input": str(in_dir),
        "output": str(out_dir),
        "extra_args": extra,
        "files": total,
        "dicom_files": total - st.non_dicom - st.unreadable,
        "non_dicom": st.non_dicom,
        "unreadable": st.unreadable,
        "decoded": st.derived,
        "skipped": skipped_dicom + st.non_dicom + st.unreadable,
        "skip_reasons": reasons,
        "new_series_instance_uids": new_series,
        "preview_series_instance_uid": preview_series,
        "seconds": round(elapsed, 3),
        "series": {key: s.as_json() for key, s in st.series.items()},
    }
    write_json(out_dir / "summary.json", summary)

    why = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    if st.derived:
        message = (
            f"Derived {st.derived} edge image(s) in {len(new_series)} new series from "
            f"{total} file(s)" + (f"; skipped: {why}" if why else "") + "."
        )
        ok = True
    else:
        message = f"No image could be processed: {total} file(s) examined" + (
            f" ({why})." if why else "."
        )
        ok = False
    log(f"{message} ({elapsed:.1f}s)")
    return ok, message


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="derive",
        description="MagickBox example bucket: Sobel edge images of incoming DICOM.",
    )
    parser.add_argument("input", help="folder with the received DICOM files")
    parser.add_argument("output", help="folder for the results")
    parser.add_argument(
        "extra", nargs=argparse.REMAINDER, help="further arguments (ignored, logged)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    in_dir, out_dir = Path(args.input), Path(args.output)
    proc_path = Path(os.environ.get("MB_PROC_JSON") or out_dir.parent / "proc.json")
    log(f"ProcBucket derive {VERSION}: input={in_dir} output={out_dir}")
    if args.extra:
        log(f"extra arguments (ignored): {args.extra}")
    caller = os.environ.get("MB_AETITLE_CALLER")
    if caller:
        log(
            f"called by {caller} ({os.environ.get('MB_CALLER_IP', '?')}) as "
            f"{os.environ.get('MB_AETITLE_CALLED', '?')}"
        )
    bump_run_counter()
    try:
        ok, message = run(in_dir, out_dir, list(args.extra))
    except Exception as exc:
        traceback.print_exc()
        sys.stderr.flush()
        with contextlib.suppress(OSError):
            write_proc(proc_path, False, f"derive crashed: {type(exc).__name__}: {exc}")
        return 1
    write_proc(proc_path, ok, message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
