"""The JSON API, ``/api/v1``: jobs, buckets, queue. Documented at ``/docs``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse

from magickbox.box import Invalid
from magickbox.jobs.db import State
from magickbox.jobs.store import JobFilter
from magickbox.web.deps import BoxDep, json_bytes, upload_job, zip_response
from magickbox.web.views import job_view

router = APIRouter(prefix="/api/v1", tags=["api v1"])


@router.get("/jobs")
def list_jobs(
    box: BoxDep,
    bucket: str | None = None,
    caller_aet: str | None = None,
    caller_ip: str | None = None,
    study_uid: str | None = None,
    state: State | None = None,
    since: Annotated[float | None, Query(description="epoch seconds")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    """Jobs newest first, filtered by any of the fields, a page at a time."""
    flt = JobFilter(
        bucket=bucket,
        caller_aet=caller_aet,
        caller_ip=caller_ip,
        study_uid=study_uid,
        state=state.value if state else None,
        since=since,
    )
    jobs, total = box.store.list(flt, limit=limit, offset=offset)
    return json_bytes(
        {"total": total, "limit": limit, "offset": offset, "jobs": [job_view(j) for j in jobs]}
    )


@router.post("/jobs", status_code=201)
async def post_job(
    request: Request,
    box: BoxDep,
    file: UploadFile,
    bucket: Annotated[str, Form()],
    sender: Annotated[str, Form()] = "api",
    jobname: Annotated[str, Form()] = "",
    arguments: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
) -> Response:
    """Upload a zip of DICOM files as a new job for ``bucket``."""
    job = await upload_job(request, box, file, aetitle=bucket, sender=sender,
                           jobname=jobname or (file.filename or ""), arguments=arguments,
                           description=description)  # fmt: skip
    return json_bytes(job_view(job), status_code=201)


@router.get("/jobs/{scratchdir}")
def get_job(box: BoxDep, scratchdir: str) -> Response:
    return json_bytes(job_view(box.job(scratchdir)))


@router.get("/jobs/{scratchdir}/log")
def get_log(
    box: BoxDep,
    scratchdir: str,
    offset: Annotated[int, Query(ge=0, description="first byte to send")] = 0,
) -> Response:
    """The processing log from ``offset`` on; ``X-Log-Size`` tells where to ask next."""
    path = box.job_dir(scratchdir) / "processing.log"
    data = b""
    if path.is_file() and not path.is_symlink():
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    return Response(
        data,
        media_type="text/plain; charset=utf-8",
        headers={"X-Log-Size": str(offset + len(data))},
    )


@router.get("/jobs/{scratchdir}/output.zip")
def output_zip(box: BoxDep, scratchdir: str) -> StreamingResponse:
    return zip_response(box, scratchdir, "OUTPUT")


@router.get("/jobs/{scratchdir}/input.zip")
def input_zip(box: BoxDep, scratchdir: str) -> StreamingResponse:
    return zip_response(box, scratchdir, "INPUT")


@router.delete("/jobs/{scratchdir}")
def delete_job(box: BoxDep, scratchdir: str) -> Response:
    """Delete a job; a running job is stopped first."""
    box.delete_job(scratchdir)
    return json_bytes({"deleted": scratchdir})


@router.post("/jobs/{scratchdir}/retry")
def retry_job(box: BoxDep, scratchdir: str) -> Response:
    """Run a finished job again, with an empty OUTPUT."""
    return json_bytes(job_view(box.retry_job(scratchdir)))


@router.delete("/studies/{study_uid}")
def delete_study(box: BoxDep, study_uid: str) -> Response:
    """Delete a study from the archive and every job made of it."""
    return json_bytes(box.delete_study(study_uid))


@router.get("/buckets")
def buckets(box: BoxDep, all: bool = False) -> list[dict[str, Any]]:
    """Installed buckets (only the enabled ones unless ``all=true``)."""
    return [
        {"aetitle": b.aetitle, "enabled": b.enabled, "folder": b.path.name, "info": b.info}
        for b in box.buckets(enabled_only=not all)
    ]


@router.get("/queue")
def queue(box: BoxDep) -> list[dict[str, Any]]:
    """Per bucket: jobs queued, running, and how many may run at once."""
    return box.queue_status()


@router.get("/health")
def health(box: BoxDep) -> dict[str, Any]:
    if not box.settings.scratch.is_dir():
        raise Invalid("scratch folder is missing")
    return {
        "ok": True,
        "aet": box.settings.aet,
        "dicom_port": box.settings.dicom_port,
        "pending_sends": box.grouper.pending(),
    }
