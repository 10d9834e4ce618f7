"""Which jobs a command acts on: a regular expression over the fields that name a job, and
field filters (``--jobname``, ``--bucket``, ...) that compare one field each.

The bare regex used to search every string value, so ``mb remove 1`` matched every job
through ``CallerIP`` 127.0.0.1 and ``mb list 2026`` through the dates. It now searches only
the fields a person names a job by (:data:`SEARCHED`); addresses, dates, sizes and times
are reached through the filters (``--sender``, ``--machine``) or ``jq``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# What a bare regex searches: the names of a job, its bucket, sender and state, and the
# study's identity where the box reports it (newer boxes add PatientID and the like).
SEARCHED = (
    "jobname",
    "scratchdir",
    "pid",
    "AETitleCalled",
    "AETitleCaller",
    "status",
    "PatientID",
    "PatientName",
    "AccessionNumber",
    "StudyInstanceUID",
    "StudyDescription",
)
STATES = ("received", "queued", "running", "done", "failed")
# Each filter and the getScratch fields it compares (any of them may match).
FILTER_FIELDS: dict[str, tuple[str, ...]] = {
    "jobname": ("jobname",),
    "bucket": ("AETitleCalled",),
    "sender": ("AETitleCaller", "CallerIP"),
    "state": ("status",),
    "patient": ("PatientID", "PatientName"),
}


class SelectionError(ValueError):
    """A regex that does not compile."""


@dataclass
class Selection:
    """A regex and field filters; a job is selected when it passes all of them.

    Each filter holds shell-style patterns (``sub-00*``), compared with the whole value and
    case-sensitively; a job passes a filter when any pattern matches any of its fields.
    ``machine`` compares ``host`` or ``host:port``.
    """

    regex: str | None = None
    filters: dict[str, list[str]] = field(default_factory=dict)
    machine: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        try:
            self._regex = re.compile(self.regex or "")
        except re.error as exc:
            raise SelectionError(f"invalid regular expression {self.regex!r}: {exc}") from None
        unknown = set(self.filters) - set(FILTER_FIELDS)
        if unknown:
            raise SelectionError(f"unknown filters {sorted(unknown)}")

    @property
    def narrows(self) -> bool:
        """False when every job is selected (no regex, no filter)."""
        return bool(self.regex or self.machine or any(self.filters.values()))

    def matches(self, job: dict[str, Any], extra: str | None = None) -> bool:
        """True when ``job`` passes every filter and the regex finds a searched field (or
        ``extra``, e.g. its processing log)."""
        return self._filtered(job) and self.searched(job, extra)

    def searched(self, job: dict[str, Any], extra: str | None = None) -> bool:
        texts = [v for k in SEARCHED if isinstance(v := job.get(k), str)]
        if extra is not None:
            texts.append(extra)
        return any(self._regex.search(t) for t in texts)

    def _filtered(self, job: dict[str, Any]) -> bool:
        for name, patterns in self.filters.items():
            if patterns and not _any_glob(patterns, _values(job, FILTER_FIELDS[name])):
                return False
        if self.machine:
            place = (str(job.get("Machine", "")), f"{job.get('Machine')}:{job.get('Port')}")
            return _any_glob(self.machine, place)
        return True


def _values(job: dict[str, Any], names: Iterable[str]) -> list[str]:
    return [str(job[n]) for n in names if job.get(n) not in (None, "")]


def _any_glob(patterns: Iterable[str], values: Iterable[str]) -> bool:
    values = list(values)
    return any(fnmatch.fnmatchcase(v, p) for p in patterns for v in values)


def lacks_patients(jobs: Iterable[dict[str, Any]]) -> bool:
    """True when none of the rows carries a patient field (a box too old to report them)."""
    return not any(n in job for job in jobs for n in FILTER_FIELDS["patient"])
