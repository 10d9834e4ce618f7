"""A series summary built file by file, in the shape of the original's
``views/raw/<StudyInstanceUID>/<SeriesInstanceUID>.json``.

The summary is a flat JSON object: series-level tags by keyword (the value of the
first file that has the tag), ``NumFiles`` and ``ClassifyType``. It is what
:mod:`magickbox.study.classify` rules are evaluated on.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path, PurePosixPath
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import IS, DSdecimal, DSfloat, PersonName

from magickbox.errors import Invalid
from magickbox.study.classify import Classifier, RuleSet, default_classifier

log = logging.getLogger(__name__)

#: Series-level tags a summary keeps (the first value seen wins).
SERIES_TAGS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Manufacturer",
    "ManufacturerModelName",
    "Modality",
    "PatientID",
    "PatientName",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "SeriesDescription",
    "SeriesNumber",
    "ProtocolName",
    "BodyPartExamined",
    "EchoTime",
    "RepetitionTime",
    "InversionTime",
    "FlipAngle",
    "MagneticFieldStrength",
    "MRAcquisitionType",
    "SliceThickness",
    "PixelSpacing",
    "Rows",
    "Columns",
    "ImageOrientationPatient",
    "ImageType",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "SequenceName",
    "ConvolutionKernel",
    "KVP",
)


def json_value(value: Any) -> Any:
    """A pydicom element value as plain JSON: numbers stay numbers, names become text."""
    if isinstance(value, MultiValue | list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, DSfloat | DSdecimal):
        return float(value)
    if isinstance(value, IS):
        return int(value)
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if isinstance(value, int | float | str) or value is None:
        return value
    return str(value)


class SeriesView:
    """The summary of one series, fed one dataset at a time with :meth:`add`."""

    def __init__(self, tags: tuple[str, ...] = SERIES_TAGS):
        self.tags = tags
        self.num_files = 0
        self.values: dict[str, Any] = {}

    @property
    def study_uid(self) -> str | None:
        return self.values.get("StudyInstanceUID")

    @property
    def series_uid(self) -> str | None:
        return self.values.get("SeriesInstanceUID")

    def add(self, ds: Dataset) -> None:
        """Count one file and keep the series tags not seen in an earlier file."""
        uid = ds.get("SeriesInstanceUID")
        if self.series_uid is not None and uid is not None and str(uid) != self.series_uid:
            raise Invalid(f"file of series {uid} added to the view of series {self.series_uid}")
        self.num_files += 1
        for keyword in self.tags:
            if keyword in self.values:
                continue
            found = ds.get(keyword)
            if found is None:  # most files of a series: the tags its first file lacked
                continue
            value = json_value(found)
            if value not in (None, "", []):  # an empty value may be filled by a later file
                self.values[keyword] = value

    def summary(self) -> dict[str, Any]:
        """What classification rules see: the tags plus ``NumFiles``."""
        return {**self.values, "NumFiles": self.num_files}

    def to_json(self, rules: Classifier | RuleSet | None = None) -> dict[str, Any]:
        """The ``views/raw`` object, ``ClassifyType`` by ``rules`` (default: the shipped set)."""
        if rules is None:
            rules = default_classifier()
        elif isinstance(rules, RuleSet):
            rules = Classifier(rules)
        summary = self.summary()
        summary["ClassifyType"] = rules.classify(summary)
        return summary

    def relpath(self) -> PurePosixPath:
        """``views/raw/<StudyInstanceUID>/<SeriesInstanceUID>.json``."""
        if not self.study_uid or not self.series_uid:
            raise Invalid("series view has no study or series UID yet")
        return PurePosixPath("views", "raw", self.study_uid, f"{self.series_uid}.json")


# -------------------------------------------------------------- from the receiver


def _tag_numbers(keywords: tuple[str, ...]) -> frozenset[int]:
    tags = {tag_for_keyword(k) for k in (*keywords, "SpecificCharacterSet")}
    return frozenset(t for t in tags if t is not None)


#: The top-level tags the receiver captures in its one walk over a data set.
VIEW_TAGS: frozenset[int] = _tag_numbers(SERIES_TAGS)
_KEYWORD_TAGS: dict[str, int] = {k: t for k in SERIES_TAGS if (t := tag_for_keyword(k))}
# Tags whose values are text: padding alone means empty (binary ones, such as Rows, not).
_TEXT_TAGS = frozenset(
    t
    for t in _KEYWORD_TAGS.values()
    if dictionary_VR(t) not in ("US", "SS", "UL", "SL", "FL", "FD")
)
SERIES_UID_TAG = 0x0020000E
CHARSET_TAG = 0x00080005


class RawHeader:
    """Captured raw elements that decode only when a view asks (``.get(keyword)``).

    A series view keeps the first value of each tag, so after a series' first file
    nothing but the series UID is decoded: the receiver pays a dictionary lookup per
    tag, not pydicom's conversions.
    """

    def __init__(
        self,
        values: dict[int, bytes],
        vrs: dict[int, str | None],
        implicit: bool,
        little: bool,
    ) -> None:
        self.values = values
        self.vrs = vrs
        self.implicit = implicit
        self.little = little
        self._ds: Dataset | None = None

    @property
    def series_uid(self) -> str:
        raw = self.values.get(SERIES_UID_TAG, b"")
        return raw.decode("ascii", "replace").strip(" \0")

    def dataset(self) -> Dataset:
        if self._ds is None:
            elements: dict[BaseTag, DataElement | RawDataElement] = {}
            for number, value in self.values.items():
                tag = Tag(number)
                vr = self.vrs.get(number)
                elements[tag] = RawDataElement(
                    tag, vr, len(value), value, 0, self.implicit, self.little, True, False
                )
            ds = Dataset(elements)
            ds.set_original_encoding(self.implicit, self.little, None)
            self._ds = ds
        return self._ds

    def get(self, keyword: str) -> Any:
        if keyword == "SeriesInstanceUID":
            return self.series_uid or None
        tag = _KEYWORD_TAGS.get(keyword) or tag_for_keyword(keyword)
        raw = self.values.get(tag) if tag is not None else None
        if not raw or (tag in _TEXT_TAGS and not raw.strip(b" \0")):  # absent or empty
            return None
        try:
            return self.dataset().get(keyword)
        except Exception:  # a value pydicom cannot convert: the view goes without it
            return None


class SeriesSet:
    """The views of the series of one arrival or upload, fed file by file.

    Each series keeps its :class:`SeriesView` and the names of its files (relative to
    the INPUT folder): what a job's series rows and ``views/raw`` are made of.
    Thread-safe: a study's associations may add at the same time.
    """

    def __init__(self) -> None:
        self.views: dict[str, SeriesView] = {}
        self.files: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def add(self, header: RawHeader | Dataset | _Lenient, name: str) -> None:
        """One file: counted in its series' view (files without a series UID are not)."""
        uid = str(header.get("SeriesInstanceUID") or "").strip()
        if not uid:
            return
        with self._lock:
            view = self.views.get(uid)
            if view is None:
                view = self.views[uid] = SeriesView()
                self.files[uid] = []
            view.add(header)  # type: ignore[arg-type]
            self.files[uid].append(name)

    def __len__(self) -> int:
        return len(self.views)

    def items(self) -> list[tuple[SeriesView, list[str]]]:
        with self._lock:
            return [(self.views[uid], list(self.files[uid])) for uid in self.views]


