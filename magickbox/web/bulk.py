"""Acting on many jobs at once: retry, delete or run again with another bucket (``POST
/api/v1/jobs/bulk``) and one zip of many OUTPUTs (``GET /api/v1/jobs.zip``). The jobs are
named, or "every job the filter matches"; each job acted on is audited as the single-job
action would be."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, model_validator

from magickbox.auth.principal import Principal
from magickbox.auth.roles import Role
from magickbox.box import BULK_MOST, BulkResult
from magickbox.jobs.db import Job
from magickbox.web.deps import BoxDep, json_bytes
from magickbox.web.filters import FilterBody, JobQuery
from magickbox.web.security import require
from magickbox.web.studies import RunOn
from magickbox.web.views import job_view
from magickbox.zipstream import stream_zip

router = APIRouter(prefix="/api/v1", tags=["api v1"])
Viewer = Annotated[Principal, require(Role.viewer)]
Operator = Annotated[Principal, require(Role.operator)]
Names = Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=BULK_MOST)]


class Selection(BaseModel):
    """Which jobs: ``scratchdirs``, or every job ``filter`` matches (``{}``: all jobs); at
    most 10,000 either way."""

    scratchdirs: Names | None = None
    filter: FilterBody | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Selection:
        if (self.scratchdirs is None) == (self.filter is None):
            raise ValueError("give either scratchdirs or filter")
        return self

    def names(self, box: BoxDep) -> list[str]:
        flt = self.filter.job_filter() if self.filter is not None else None
        return box.select_jobs(self.scratchdirs, flt)


class Bulk(Selection):
    action: Literal["retry", "delete", "run"]
    run: Annotated[
        RunOn | None, Field(description="for action run: the bucket (and its arguments)")
    ] = None

    @model_validator(mode="after")
    def _run_needs_a_bucket(self) -> Bulk:
        if self.action == "run" and self.run is None:
            raise ValueError('action "run" needs "run": {"bucket": ...}')
        return self


@router.post("/jobs/bulk")
def bulk(request: Request, box: BoxDep, who: Operator, body: Bulk) -> Response:
    """``action`` on each selected job: ``retry`` (finished jobs run again), ``delete``, or
    ``run`` (a new job of ``run.bucket`` made of each job's archived study). A job that
    cannot is listed in ``failed`` with its reason; the others are still acted on."""
    names = body.names(box)
    run: dict[str, Any] = {}
    if body.run is not None:
        run = body.run.model_dump()
        run["caller_ip"] = request.client.host if request.client else ""
    result = box.bulk(body.action, names, **run)
    for name, answer in result.done:
        box.audit(who, body.action, name, **_audit_detail(body.action, answer))
    return json_bytes(_answer(result, len(names)))


def _audit_detail(action: str, answer: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {"bulk": True}
    if action == "run":
        detail.update(job=answer.scratchdir, bucket=answer.bucket)
    return detail


def _answer(result: BulkResult, matched: int) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "action": result.action,
        "matched": matched,
        "done": [name for name, _ in result.done],
        "failed": [{"scratchdir": name, "reason": why} for name, why in result.failed],
    }
    if result.action == "delete":
        answer["freed_bytes"] = sum(d["freed_bytes"] for _, d in result.done)
    else:
        answer["jobs"] = [job_view(job) for _, job in result.done if isinstance(job, Job)]
    return answer


class ZipQuery(JobQuery):
    scratchdir: Annotated[
        Names | None, Field(description="these jobs (repeat it); none: the filter's jobs")
    ] = None


@router.get("/jobs.zip")
def outputs_zip(box: BoxDep, who: Viewer, query: Annotated[ZipQuery, Query()]) -> Response:
    """One zip of the OUTPUTs of many jobs (``<scratchdir>/OUTPUT/...``), streamed as it
    is made: the named jobs, else every job the filter's fields match."""
    flt = None if query.scratchdir else query.job_filter()
    names = box.select_jobs(query.scratchdir or None, flt)
    entries = box.outputs_zip(names)
    for name in names:
        box.audit(who, "download", name, part="OUTPUT", bulk=True)
    return StreamingResponse(
        stream_zip(entries),
        media_type="application/zip",
        headers={"Content-Disposition": f"attachment; filename=outputs-{len(names)}-jobs.zip"},
    )
