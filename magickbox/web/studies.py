"""Running buckets again on studies in the archive: one study, or many in one call."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from magickbox.auth.roles import Role
from magickbox.web.deps import BoxDep, json_bytes
from magickbox.web.security import require
from magickbox.web.views import job_view

router = APIRouter(prefix="/api/v1", tags=["api v1"])
OPERATE = [require(Role.operator)]


class RunOn(BaseModel):
    """Which bucket runs, and how: what an upload would say."""

    bucket: Annotated[str, Field(min_length=1, max_length=64, description="its AE title")]
    arguments: Annotated[
        str | list[str], Field(description="for work.sh: a text split like a shell, or a list")
    ] = ""
    sender: Annotated[str, Field(max_length=64, description="the job's AETitleCaller")] = "archive"
    jobname: Annotated[str, Field(max_length=256)] = ""
    description: Annotated[str, Field(max_length=10_000)] = ""


class RunOnStudies(RunOn):
    studies: Annotated[
        list[str], Field(min_length=1, max_length=10_000, description="StudyInstanceUIDs")
    ]


def _run(request: Request, box: BoxDep, uids: list[str], how: RunOn) -> Response:
    jobs = box.run_studies(
        uids,
        bucket=how.bucket,
        arguments=how.arguments,
        sender=how.sender,
        caller_ip=request.client.host if request.client else "",
        jobname=how.jobname,
        description=how.description,
    )
    return json_bytes({"jobs": [job_view(job) for job in jobs]}, status_code=201)


@router.post("/studies/{study_uid}/run", status_code=201, dependencies=OPERATE)
def run_study(request: Request, box: BoxDep, study_uid: str, how: RunOn) -> Response:
    """A new job of ``bucket`` made of the archived study (its files as they are now)."""
    return _run(request, box, [study_uid], how)


@router.post("/studies/run", status_code=201, dependencies=OPERATE)
def run_studies(request: Request, box: BoxDep, how: RunOnStudies) -> Response:
    """A new job of ``bucket`` per study; every study must be in the archive, else no job
    is made (404 names the missing ones)."""
    return _run(request, box, how.studies, how)
