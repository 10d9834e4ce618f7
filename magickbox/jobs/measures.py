"""Measures: the numbers (and short texts) a bucket reports about a job in measures.json.

A bucket writes a flat JSON object, or a list of such rows, to ``$MB_MEASURES`` (or
``OUTPUT/measures.json``). When the job ends the box checks it, keeps it per job in the
``job_measures`` table, and serves it: getScratch's ``measures``, ``db.php`` and the
table of a bucket's jobs (``/api/v1/measures``, JSON or CSV). A broken file never fails
a job: the problem becomes one line in its processing.log.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from magickbox.errors import BadMeasures
from magickbox.jobfolder import MEASURES_JSON, JobFolder
from magickbox.jobs.db import Job, JobMeasures
from magickbox.study.models import SeriesRow

MAX_BYTES = 4 << 20  # a measures file is a table of numbers, not a result archive
MAX_ROWS = 10_000
MAX_KEYS = 1_000
MAX_KEY_CHARS = 200
MAX_TEXT_CHARS = 10_000
BIGGEST_INT = 2**63  # what the JSON encoder (and a database column) can hold

Value = int | float | str | None
Row = dict[str, Value]


@dataclass(frozen=True)
class Measures:
    """A checked measures.json: ``data`` as the bucket wrote it, ``rows`` as a list."""

    data: dict[str, Value] | list[Row]
    rows: list[Row]


# -- checking ----------------------------------------------------------------------------


def parse(raw: bytes) -> Measures:
    """Check the bytes of a measures.json; BadMeasures names the first problem by place."""
    if len(raw) > MAX_BYTES:
        raise BadMeasures(f"{MEASURES_JSON} is larger than {MAX_BYTES} bytes")
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadMeasures(f"{MEASURES_JSON} is not JSON: {exc}") from None
    except RecursionError:  # nested deeper than Python's parser goes: not flat, surely
        raise BadMeasures(f"{MEASURES_JSON} is nested far too deep") from None
    if isinstance(data, dict):
        return Measures(data, [_row(data, "")])
    if isinstance(data, list):
        if len(data) > MAX_ROWS:
            raise BadMeasures(f"{MEASURES_JSON} has {len(data)} rows; at most {MAX_ROWS}")
        rows = [_row(item, f"[{i}]") for i, item in enumerate(data)]
        return Measures(rows, rows)
    raise BadMeasures(
        f"{MEASURES_JSON} must be an object of measures or a list of them, not {_kind(data)}"
    )


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON knows")


def _row(item: object, place: str) -> Row:
    if not isinstance(item, dict):
        raise BadMeasures(f"{MEASURES_JSON}{place} must be an object, not {_kind(item)}")
    if len(item) > MAX_KEYS:
        raise BadMeasures(f"{MEASURES_JSON}{place} has {len(item)} measures; at most {MAX_KEYS}")
    for key, value in item.items():
        _check(key, value, f"{place}[{json.dumps(key)}]")
    return item


def _check(key: str, value: object, place: str) -> None:
    if not key.strip() or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise BadMeasures(
            f"{MEASURES_JSON}{place}: a name must be printable text of 1 to "
            f"{MAX_KEY_CHARS} characters"
        )
    if isinstance(value, bool | dict | list):
        raise BadMeasures(
            f"{MEASURES_JSON}{place} is {_kind(value)}; a measure is a number, a text or null"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise BadMeasures(f"{MEASURES_JSON}{place} is not a finite number")
    if isinstance(value, int) and not -BIGGEST_INT <= value < BIGGEST_INT:
        raise BadMeasures(f"{MEASURES_JSON}{place} is a whole number beyond 64 bits")
    if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
        raise BadMeasures(f"{MEASURES_JSON}{place} is longer than {MAX_TEXT_CHARS} characters")


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    names = {dict: "an object", list: "a list", str: "a text", type(None): "null"}
    return names.get(type(value), "a number")


# -- keeping -----------------------------------------------------------------------------


class MeasuresStore:
    """The ``job_measures`` table: written when a job ends, read by every front."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def take(self, scratchdir: str, folder: JobFolder) -> str | None:
        """Read, check and keep the job's measures.json; the log line saying what happened
        (None when the bucket wrote none). Never raises for a bad file."""
        try:
            return self.reread(scratchdir, folder)
        except BadMeasures as exc:
            return f"{exc}; no measures kept"

    def reread(self, scratchdir: str, folder: JobFolder) -> str | None:
        """:meth:`take`, but a bad or unreadable file raises BadMeasures."""
        try:
            found = folder.read_measures(MAX_BYTES)
        except OSError as exc:
            raise BadMeasures(f"{MEASURES_JSON} could not be read: {exc}") from None
        if found is None:
            return None
        measures = parse(found)
        self.put(scratchdir, measures)
        names = len({k for row in measures.rows for k in row})
        return f"{MEASURES_JSON}: kept {names} measures in {len(measures.rows)} rows"

    def put(self, scratchdir: str, measures: Measures) -> None:
        data = orjson.dumps(measures.data).decode()
        with self.sessions.begin() as s:
            s.execute(delete(JobMeasures).where(JobMeasures.scratchdir == scratchdir))
            s.add(JobMeasures(scratchdir=scratchdir, data=data, nrows=len(measures.rows),
                              stored_at=time.time()))  # fmt: skip

    def forget(self, s: Session, scratchdir: str) -> None:
        """Drop a job's measures inside the caller's transaction (a delete or a re-run)."""
        s.execute(delete(JobMeasures).where(JobMeasures.scratchdir == scratchdir))

    def get(self, scratchdir: str) -> Any:
        """The job's measures as the bucket wrote them, or None."""
        with self.sessions() as s:
            text = s.scalar(select(JobMeasures.data).where(JobMeasures.scratchdir == scratchdir))
        return None if text is None else orjson.loads(text)

    def of_jobs(self, bucket: str | None) -> list[tuple[Job, Any]]:
        """Every job (of ``bucket``), oldest first, with its measures or None."""
        query = select(Job, JobMeasures.data).outerjoin(
            JobMeasures, JobMeasures.scratchdir == Job.scratchdir
        )
        if bucket is not None:
            query = query.where(Job.bucket == bucket)
        with self.sessions() as s:
            rows = s.execute(query.order_by(Job.id)).all()
        return [(job, None if text is None else orjson.loads(text)) for job, text in rows]

    def series_types(self, bucket: str | None) -> dict[str, list[str]]:
        """Per job (of ``bucket``): the ClassifyTypes of its series, each once, in the
        order of the series numbers."""
        query = select(SeriesRow.scratchdir, SeriesRow.classify_type).order_by(
            SeriesRow.scratchdir, SeriesRow.series_number, SeriesRow.id
        )
        if bucket is not None:
            query = query.join(Job, Job.scratchdir == SeriesRow.scratchdir).where(
                Job.bucket == bucket
            )
        types: dict[str, dict[str, None]] = {}
        with self.sessions() as s:
            for scratchdir, text in s.connection().execute(query):
                types.setdefault(scratchdir, {}).update(dict.fromkeys(json.loads(text or "[]")))
        return {scratchdir: list(names) for scratchdir, names in types.items()}


