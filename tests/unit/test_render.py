"""jobs/render.py: DICOM drawn as PNG for the page (grey, MONOCHROME1, colour, frames)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from magickbox.errors import Invalid
from magickbox.jobs.render import MAX_SIDE, dicom_png


def write_image(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2") -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    colour = photometric == "RGB"
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    rows, cols = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8 if colour else 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint8 if colour else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def drawn(path: Path, frame: int = 0) -> Image.Image:
    return Image.open(io.BytesIO(dicom_png(path, frame)))


def values(picture: Image.Image) -> list[int]:
    return np.asarray(picture).ravel().tolist()


def test_grey_is_stretched_to_the_full_range(tmp_path: Path) -> None:
    pixels = np.array([[100, 200], [300, 400]])
    picture = drawn(write_image(tmp_path / "a.dcm", pixels))
    assert picture.mode == "L" and picture.size == (2, 2)
    assert values(picture) == [0, 85, 170, 255]


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = np.array([[0, 10]])
    picture = drawn(write_image(tmp_path / "a.dcm", pixels, "MONOCHROME1"))
    assert values(picture) == [255, 0]


def test_colour_stays_colour(tmp_path: Path) -> None:
    pixels = np.zeros((2, 3, 3))
    pixels[0, 0] = (255, 0, 0)
    picture = drawn(write_image(tmp_path / "a.dcm", pixels, "RGB"))
    assert picture.mode == "RGB" and picture.getpixel((0, 0)) == (255, 0, 0)


def test_a_frame_of_many(tmp_path: Path) -> None:
    pixels = np.stack([np.full((2, 2), 5), np.array([[0, 1], [2, 3]])])
    path = write_image(tmp_path / "a.dcm", pixels)
    assert values(drawn(path, 0)) == [0, 0, 0, 0]  # a flat frame: black
    assert values(drawn(path, 1)) == [0, 85, 170, 255]
    with pytest.raises(Invalid, match="2 frame"):
        dicom_png(path, 2)


def test_big_images_are_scaled_down(tmp_path: Path) -> None:
    pixels = np.arange(2048 * 16).reshape(16, 2048) % 4000
    assert drawn(write_image(tmp_path / "a.dcm", pixels)).size == (MAX_SIDE, 8)


def test_not_an_image_is_refused_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(Invalid, match=r"notes\.txt"):
        dicom_png(tmp_path / "notes.txt")
