"""A DICOM image drawn as a PNG for the page (``?render=png``), with pydicom and Pillow.

Only for looking at results in a browser: the pixels are windowed (the file's own VOI
window when it has one, else its full range) into 8 bits, the first frame of a
multi-frame image is shown, and big images are scaled down. Nothing here is diagnostic.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

from magickbox.errors import Invalid

MAX_SIDE = 1024  # pixels of the longest side of the picture sent to the page


def dicom_png(path: Path, frame: int = 0) -> bytes:
    """PNG bytes of ``frame`` of the DICOM image in ``path``; Invalid says why not.

    Only that frame is decoded (a multi-frame file can be gigabytes of pixels)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, AttributeError, KeyError, ValueError, EOFError) as exc:
        raise Invalid(f"{path.name} is not a DICOM file this box can read: {exc}") from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if not 0 <= frame < frames:
        raise Invalid(f"{path.name} has {frames} frame(s); frame {frame} does not exist")
    try:
        pixels = pixel_array(path, index=frame if frames > 1 else None)
    except (AttributeError, KeyError, ValueError, EOFError) as exc:
        raise Invalid(f"{path.name} has no image this box can draw: {exc}") from exc
    except (NotImplementedError, RuntimeError) as exc:  # a compression without a decoder
        raise Invalid(f"{path.name}: its pixel data cannot be decoded here: {exc}") from exc
    picture = _picture(ds, pixels)
    picture.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _picture(ds: pydicom.Dataset, pixels: np.ndarray) -> Image.Image:
    if pixels.ndim == 3 and pixels.shape[-1] == 3:  # colour (pydicom gives RGB)
        return Image.fromarray(_to_8bit(pixels.astype(np.float64)), "RGB")
    if pixels.ndim != 2:
        raise Invalid(f"pixel data of shape {pixels.shape} is not an image")
    values = apply_modality_lut(pixels, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds)
    grey = _to_8bit(np.asarray(values, dtype=np.float64))
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        grey = 255 - grey  # high values are dark in MONOCHROME1
    return Image.fromarray(grey, "L")


def _to_8bit(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * 255.0 / (high - low)).astype(np.uint8)
