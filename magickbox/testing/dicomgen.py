"""Fast synthetic DICOM generator for tests and benchmarks.

Only pydicom and numpy are needed, except for the "JPEG Baseline" syntax, which
imports Pillow on first use to produce real JPEG bytes.

Main entry points:

* :func:`make_dataset` builds one MR or CT image as a ``pydicom`` dataset (file
  meta included) in any of the supported transfer syntaxes (:data:`SYNTAXES`).
* :func:`write_study` and :func:`write_corpus` write many files quickly. Each series
  makes its noise once and its header once. After that, only the per-image
  attributes and the pixel data change from file to file.
* :func:`malformed_dataset_bytes` and :func:`truncated_file` make damaged input
  for hostile tests.
* ``python -m magickbox.testing.dicomgen OUT --studies N --images M ...`` is the
  CLI for benchmarks.

Pixel data is ``uint16`` with *Bits Stored* 12: seeded noise plus an elliptical
"body" whose size changes with the slice and a bright disc that moves, so every
image is different and any real processing step gives a visibly different result.
"""

from __future__ import annotations

import argparse
import io
import math
import struct
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import (
    dcmwrite,
    write_data_element,
    write_dataset,
    write_file_meta_info,
)
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

__all__ = [
    "MALFORMED_KINDS",
    "SYNTAXES",
    "StudyInfo",
    "dataset_bytes",
    "make_dataset",
    "malformed_dataset_bytes",
    "resolve_syntax",
    "rle_encode_frame",
    "save_dataset",
    "truncated_file",
    "write_corpus",
    "write_study",
]

#: Short names (CLI ``--syntax`` values) -> transfer syntax UIDs.
SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "bigendian": ExplicitVRBigEndian,
    "deflate": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg": JPEGBaseline8Bit,
}

_NATIVE_LE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}

_IMPLEMENTATION_VERSION = "MAGICKBOX_GEN"
_STUDY_DATE = "20240115"
_STUDY_TIME = "101500"
_NOISE_EXTRA_ROWS = 64  # extra noise rows; images take shifted windows of the buffer


def resolve_syntax(syntax: str) -> UID:
    """Return the transfer syntax UID for a short name (see :data:`SYNTAXES`) or a UID."""
    if syntax in SYNTAXES:
        return SYNTAXES[syntax]
    uid = UID(syntax)
    if uid not in SYNTAXES.values():
        names = ", ".join(SYNTAXES)
        raise ValueError(f"unsupported transfer syntax {syntax!r} (use one of: {names})")
    return uid


@dataclass
class StudyInfo:
    """What :func:`write_study` wrote. ``sop_uids[i]`` is stored at ``paths[i]``."""

    study_uid: str
    series_uids: list[str] = field(default_factory=list)
    sop_uids: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    patient_id: str = ""
    transfer_syntax: str = ""

    @property
    def n_images(self) -> int:
        return len(self.paths)


# --------------------------------------------------------------------------- pixels


