"""When a send may become a job: a bucket's completeness rule, in one place.

A bucket's info.json may say how its sends are cut into jobs and when one is complete:

- ``quiet_seconds``: the send is over once nothing came this long (else the box's);
- ``grouping``: ``"study"`` (one job per study, the default) or ``"series"`` (one per series);
- ``requires``: ClassifyTypes the job needs (e.g. ``["T1", "DWI"]``), with ``wait_seconds``
  (how long a quiet send that lacks one is given for the rest) and ``on_missing``
  (``"fail"``: the job is made failed, "missing series: DWI"; ``"run"``: it runs anyway);
- ``merge_seconds``: a job of this bucket is held that long after it was made, and a later
  send of the same study (a scanner's pause longer than the quiet window) joins it.

:func:`decide` is the rule; the grouper asks it for every quiet send, and the Box acts on
its verdict. A bad value is a log line and the default, never a refused send.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from magickbox.buckets.registry import nonnegative

log = logging.getLogger(__name__)

GROUPINGS = ("study", "series")
ON_MISSING = ("fail", "run")
DEFAULT_WAIT_SECONDS = 600.0  # an incomplete send's grace when requires has no wait_seconds


@dataclass(frozen=True)
class SendPolicy:
    """How one bucket's sends become jobs (the info.json keys above)."""

    quiet: float | None = None  # None: the box's quiet_seconds
    grouping: str = "study"
    requires: tuple[str, ...] = ()
    wait: float = DEFAULT_WAIT_SECONDS
    on_missing: str = "fail"
    merge: float = 0.0

    @property
    def per_series(self) -> bool:
        return self.grouping == "series"


@dataclass(frozen=True)
class Verdict:
    """What to do with a send now: wait ``left`` seconds more, or make the job (``ready``),
    with the required types it lacks (``missing``) and whether that fails it."""

    ready: bool
    left: float = 0.0
    missing: tuple[str, ...] = ()
    fail: bool = False

    @property
    def reason(self) -> str:
        return f"missing series: {', '.join(self.missing)}" if self.missing else ""


def decide(policy: SendPolicy, quiet_for: float, types: Iterable[str] | None) -> Verdict:
    """The rule. ``quiet_for``: seconds since the send's last file, its associations all
    closed; ``types``: the ClassifyTypes of its series now (None: not asked yet, only
    needed when the bucket requires some).

    A quiet send with every required type is ready; one that lacks some waits until it has
    been quiet for ``wait_seconds`` (a new file starts the wait again), then is made failed
    (or run, with ``on_missing: "run"``) with the missing types named.
    """
    quiet = policy.quiet or 0.0
    if quiet_for < quiet:
        return Verdict(False, quiet - quiet_for)
    if not policy.requires:
        return Verdict(True)
    present = set(types or ())
    missing = tuple(t for t in policy.requires if t not in present)
    if not missing:
        return Verdict(True)
    if quiet_for < policy.wait:
        return Verdict(False, policy.wait - quiet_for, missing)
    return Verdict(True, missing=missing, fail=policy.on_missing == "fail")


def policy_of(aetitle: str, info: dict[str, Any]) -> SendPolicy:
    """A bucket's policy from its info.json; a bad value is named in the log and ignored."""
    bad = _Complaints(aetitle)
    requires = info.get("requires") or []
    if not isinstance(requires, list) or not all(isinstance(t, str) and t for t in requires):
        bad.say("requires", requires, "a list of ClassifyType names")
        requires = []
    return SendPolicy(
        quiet=bad.seconds(info, "quiet_seconds", None),
        grouping=bad.choice(info, "grouping", GROUPINGS),
        requires=tuple(requires),
        wait=bad.seconds(info, "wait_seconds", DEFAULT_WAIT_SECONDS),
        on_missing=bad.choice(info, "on_missing", ON_MISSING),
        merge=bad.seconds(info, "merge_seconds", 0.0),
    )


class _Complaints:
    def __init__(self, aetitle: str) -> None:
        self.aetitle = aetitle

    def say(self, key: str, value: object, want: str) -> None:
        log.warning("bucket %s: info.json %r must be %s, not %r (ignored)", self.aetitle, key,
                    want, value)  # fmt: skip

    def seconds(self, info: dict[str, Any], key: str, default: float | None) -> Any:
        return nonnegative(self.aetitle, info, key, default, "seconds")

    def choice(self, info: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
        value = info.get(key, choices[0])
        if value not in choices:
            self.say(key, value, " or ".join(repr(c) for c in choices))
            return choices[0]
        return str(value)
