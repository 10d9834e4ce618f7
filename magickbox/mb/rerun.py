"""``mb run``: a bucket again on studies already in the boxes' archives (HTTP only)."""

from __future__ import annotations

import re
from typing import Any

from magickbox.mb.client import MachineError
from magickbox.mb.commands import FAILED, OK, USAGE, Context, MbError, emit, offering, report, warn
from magickbox.mb.config import Machine

# What --match searches in each archived study (as /api/v1/archive lists them).
STUDY_FIELDS = ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber", "StudyDate",
                "StudyDescription")  # fmt: skip


def chosen_studies(
    studies: list[dict[str, Any]], uids: list[str] | None, regex: re.Pattern[str] | None
) -> list[str]:
    """The StudyInstanceUIDs of ``studies`` named in ``uids``, or with a field ``regex``
    finds."""
    picked = []
    for study in studies:
        uid = str(study.get("StudyInstanceUID", ""))
        fields = (str(study.get(name) or "") for name in STUDY_FIELDS)
        if (uids is not None and uid in uids) or (
            regex is not None and any(regex.search(f) for f in fields)
        ):
            picked.append(uid)
    return picked


def _regex(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise MbError(f"invalid regular expression {pattern!r}: {exc}", USAGE) from None


def plan(
    ctx: Context, aetitle: str, uids: list[str] | None, regex: re.Pattern[str] | None
) -> tuple[dict[Machine, list[str]], int]:
    """Which studies run where: each on the first machine (in the config's order) that has
    it and offers the bucket; and the exit code for machines that did not answer."""
    loads, code = offering(ctx, aetitle)
    answers = ctx.client.ask_all([m for m in ctx.machines if m in loads], ctx.client.archive)
    code = report(answers.failed) or code
    plans: dict[Machine, list[str]] = {}
    seen: set[str] = set()
    for machine, studies in answers.ok:
        fresh = [u for u in chosen_studies(studies, uids, regex) if u not in seen]
        seen.update(fresh)
        if fresh:
            plans[machine] = fresh
    return plans, code


def cmd_run(
    ctx: Context,
    aetitle: str,
    uids: list[str] | None,
    pattern: str | None,
    arguments: str,
    description: str,
    dry_run: bool,
) -> int:
    """Run bucket ``aetitle`` again on archived studies; exit 1 when a UID is nowhere."""
    plans, code = plan(ctx, aetitle, uids, _regex(pattern))
    found = {u for us in plans.values() for u in us}
    missing = [u for u in uids or [] if u not in found]
    for uid in missing:
        warn(f"study {uid} is in no archive of a machine offering {aetitle}")
    if not found and pattern is not None:
        warn(f"no archived study matches {pattern!r}")
    if dry_run:
        emit([{"StudyInstanceUID": u, "aetitle": aetitle, **m.as_json()}
              for m, us in plans.items() for u in us])  # fmt: skip
        return code or (FAILED if missing else OK)
    request = {"bucket": aetitle, "arguments": arguments, "description": description,
               "sender": str(ctx.settings["Sender"])}  # fmt: skip
    rows: list[dict[str, Any]] = []
    for machine, chosen in plans.items():
        try:
            jobs = ctx.client.run_studies(machine, {**request, "studies": chosen})
        except MachineError as exc:
            warn(f"could not run {aetitle} on {machine.label}: {exc.reason}")
            code = code or FAILED
            continue
        rows += [{"scratchdir": j.get("scratchdir"), "pid": j.get("study_uid"),
                  "aetitle": aetitle, **machine.as_json()} for j in jobs]  # fmt: skip
    emit(rows)
    return code or (FAILED if missing else OK)