class _Phantom:
    """Makes the pixel data for one series. Noise is drawn once and every image takes
    a different window of it. The shapes come from grids that are computed once."""

    def __init__(self, rows: int, cols: int, modality: str, rng: np.random.Generator):
        if rows < 8 or cols < 8:
            raise ValueError("rows and cols must be >= 8")
        self.rows, self.cols = rows, cols
        ct = modality == "CT"
        noise_amp = 48 if ct else 80
        self._noise = rng.integers(
            0, noise_amp, rows * cols + cols * _NOISE_EXTRA_ROWS, dtype=np.uint16
        )
        y = ((np.arange(rows, dtype=np.float32) - rows / 2) / (rows / 2)).reshape(rows, 1)
        x = ((np.arange(cols, dtype=np.float32) - cols / 2) / (cols / 2)).reshape(1, cols)
        self._y, self._x = y, x
        self._ellipse = (x / 0.8) ** 2 + (y / 0.9) ** 2  # (rows, cols) float32
        # Stored values: CT uses intercept -1024, so 1064 is +40 HU ("soft tissue")
        # and +700 on top of that is bone. MR values are arbitrary.
        level = 1064 if ct else 900 + int(rng.integers(0, 300))
        grad = (x + 1) * (60 if ct else 200)  # left-right intensity ramp
        self._body = (level + grad + np.zeros_like(y)).astype(np.uint16)
        self._inner = np.uint16(700 if ct else 1400)
        self._phase = float(rng.uniform(0, 2 * math.pi))

    def image(self, instance: int) -> np.ndarray:
        rows, cols = self.rows, self.cols
        offset = (instance * 7919) % (cols * _NOISE_EXTRA_ROWS)
        noise = self._noise[offset : offset + rows * cols].reshape(rows, cols)
        radius = 0.55 + 0.4 * abs(math.sin(instance * 0.11 + self._phase))
        body = self._ellipse < radius * radius
        cx = 0.3 * math.cos(instance * 0.37 + self._phase)
        cy = 0.3 * math.sin(instance * 0.37 + self._phase)
        disc = ((self._x - cx) ** 2 + (self._y - cy) ** 2) < 0.04
        img = noise + body * self._body
        img += disc * self._inner
        return img  # uint16, max < 4096


# ------------------------------------------------------------------------- encoding


def rle_encode_frame(arr: np.ndarray) -> bytes:
    """Encode a 2-D ``uint8``/``uint16`` frame as DICOM RLE Lossless (PS3.5 Annex G).

    This is vectorised numpy and uses literal runs only. The result is valid RLE
    (any conformant decoder, pydicom and dcmtk included, decodes it exactly), and it
    is hundreds of times faster than pydicom's pure-Python encoder. The cost is that it
    never shrinks the data, which synthetic noise would not allow much anyway.
    """
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError("expected a 2-D uint8 or uint16 array")
    rows, cols = arr.shape
    nbytes = arr.dtype.itemsize
    # Big-endian view -> byte plane 0 is the most significant byte (segment order).
    planes = np.ascontiguousarray(arr.astype(f">u{nbytes}", copy=False)).view(np.uint8)
    planes = planes.reshape(rows, cols, nbytes)
    full, rem = divmod(cols, 128)
    width = full * 129 + (rem + 1 if rem else 0)
    segments = []
    for b in range(nbytes):
        plane = planes[:, :, b]
        out = np.empty((rows, width), dtype=np.uint8)
        if full:
            blk = out[:, : full * 129].reshape(rows, full, 129)
            blk[:, :, 0] = 127
            blk[:, :, 1:] = plane[:, : full * 128].reshape(rows, full, 128)
        if rem:
            out[:, full * 129] = rem - 1
            out[:, full * 129 + 1 :] = plane[:, full * 128 :]
        seg = out.tobytes()
        if len(seg) % 2:
            seg += b"\x00"
        segments.append(seg)
    offsets = [64]
    for seg in segments[:-1]:
        offsets.append(offsets[-1] + len(seg))
    header = struct.pack(f"<{1 + len(offsets)}L", len(segments), *offsets)
    header += b"\x00" * (64 - len(header))
    return header + b"".join(segments)


def _jpeg_encode(arr8: np.ndarray) -> bytes:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow is a project dependency
        raise RuntimeError("the 'jpeg' syntax needs Pillow to produce JPEG bytes") from exc
    buf = io.BytesIO()
    Image.fromarray(arr8, mode="L").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _set_pixels(ds: Dataset, arr: np.ndarray, tsyntax: UID) -> None:
    """Encode ``arr`` (uint16, 12 bits used) into ``ds.PixelData`` for ``tsyntax``."""
    if tsyntax in _NATIVE_LE:
        ds.add_new(0x7FE00010, "OW", arr.tobytes())
    elif tsyntax == ExplicitVRBigEndian:
        # pydicom writes OW values verbatim, so the byte swap must be done here.
        ds.add_new(0x7FE00010, "OW", arr.astype(">u2").tobytes())
    elif tsyntax == RLELossless:
        ds.add_new(0x7FE00010, "OB", encapsulate([rle_encode_frame(arr)]))
        ds["PixelData"].is_undefined_length = True
    elif tsyntax == JPEGBaseline8Bit:
        arr8 = (arr >> 4).astype(np.uint8)
        ds.add_new(0x7FE00010, "OB", encapsulate([_jpeg_encode(arr8)]))
        ds["PixelData"].is_undefined_length = True
    else:  # pragma: no cover - resolve_syntax() guards this
        raise ValueError(f"unsupported transfer syntax {tsyntax}")


