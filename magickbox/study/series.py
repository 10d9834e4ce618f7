"""A series summary built file by file, in the shape of the original's
``views/raw/<StudyInstanceUID>/<SeriesInstanceUID>.json``.

The summary is a flat JSON object: series-level tags by keyword (the value of the
first file that has the tag), ``NumFiles`` and ``ClassifyType``. It is what
:mod:`magickbox.study.classify` rules are evaluated on.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import IS, DSdecimal, DSfloat, PersonName

from magickbox.errors import Invalid
from magickbox.study.classify import Classifier, RuleSet, default_classifier

#: Series-level tags a summary keeps (the first value seen wins).
SERIES_TAGS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Manufacturer",
    "ManufacturerModelName",
    "Modality",
    "PatientID",
    "PatientName",
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
            value = json_value(ds.get(keyword))
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