# -- the table of a bucket's jobs --------------------------------------------------------

Columns = tuple[tuple[str, Callable[[Job], Value]], ...]
# The job's own columns, first in every row of /api/v1/measures.
JOB_COLUMNS: Columns = (
    ("jobname", lambda job: job.jobname),
    ("scratchdir", lambda job: job.scratchdir),
    ("state", lambda job: job.state),
)
TYPES_SEPARATOR = ";"  # between a job's series types in one cell


def identity_columns(series_types: dict[str, list[str]]) -> Columns:
    """The columns after JOB_COLUMNS in the box's table: who the study is and what it had
    (``series_types``: per scratchdir, from :meth:`MeasuresStore.series_types`)."""
    return (
        ("PatientID", lambda job: job.patient_id),
        ("StudyDate", lambda job: job.study_date),
        ("series_types", lambda job: TYPES_SEPARATOR.join(series_types.get(job.scratchdir, ()))),
    )
ROW_COLUMN = "row"  # which row of a job's list, when some job has several


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[dict[str, Value]]


def table(jobs: Iterable[tuple[Job, Any]], columns: Columns = JOB_COLUMNS) -> Table:
    """One row per job (per measures row for a job that wrote a list): ``columns`` of the
    job, then every measure any of them has as a column, in the order the measures first
    appear.

    A measure named like a job column (e.g. ``state``) becomes ``measures.state``.
    """
    fixed = [name for name, _ in columns]
    pairs = [(job, _as_rows(data)) for job, data in jobs]
    several = any(len(rows) > 1 for _job, rows in pairs)
    names: dict[str, None] = {}
    for _job, rows in pairs:
        for row in rows:
            names.update(dict.fromkeys(_column(k, fixed) for k in row))
    out: list[dict[str, Value]] = []
    for job, rows in pairs:
        base = {name: get(job) for name, get in columns}
        for i, row in enumerate(rows or [{}]):
            line = {**base, **({ROW_COLUMN: i} if several else {})}
            line.update({_column(k, fixed): v for k, v in row.items()})
            out.append(line)
    header = fixed + ([ROW_COLUMN] if several else []) + list(names)
    return Table(header, out)


def _as_rows(data: Any) -> Sequence[Row]:
    if isinstance(data, dict):
        return [data]
    return data if isinstance(data, list) else []


def _column(name: str, fixed: list[str]) -> str:
    return f"measures.{name}" if name in fixed or name == ROW_COLUMN else name