# -------------------------------------------------------------------------- headers


def _ds(value: float) -> str:
    """Format a number as a short DS string."""
    return f"{value:.6g}"


def _derived_uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _base_dataset(
    *,
    study_uid: str,
    series_uid: str,
    patient_id: str,
    patient_name: str,
    modality: str,
    rows: int,
    cols: int,
    series_number: int,
    series_description: str,
    study_description: str,
    tsyntax: UID,
) -> FileDataset:
    """Header for one series. Per-image attributes are filled by :func:`_set_instance`."""
    modality = modality.upper()
    if modality not in ("MR", "CT"):
        raise ValueError(f"modality must be 'MR' or 'CT', not {modality!r}")
    ct = modality == "CT"
    sop_class = CTImageStorage if ct else MRImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID("1.2.3")  # replaced per instance
    meta.TransferSyntaxUID = tsyntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION

    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\x00" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = "1.2.3"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = _STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = _STUDY_TIME
    ds.AccessionNumber = "A" + study_uid.replace(".", "")[-12:]
    ds.Modality = modality
    ds.Manufacturer = "MagickBox"
    ds.InstitutionName = "MagickBox Test Site"
    ds.ReferringPhysicianName = ""
    ds.StationName = "MBGEN"
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "dicomgen"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST" if ct else "HEAD"
    thickness = 2.5 if ct else 3.0
    ds.SliceThickness = _ds(thickness)
    if ct:
        ds.KVP = "120"
        ds.DataCollectionDiameter = "500"
        ds.ReconstructionDiameter = "350"
        ds.XRayTubeCurrent = 200
        ds.ConvolutionKernel = "STANDARD"
    else:
        t2 = "t2" in series_description.lower()
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "4000" if t2 else "500"
        ds.EchoTime = "90" if t2 else "12"
        ds.ImagingFrequency = "127.74"
        ds.ImagedNucleus = "1H"
        ds.EchoNumbers = "1"
        ds.MagneticFieldStrength = "3"
        ds.SpacingBetweenSlices = _ds(thickness)
        ds.EchoTrainLength = 1
        ds.FlipAngle = "90"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = ["0", "0", "0"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = _derived_uid(study_uid, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = "0"

    jpeg = tsyntax == JPEGBaseline8Bit
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    fov = 350.0 if ct else 240.0
    spacing = _ds(fov / max(rows, cols))
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 8 if jpeg else 16
    ds.BitsStored = 8 if jpeg else 12
    ds.HighBit = 7 if jpeg else 11
    ds.PixelRepresentation = 0
    scale = 16 if jpeg else 1  # the JPEG variant stores value >> 4
    if ct:
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = str(scale)
        ds.RescaleType = "HU"
    else:
        ds.WindowCenter = _ds(1200 / scale)
        ds.WindowWidth = _ds(2400 / scale)
    if jpeg:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    return ds


def _set_instance(
    ds: FileDataset, *, sop_uid: str, instance: int, pixels: np.ndarray, tsyntax: UID
) -> None:
    """Fill in the per-image attributes and pixel data of a series header."""
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = instance
    thickness = float(ds.SliceThickness)
    fov = float(ds.PixelSpacing[0]) * ds.Columns
    z = _ds((instance - 1) * thickness)
    half = _ds(-fov / 2)
    ds.ImagePositionPatient = [half, half, z]
    ds.SliceLocation = z
    _set_pixels(ds, pixels, tsyntax)


# ------------------------------------------------------------------ fast writing

# Attributes that _set_instance changes; every other element is encoded once per series.
_VARYING_TAGS = frozenset({0x00080018, 0x00200013, 0x00200032, 0x00201041, 0x7FE00010})


def _explicit_le_short(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


class _SeriesEncoder:
    """Encodes the images of one series to Part 10 bytes, identical to ``dcmwrite`` output.

    For the deflated syntax, the inflated content is identical. The compressed bytes
    differ because zlib runs at level 1, which is about 5x faster than the default.

    pydicom encodes the elements that stay fixed (file meta included) into byte chunks
    once. For each image, only the :data:`_VARYING_TAGS` elements and the
    MediaStorageSOPInstanceUID are encoded and spliced in between the chunks. This is
    about 3x faster than calling ``dcmwrite`` for every file.
    """

    def __init__(self, template: FileDataset):
        tsyntax = UID(template.file_meta.TransferSyntaxUID)
        self._implicit = tsyntax.is_implicit_VR
        self._little = tsyntax.is_little_endian
        self._deflated = tsyntax.is_deflated
        self._charset = template.get("SpecificCharacterSet", "ISO_IR 6")
        self._varying: list[int] = []
        self._chunks: list[bytes] = []
        current = Dataset()
        for elem in template:  # iterates in tag order
            if elem.tag in _VARYING_TAGS:
                self._chunks.append(self._encode_dataset(current))
                self._varying.append(elem.tag)
                current = Dataset()
            else:
                current.add(elem)
        self._chunks.append(self._encode_dataset(current))

        # File meta (always Explicit VR Little Endian): pydicom adds whatever is
        # missing and we keep the bytes on either side of MediaStorageSOPInstanceUID.
        buf = DicomBytesIO()
        buf.is_implicit_VR, buf.is_little_endian = False, True
        write_file_meta_info(buf, FileMetaDataset(template.file_meta), enforce_standard=True)
        raw = buf.getvalue()
        start = raw.index(b"\x02\x00\x03\x00UI")  # (0002,0003), after the group length
        (length,) = struct.unpack_from("<H", raw, start + 6)
        self._meta_head, self._meta_tail = raw[12:start], raw[start + 8 + length :]
        preamble = template.preamble or b"\x00" * 128
        self._prefix = preamble + b"DICM"

    def _encode_dataset(self, ds: Dataset) -> bytes:
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = self._implicit, self._little
        write_dataset(fp, ds, parent_encoding=self._charset)
        return fp.getvalue()

    def encode(self, ds: FileDataset) -> bytes:
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = self._implicit, self._little
        chunks = self._chunks
        fp.write(chunks[0])
        for i, tag in enumerate(self._varying, start=1):
            write_data_element(fp, ds[tag], self._charset)
            fp.write(chunks[i])
        body = fp.getvalue()
        if self._deflated:  # PS3.5 A.5, as dcmwrite does but at the fastest level
            compressor = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
            body = compressor.compress(body) + compressor.flush()
            if len(body) % 2:
                body += b"\x00"

        uid = ds.file_meta.MediaStorageSOPInstanceUID.encode("ascii")
        if len(uid) % 2:
            uid += b"\x00"
        meta = self._meta_head + _explicit_le_short(2, 3, b"UI", uid) + self._meta_tail
        group_length = _explicit_le_short(2, 0, b"UL", struct.pack("<L", len(meta)))
        return b"".join((self._prefix, group_length, meta, body))


# ----------------------------------------------------------------------- public API


def make_dataset(
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str | None = None,
    patient_id: str = "MB-0001",
    patient_name: str = "Test^Patient",
    modality: str = "MR",
    rows: int = 256,
    cols: int = 256,
    instance: int = 1,
    series_number: int = 1,
    series_description: str = "t1",
    study_description: str = "MagickBox test",
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int | None = None,
) -> FileDataset:
    """Build one complete MR/CT image (file meta included) ready for :func:`save_dataset`.

    ``transfer_syntax`` is a UID or a short name from :data:`SYNTAXES`. If ``seed`` is
    given, the pixels are reproducible, and so is ``sop_uid`` when it is not passed.
    """
    tsyntax = resolve_syntax(transfer_syntax)
    if sop_uid is None:
        sop_uid = (
            generate_uid() if seed is None else _derived_uid(series_uid, instance, seed, "sop")
        )
    ds = _base_dataset(
        study_uid=study_uid,
        series_uid=series_uid,
        patient_id=patient_id,
        patient_name=patient_name,
        modality=modality,
        rows=rows,
        cols=cols,
        series_number=series_number,
        series_description=series_description,
        study_description=study_description,
        tsyntax=tsyntax,
    )
    phantom = _Phantom(rows, cols, ds.Modality, np.random.default_rng(seed))
    _set_instance(
        ds, sop_uid=sop_uid, instance=instance, pixels=phantom.image(instance), tsyntax=tsyntax
    )
    return ds


def save_dataset(ds: Dataset, path: str | Path) -> None:
    """Write ``ds`` as a DICOM Part 10 file (preamble + file meta) in its transfer syntax."""
    dcmwrite(path, ds, enforce_file_format=True)


def dataset_bytes(ds: Dataset) -> bytes:
    """``ds`` encoded as a DICOM Part 10 byte stream."""
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _child_seed(seed: int | None, *path: int) -> int | None:
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


def write_study(
    dest: Path,
    *,
    n_images: int,
    study_uid: str | None = None,
    series: int = 1,
    modality: str = "MR",
    rows: int = 256,
    cols: int = 256,
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_id: str = "MB-0001",
    patient_name: str = "Test^Patient",
    study_description: str = "MagickBox test",
    seed: int | None = None,
) -> StudyInfo:
    """Write one study of ``n_images`` files, ``dest/<SOP Instance UID>.dcm``.

    The images are spread as evenly as possible over ``series`` series (the first
    series get the extra images), so ``series`` must not be larger than
    ``n_images``. Given a ``seed``, UIDs and pixels are reproducible.
    """
    if n_images < 1:
        raise ValueError("n_images must be >= 1")
    if not 1 <= series <= n_images:
        raise ValueError("series must be between 1 and n_images")
    tsyntax = resolve_syntax(transfer_syntax)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if study_uid is None:
        study_uid = generate_uid() if seed is None else _derived_uid("study", seed)
    info = StudyInfo(study_uid=study_uid, patient_id=patient_id, transfer_syntax=str(tsyntax))
    descriptions = ("t1", "t2", "flair", "dwi") if modality.upper() == "MR" else ("axial",)
    base, extra = divmod(n_images, series)
    for s in range(series):
        count = base + (1 if s < extra else 0)
        series_seed = _child_seed(seed, s)
        series_uid = generate_uid() if seed is None else _derived_uid(study_uid, "series", s, seed)
        ds = _base_dataset(
            study_uid=study_uid,
            series_uid=series_uid,
            patient_id=patient_id,
            patient_name=patient_name,
            modality=modality,
            rows=rows,
            cols=cols,
            series_number=s + 1,
            series_description=descriptions[s % len(descriptions)],
            study_description=study_description,
            tsyntax=tsyntax,
        )
        phantom = _Phantom(rows, cols, ds.Modality, np.random.default_rng(series_seed))
        info.series_uids.append(series_uid)
        encoder: _SeriesEncoder | None = None
        for instance in range(1, count + 1):
            sop_uid = (
                generate_uid() if seed is None else _derived_uid(series_uid, instance, seed, "sop")
            )
            _set_instance(
                ds,
                sop_uid=sop_uid,
                instance=instance,
                pixels=phantom.image(instance),
                tsyntax=tsyntax,
            )
            if encoder is None:
                encoder = _SeriesEncoder(ds)
            path = dest / f"{sop_uid}.dcm"
            path.write_bytes(encoder.encode(ds))
            info.sop_uids.append(sop_uid)
            info.paths.append(path)
    return info


def write_corpus(
    dest: Path,
    *,
    n_studies: int,
    images_per_study: int,
    series_per_study: int = 1,
    modality: str = "MR",
    rows: int = 256,
    cols: int = 256,
    transfer_syntax: str | Sequence[str] = ExplicitVRLittleEndian,
    patient_prefix: str = "MB-",
    seed: int | None = None,
) -> list[StudyInfo]:
    """Write ``n_studies`` studies, each in its own sub-folder ``dest/study_NNNN``.

    Study ``i`` belongs to patient ``f"{patient_prefix}{i + 1:04d}"``. If
    ``transfer_syntax`` is a list of syntaxes, study ``i`` uses item ``i % len(list)``.
    """
    dest = Path(dest)
    if isinstance(transfer_syntax, str):
        syntaxes = [transfer_syntax]
    else:
        syntaxes = list(transfer_syntax)
        if not syntaxes:
            raise ValueError("transfer_syntax list is empty")
    studies = []
    for i in range(n_studies):
        studies.append(
            write_study(
                dest / f"study_{i:04d}",
                n_images=images_per_study,
                series=series_per_study,
                modality=modality,
                rows=rows,
                cols=cols,
                transfer_syntax=syntaxes[i % len(syntaxes)],
                patient_id=f"{patient_prefix}{i + 1:04d}",
                patient_name=f"Test^Patient{i + 1:04d}",
                seed=_child_seed(seed, 1_000_000 + i),
            )
        )
    return studies


# ------------------------------------------------------------------ hostile input

#: Kinds accepted by :func:`malformed_dataset_bytes`.
MALFORMED_KINDS = ("overlong", "overlong_pixel", "unterminated_sequence", "bad_meta_length")


def _small_header_bytes(*, pixels: bool) -> bytes:
    """Valid Explicit VR LE Part 10 bytes of a small image header (pixels optional)."""
    ds = make_dataset(
        study_uid=_derived_uid("malformed-study"),
        series_uid=_derived_uid("malformed-series"),
        rows=16,
        cols=16,
        seed=0,
    )
    if not pixels:
        del ds.PixelData
    return dataset_bytes(ds)


def malformed_dataset_bytes(kind: str = "overlong") -> bytes:
    """A DICOM Part 10 byte stream that a strict parser must reject.

    Every variant starts with a valid preamble, ``DICM`` prefix and file meta, and
    carries the usual patient/study/series/SOP attributes, so it looks real to
    anyone who only sniffs the first bytes.

    * ``"overlong"``: the last header element, (0020,4000) LT, claims 0xFFF0 bytes,
      but only a few follow.
    * ``"overlong_pixel"``: (7FE0,0010) OW claims 0x7FFFFFF0 bytes, but only 32 follow.
    * ``"unterminated_sequence"``: an undefined-length SQ whose item and sequence
      delimiters never come.
    * ``"bad_meta_length"``: the File Meta group length is 0x7FFFFF00 (far beyond
      the end), and a stray group-0002 element with the invalid VR ``ZZ`` is
      appended at the end.
    """
    if kind == "overlong":
        tail = b"\x20\x00\x00\x40" + b"LT" + struct.pack("<H", 0xFFF0) + b"truncated!"
        return _small_header_bytes(pixels=False) + tail
    if kind == "overlong_pixel":
        tail = b"\xe0\x7f\x10\x00" + b"OW\x00\x00" + struct.pack("<L", 0x7FFFFFF0)
        return _small_header_bytes(pixels=False) + tail + bytes(range(32))
    if kind == "unterminated_sequence":
        # (0040,0275) Request Attributes Sequence, SQ, undefined length; one
        # undefined-length item holding one element; no delimiters follow.
        tail = b"\x40\x00\x75\x02" + b"SQ\x00\x00" + b"\xff\xff\xff\xff"
        tail += b"\xfe\xff\x00\xe0" + b"\xff\xff\xff\xff"
        tail += b"\x40\x00\x09\x10" + b"SH" + struct.pack("<H", 4) + b"SPS1"
        return _small_header_bytes(pixels=False) + tail
    if kind == "bad_meta_length":
        data = bytearray(_small_header_bytes(pixels=False))
        # (0002,0000) UL sits right after preamble + "DICM": tag(4) VR(2) len(2) value(4)
        if data[132:138] != b"\x02\x00\x00\x00UL":
            raise AssertionError("unexpected file meta layout")
        data[140:144] = struct.pack("<L", 0x7FFFFF00)
        return bytes(data) + b"\x02\x00\x10\x00" + b"ZZ" + struct.pack("<H", 0xFFFF)
    raise ValueError(f"unknown kind {kind!r}; choose from {MALFORMED_KINDS}")


def truncated_file(
    path: str | Path, *, source: str | Path | None = None, keep: float | int = 0.5
) -> Path:
    """Write a DICOM file cut short to ``path`` and return ``path``.

    The content is the file ``source`` (or a freshly generated 256x256 MR image if
    ``source`` is None), cut after ``keep`` of its bytes. ``keep`` is a fraction
    (float < 1) or a byte count (int). With the default of one half, the cut falls
    inside the pixel data, so the header still parses but the data element is short.
    ``source`` may be ``path`` itself, which truncates that file in place.
    """
    if source is None:
        data = dataset_bytes(
            make_dataset(
                study_uid=_derived_uid("truncated-study"),
                series_uid=_derived_uid("truncated-series"),
                seed=0,
            )
        )
    else:
        data = Path(source).read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else int(keep)
    if not 0 < n < len(data):
        raise ValueError(f"keep={keep!r} does not cut the {len(data)}-byte file")
    path = Path(path)
    path.write_bytes(data[:n])
    return path


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m magickbox.testing.dicomgen",
        description="Write a synthetic DICOM corpus: OUT/study_NNNN/<SOP UID>.dcm",
    )
    parser.add_argument("out", type=Path, help="output folder (created if missing)")
    parser.add_argument("--studies", type=int, default=1, help="number of studies")
    parser.add_argument("--images", type=int, default=100, help="images per study")
    parser.add_argument("--series", type=int, default=1, help="series per study")
    parser.add_argument("--modality", choices=["MR", "CT"], default="MR")
    parser.add_argument("--rows", type=int, default=None, help="default 256 (MR) / 512 (CT)")
    parser.add_argument("--cols", type=int, default=None, help="default 256 (MR) / 512 (CT)")
    parser.add_argument(
        "--syntax",
        choices=[*SYNTAXES, "mixed"],
        default="explicit",
        help="transfer syntax; 'mixed' cycles through all of them study by study",
    )
    parser.add_argument("--seed", type=int, default=None, help="reproducible output")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)

    default_size = 512 if args.modality == "CT" else 256
    syntax: str | list[str] = list(SYNTAXES) if args.syntax == "mixed" else args.syntax
    start = time.perf_counter()
    studies = write_corpus(
        args.out,
        n_studies=args.studies,
        images_per_study=args.images,
        series_per_study=args.series,
        modality=args.modality,
        rows=args.rows or default_size,
        cols=args.cols or default_size,
        transfer_syntax=syntax,
        seed=args.seed,
    )
    elapsed = time.perf_counter() - start
    if not args.quiet:
        n_files = sum(s.n_images for s in studies)
        n_bytes = sum(p.stat().st_size for s in studies for p in s.paths)
        rate = n_files / elapsed if elapsed > 0 else float("inf")
        print(
            f"wrote {n_files} files in {len(studies)} studies "
            f"({n_bytes / 1e6:.1f} MB) to {args.out} in {elapsed:.2f}s ({rate:.0f} files/s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
