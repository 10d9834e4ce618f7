"""Series views kept by the box: rows of the series table, ``views/raw`` in the home,
each job's identity, and the home's classification rules.

The receiver (or an upload) fills a :class:`SeriesSet`; when it becomes a job, the job
store asks :meth:`ViewStore.rows` for its series rows (classified with the home's
``classifyRules.json``) and :func:`identity` for the job's patient and study columns,
and adds both in the job's own transaction. After that, :meth:`ViewStore.write_raw`
writes the original's ``views/raw/<StudyUID>/<SeriesUID>.json``: the union of every job
of the study (a series sent twice counts each file once), as the archive holds it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from magickbox.jobs.scratch import write_json_atomic
from magickbox.names import BadName, study_key
from magickbox.study.classify import Classifier, RulesError, RuleSet, load_rules, parse_rules
from magickbox.study.models import SeriesRow
from magickbox.study.series import SeriesSet, SeriesView

log = logging.getLogger(__name__)

#: The identity a job keeps: job column <- view tag.
IDENTITY_TAGS = {
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "accession_number": "AccessionNumber",
    "study_date": "StudyDate",
    "study_description": "StudyDescription",
}
#: Column widths of the identity (jobs/db.py): longer values are cut, never refused.
IDENTITY_WIDTHS = {"patient_id": 128, "patient_name": 256, "accession_number": 64,
                   "study_date": 16, "modalities": 128}  # fmt: skip


def default_rules_text() -> str:
    return resources.files("magickbox.study").joinpath("classifyRules.json").read_text()


class RulesFile:
    """The home's ``classifyRules.json``: read live (edits on disk count at the next job),
    checked strictly when saved through the box, leniently when written by hand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._classifier: Classifier | None = None

    def ensure(self) -> None:
        """At the first start: the shipped default set, to edit."""
        if not self.path.exists():
            self.path.write_text(default_rules_text())

    def text(self) -> str:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return default_rules_text()

    def classifier(self) -> Classifier:
        """The rules as they are on disk now (a broken file: its good types, and a warning)."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if self._classifier is None or stamp != self._stamp:
                self._classifier = Classifier(self._load(stamp is not None))
                self._stamp = stamp
            return self._classifier

    def _load(self, exists: bool) -> RuleSet:
        if not exists:
            return load_rules()
        try:
            return load_rules(self.path, strict=False)
        except RulesError as exc:  # not JSON or not a list: nothing of it can be used
            log.warning("classify rules %s: %s; no series is classified", self.path, exc)
            return RuleSet([], exc.problems)

    def save(self, text: str) -> RuleSet:
        """Check ``text`` strictly (RulesError names every problem), then store it."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RulesError([f"rules: not JSON: {exc}"]) from exc
        rules = parse_rules(data, strict=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(text if text.endswith("\n") else text + "\n")
        os.replace(tmp, self.path)
        return rules


def identity(views: Iterable[dict[str, Any]], study_uid: str = "") -> dict[str, Any]:
    """A job's identity columns from its series views (those of its own study first)."""
    ordered = sorted(views, key=lambda v: v.get("StudyInstanceUID") != study_uid)
    facts: dict[str, Any] = {}
    for column, tag in IDENTITY_TAGS.items():
        value = next((v[tag] for v in ordered if v.get(tag) not in (None, "")), "")
        facts[column] = str(value)[: IDENTITY_WIDTHS.get(column, 10_000)]
    modalities = sorted({str(v["Modality"]) for v in ordered if v.get("Modality")})
    facts["modalities"] = "\\".join(modalities)[: IDENTITY_WIDTHS["modalities"]]
    facts["series_count"] = len(ordered)
    return facts


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def row_view(row: SeriesRow) -> dict[str, Any]:
    """A series row as the API shows it (and as the later series manifest will)."""
    return {
        "study_uid": row.study_uid,
        "series_uid": row.series_uid,
        "series_number": row.series_number,
        "modality": row.modality,
        "description": row.description,
        "num_files": row.num_files,
        "classify_type": json.loads(row.classify_type),
        "files": json.loads(row.files),
        "view": {
            **json.loads(row.tags),
            "NumFiles": row.num_files,
            "ClassifyType": json.loads(row.classify_type),
        },
    }


def series_manifest(series: list[dict[str, Any]]) -> dict[str, Any]:
    """A job's $MB_SERIES_JSON from its series (``ViewStore.job_series``): per series its
    UIDs, number, description, modality, types and the file names relative to INPUT."""
    return {
        "input": "INPUT",
        "series": [
            {
                "StudyInstanceUID": row["study_uid"],
                "SeriesInstanceUID": row["series_uid"],
                "SeriesNumber": row["series_number"],
                "SeriesDescription": row["description"],
                "Modality": row["modality"],
                "ClassifyType": row["classify_type"],
                "NumFiles": row["num_files"],
                "files": row["files"],
            }
            for row in series
        ],
    }


class ViewStore:
    """The series table and ``views/raw``; the rules that classify them."""

    def __init__(self, views_dir: Path, sessions: sessionmaker[Session], rules: RulesFile):
        self.raw = views_dir / "raw"
        self.sessions = sessions
        self.rules = rules
        self._write_lock = threading.Lock()  # two jobs of one study write one file

    # -- making ------------------------------------------------------------------
    def rows(self, scratchdir: str, series: SeriesSet) -> list[SeriesRow]:
        """The job's series rows, classified now (added by the job store with the job)."""
        classifier = self.rules.classifier()
        out = []
        for view, files in series.items():
            summary = view.to_json(classifier)
            out.append(_row(scratchdir, view, summary, files))
        return out

    def merge_rows(
        self, s: Session, scratchdir: str, series: SeriesSet, renamed: dict[str, str]
    ) -> list[SeriesRow]:
        """A later send's series added to a job's rows in the caller's transaction (a
        merge): a series the job has gains the file names (``renamed``: names the files
        got in INPUT) and is classified again; a new series gets its row. Every row of
        the job after the merge is returned."""
        classifier = self.rules.classifier()
        query = select(SeriesRow).where(SeriesRow.scratchdir == scratchdir)
        rows = {row.series_uid: row for row in s.scalars(query)}
        for new in self.rows(scratchdir, series):
            names = [renamed.get(n, n) for n in json.loads(new.files)]
            old = rows.get(new.series_uid)
            if old is None:
                new.files = json.dumps(names)
                new.num_files = len(names)
                s.add(new)
                rows[new.series_uid] = new
                continue
            tags = {**json.loads(new.tags), **json.loads(old.tags)}  # the first values stay
            files = list(dict.fromkeys([*json.loads(old.files), *names]))
            old.tags, old.files, old.num_files = json.dumps(tags), json.dumps(files), len(files)
            old.classify_type = json.dumps(classifier.classify({**tags, "NumFiles": len(files)}))
        return list(rows.values())

    def write_raw(self, study_uids: Iterable[str]) -> None:
        """Rewrite ``views/raw/<study>/`` from every job's rows of each study."""
        for uid in set(study_uids):
            try:
                self._write_study(uid)
            except (OSError, BadName) as exc:  # the job stands; its views can be rebuilt
                log.warning("views/raw of study %s not written: %s", uid, exc)

    def _write_study(self, study_uid: str) -> None:
        folder = self.raw / study_key(study_uid)
        # Read and write under one lock: two jobs of a study made at once (uploads) must
        # not leave the older union on disk.
        with self._write_lock:
            with self.sessions() as s:
                rows = s.scalars(
                    select(SeriesRow).where(SeriesRow.study_uid == study_uid).order_by(SeriesRow.id)
                ).all()
            merged = _merge(rows, self.rules.classifier())
            if not merged:
                shutil.rmtree(folder, ignore_errors=True)
                return
            folder.mkdir(parents=True, exist_ok=True)
            keep = set()
            for series_uid, view in merged.items():
                name = f"{study_key(series_uid)}.json"
                keep.add(name)
                write_json_atomic(folder / name, view)
            for old in folder.glob("*.json"):
                if old.name not in keep:
                    old.unlink(missing_ok=True)

    # -- asking ------------------------------------------------------------------
    def job_series(self, scratchdir: str) -> list[dict[str, Any]]:
        with self.sessions() as s:
            rows = s.scalars(
                select(SeriesRow)
                .where(SeriesRow.scratchdir == scratchdir)
                .order_by(SeriesRow.series_number, SeriesRow.id)
            ).all()
        return [row_view(r) for r in rows]

    def study_rows(self, study_uid: str, series_uid: str | None = None) -> list[SeriesRow]:
        query = select(SeriesRow).where(SeriesRow.study_uid == study_uid)
        if series_uid is not None:
            query = query.where(SeriesRow.series_uid == series_uid)
        with self.sessions() as s:
            return list(s.scalars(query.order_by(SeriesRow.id)).all())

    def stored_summaries(
        self, study_uid: str, series_uid: str | None = None
    ) -> list[dict[str, Any]]:
        """A study's series as views/raw has them (every job's files), unclassified."""
        rows = self.study_rows(study_uid, series_uid)
        merged = _merge(rows, None)
        return list(merged.values())

    # -- removing ------------------------------------------------------------------
    def job_deleted(self, scratchdir: str) -> None:
        """A deleted job's rows go; the study's views/raw stays as the archive keeps it."""
        with self.sessions.begin() as s:
            s.execute(delete(SeriesRow).where(SeriesRow.scratchdir == scratchdir))

    def study_deleted(self, study_uid: str) -> None:
        with self.sessions.begin() as s:
            s.execute(delete(SeriesRow).where(SeriesRow.study_uid == study_uid))
        with self._write_lock:
            shutil.rmtree(self.raw / study_key(study_uid), ignore_errors=True)


def _row(scratchdir: str, view: SeriesView, summary: dict[str, Any], files: list[str]) -> SeriesRow:
    tags = {k: v for k, v in summary.items() if k not in ("NumFiles", "ClassifyType")}
    return SeriesRow(
        scratchdir=scratchdir,
        study_uid=str(view.study_uid or ""),
        series_uid=str(view.series_uid or ""),
        series_number=_number(summary.get("SeriesNumber")),
        modality=str(summary.get("Modality", ""))[:16],
        description=str(summary.get("SeriesDescription", "")),
        num_files=view.num_files,
        classify_type=json.dumps(summary["ClassifyType"]),
        tags=json.dumps(tags),
        files=json.dumps(files),
    )


def _merge(rows: Iterable[SeriesRow], classifier: Classifier | None) -> dict[str, dict[str, Any]]:
    """Per series of a study: the first job's tags filled by later ones, the union of the
    file names as NumFiles, classified again on that summary (unless ``classifier`` is
    None)."""
    tags: dict[str, dict[str, Any]] = {}
    files: dict[str, set[str]] = {}
    for row in rows:
        known = tags.setdefault(row.series_uid, {})
        for key, value in json.loads(row.tags).items():
            known.setdefault(key, value)
        # Names are relative to INPUT, i.e. the SOP Instance UID: a file sent again is one.
        files.setdefault(row.series_uid, set()).update(json.loads(row.files))
    out = {}
    for uid, known in tags.items():
        summary = {**known, "NumFiles": len(files[uid])}
        if classifier is not None:
            summary["ClassifyType"] = classifier.classify(summary)
        out[uid] = summary
    return out
