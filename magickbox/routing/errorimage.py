"""``sendErrorAsDcm``: the end of a job's processing.log as a DICOM image in its study.

A PACS user sees why a job failed next to the images it was about: a secondary-capture
image (8-bit grey text) whose patient and study come from the job's INPUT.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from magickbox.jobfolder import JobFolder
from magickbox.routing.select import dicom_files

SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
LINES = 48
COLUMNS = 100
STUDY_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)


def log_tail(folder: JobFolder, lines: int = LINES, columns: int = COLUMNS) -> list[str]:
    """The last ``lines`` lines of the log, long lines cut to ``columns`` characters."""
    text = folder.log_tail()
    if text is None:
        text = "(no processing.log)"
    tail = text.splitlines()[-lines:] or ["(processing.log is empty)"]
    return [line.expandtabs(4)[:columns] for line in tail]


def render(lines: list[str], title: str) -> np.ndarray:
    """White text on black, one row per line, as an 8-bit array."""
    font = ImageFont.load_default(size=14)
    line_h, char_w = 18, 9
    width = 16 + char_w * COLUMNS
    height = 16 + line_h * (len(lines) + 2)
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    draw.text((8, 8), title, fill=255, font=font)
    for i, line in enumerate(lines, start=2):
        draw.text((8, 8 + i * line_h), line, fill=220, font=font)
    return np.asarray(image, dtype=np.uint8)


def study_of(input_dir: Path) -> Dataset:
    """Patient and study tags of the first DICOM file of INPUT (empty if there is none)."""
    study = Dataset()
    for item in dicom_files(input_dir)[:1]:
        source = dcmread(item.path, stop_before_pixels=True)
        for keyword in STUDY_TAGS:
            if keyword in source:
                setattr(study, keyword, source[keyword].value)
    return study


def write_error_image(job_dir: Path, target: Path, scratchdir: str) -> Path:
    """Make the image of ``job_dir``'s log at ``target`` (a Part 10 file) and return it."""
    folder = JobFolder(job_dir)
    pixels = render(log_tail(folder), f"MagickBox {scratchdir}: {folder.log.name}")
    ds = study_of(folder.input)
    now = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    ds.StudyInstanceUID = ds.get("StudyInstanceUID") or generate_uid()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 9999
    ds.InstanceNumber = 1
    ds.SeriesDescription = "MagickBox processing log"
    ds.ContentDate, ds.ContentTime = now
    ds.SeriesDate, ds.SeriesTime = now
    for keyword in ("PatientName", "PatientID", "StudyDate", "StudyTime", "StudyID"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    ds.save_as(partial, enforce_file_format=True)
    partial.replace(target)
    return target
