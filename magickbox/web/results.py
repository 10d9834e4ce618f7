"""What came out of the jobs, and how long they take: measures (``/api/v1/measures``,
the original's ``db.php``) and processing times (the original's ``timing.php``)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import PurePosixPath
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from magickbox.auth.principal import Principal
from magickbox.auth.roles import Role
from magickbox.errors import Invalid
from magickbox.jobs.measures import Table
from magickbox.web.deps import BoxDep, json_bytes
from magickbox.web.security import allow_get_change, require

router = APIRouter(tags=["measures and timing"])
VIEW = [require(Role.viewer)]
# Original endpoints: trusted networks too.
LegacyViewer = Annotated[Principal, require(Role.viewer, legacy=True)]


@router.get("/api/v1/measures", dependencies=VIEW)
def measures(
    box: BoxDep,
    bucket: Annotated[str | None, Query(max_length=64, description="this bucket's jobs")] = None,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Response:
    """One row per job, oldest first: jobname, scratchdir, state and every measure its
    bucket wrote (a job whose measures.json is a list gives a row per item, numbered in
    ``row``). Jobs without measures have empty cells: the missing subjects show."""
    result = box.measures_table(bucket)
    if format == "csv":
        # The bucket name is the caller's text: in a header only as safe ASCII (a
        # non-Latin-1 or quote character would break the header, a CR LF split it).
        name = f"measures-{_ascii_name(bucket)}.csv" if bucket else "measures.csv"
        return Response(
            table_csv(result),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return json_bytes({"bucket": bucket, "columns": result.columns, "rows": result.rows})


def table_csv(result: Table) -> str:
    """The table as CSV (RFC 4180, what pandas and the csv module read); null is empty."""
    out = io.StringIO()
    writer = csv.DictWriter(out, result.columns, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in result.rows)
    return out.getvalue()


@router.get("/api/v1/jobs/{scratchdir}/measures", dependencies=VIEW)
def job_measures(box: BoxDep, scratchdir: str) -> Response:
    """The job's measures as its bucket wrote them (null when it wrote none)."""
    return json_bytes(box.job_measures(scratchdir))


@router.get("/code/php/db.php")
def db_php(
    request: Request,
    box: BoxDep,
    who: LegacyViewer,
    query: Annotated[str | None, Query(description="a job's scratchdir (or a path to it)")] = None,
    parse: Annotated[str | None, Query(description="read this job's measures.json again")] = None,
    sender: Annotated[str | None, Query(description="accepted as the original did; unused")] = None,
    bucket: Annotated[str | None, Query(description="accepted as the original did; unused")] = None,
) -> Response:
    """The original's measures database: ``query=<scratchdir>`` answers
    ``{"measures.json": <measures>}`` (``{}`` when the job has none); ``parse=<scratchdir>``
    reads the job's measures.json again (a change: operator, never from a browser)."""
    if parse:
        allow_get_change(request, who, Role.operator)
        return json_bytes({"ok": True, "message": box.reread_measures(_job_key(parse))})
    if query:
        found = box.job_measures(_job_key(query))
        return json_bytes({} if found is None else {"measures.json": found})
    raise Invalid("give query=<scratchdir> or parse=<scratchdir>")


def _ascii_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _job_key(value: str) -> str:
    """The original took the last part of a path (``/data/scratch/tmp.X``) as the key."""
    return PurePosixPath(value.rstrip("/")).name or value


@router.get("/code/php/timing.php")
def timing_php(
    request: Request,
    box: BoxDep,
    who: LegacyViewer,
    aetitle: Annotated[str | None, Query(description="the bucket")] = None,
    time: Annotated[str | None, Query(description="add this processing time, in seconds")] = None,
) -> Response:
    """The bucket's running mean (``avg``) and standard deviation (``std``) of processing
    time in seconds, as the original answered (``[]`` for a bucket without runs);
    ``time=`` adds a processing time by hand (a change: operator, never from a browser)."""
    name = (aetitle or "").strip('\\"')
    if not name:
        raise Invalid("aetitle is required")
    if time is not None:
        allow_get_change(request, who, Role.operator)
        return json_bytes(box.add_timing(name, _seconds(time)).original())
    figures = box.bucket_timing(name)
    return json_bytes([] if figures is None else figures.original())


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise Invalid(f"time must be a number of seconds, not {text!r}") from None