def collect_files(root: Path, files: list[Path] | None = None) -> SeriesSet:
    """Views of DICOM files already on disk (uploads; arrivals a crash left): a header
    read per file, pixel data skipped; files that are not DICOM are left out."""
    if files is None:
        files = []
        for dirpath, _dirs, names in os.walk(root):
            files.extend(Path(dirpath) / n for n in names)
    found = SeriesSet()
    for path in sorted(files):
        header = _header_of(path)
        if header is not None:
            found.add(header, path.relative_to(root).as_posix())
    return found


def _header_of(path: Path) -> RawHeader | _Lenient | None:
    """The view tags of a file on disk: by the receiver's walk for a Part 10 file (a
    fifth of pydicom's cost), else by pydicom; None for what is not DICOM."""
    # Imported here: the receiver imports this module, and this path is the rarer one.
    from magickbox.receive.structure import Malformed, walk_stored_file

    try:
        walked = walk_stored_file(path, None, VIEW_TAGS)
        return RawHeader(walked.values, walked.vrs, walked.implicit, walked.little)
    except (Malformed, OSError, ValueError, EOFError, struct.error):
        pass  # no file meta, an unknown syntax or a broken walk: let pydicom try
    except Exception as exc:  # hostile headers make pydicom raise anything
        log.debug("%s: file meta not read (%s); reading with pydicom", path.name, exc)
    keywords = [*SERIES_TAGS, "SpecificCharacterSet"]
    try:
        # force: a bare data set (no preamble or file meta) is DICOM too; a file that is
        # not gives no SeriesInstanceUID and is left out of the views
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=keywords, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError):
        return None
    except Exception as exc:
        log.warning("%s: not read for its series view: %s", path.name, exc)
        return None
    return _Lenient(ds)


class _Lenient:
    """A dataset whose values that cannot be converted read as missing (as RawHeader's)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def get(self, keyword: str) -> Any:
        try:
            return self.ds.get(keyword)
        except Exception:
            return None


def series_uid_of_file(path: Path) -> str:
    """The SeriesInstanceUID of a DICOM file on disk ("" when it has none or is not DICOM)."""
    header = _header_of(path)
    return str(header.get("SeriesInstanceUID") or "").strip() if header is not None else ""
