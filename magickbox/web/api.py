"""The JSON API, ``/api/v1``: jobs, buckets, queue. Documented at ``/docs``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse

from magickbox.box import Invalid
from magickbox.jobfolder import JobFolder
from magickbox.jobs.db import State
from magickbox.jobs.store import JobFilter
from magickbox.web.deps import BIGGEST, BoxDep, Offset, json_bytes, upload_job, zip_response
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
    until: Annotated[float | None, Query(description="received before, epoch seconds")] = None,
    q: Annotated[str | None, Query(description="substring of any text field")] = None,
    initial: Annotated[
        str | None, Query(max_length=1, description="first letter of the sender's AE title")
    ] = None,
    patient_id: Annotated[str | None, Query(description="PatientID, exactly")] = None,
    accession_number: Annotated[str | None, Query(description="AccessionNumber")] = None,
    study_date: Annotated[
        str | None,
        Query(pattern=r"^\d{8}(-\d{8})?$", description="YYYYMMDD or YYYYMMDD-YYYYMMDD"),
    ] = None,
    modality: Annotated[
        str | None, Query(pattern=r"^[A-Za-z0-9]{1,16}$", description="one of the job's")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Offset = 0,
) -> Response:
    """Jobs newest first, filtered by any of the fields, a page at a time."""
    flt = JobFilter(
        bucket=bucket,
        caller_aet=caller_aet,
        caller_ip=caller_ip,
        study_uid=study_uid,
        state=state.value if state else None,
        since=since,
        until=until,
        q=q or None,
        initial=initial or None,
        patient_id=patient_id,
        accession_number=accession_number,
        study_date=study_date,
        modality=modality,
    )
    jobs, total = box.find_jobs(flt, limit=limit, offset=offset)
    views = [job_view(job, size) for job, size in jobs]
    return json_bytes({"total": total, "limit": limit, "offset": offset, "jobs": views})


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
    job = box.job(scratchdir)
    return json_bytes(job_view(job, box.log_size(job)))


@router.get("/jobs/{scratchdir}/series")
def job_series(box: BoxDep, scratchdir: str) -> Response:
    """The series of the job's INPUT: tags, NumFiles, ClassifyType and file names."""
    return json_bytes(box.job_series(scratchdir))


@router.get("/jobs/{scratchdir}/files")
def job_files(
    box: BoxDep, scratchdir: str, part: Annotated[str, Query(pattern="^(OUTPUT|INPUT)$")] = "OUTPUT"
) -> Response:
    """Regular files of the job's OUTPUT or INPUT (links are neither listed nor followed)."""
    return json_bytes(box.job_files(scratchdir, part))


@router.get("/jobs/{scratchdir}/log")
def get_log(
    box: BoxDep,
    scratchdir: str,
    offset: Annotated[int, Query(ge=0, le=BIGGEST, description="first byte to send")] = 0,
) -> Response:
    """The processing log from ``offset`` on; ``X-Log-Size`` tells where to ask next."""
    data = JobFolder(box.job_dir(scratchdir)).read_log(offset)
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
    return box.bucket_overview(enabled_only=not all)


@router.get("/queue")
def queue(box: BoxDep) -> list[dict[str, Any]]:
    """Per bucket: jobs queued, running, and how many may run at once."""
    return box.queue_status()


@router.get("/receiving")
def receiving(box: BoxDep) -> list[dict[str, Any]]:
    """Sends still arriving: not jobs yet (a send becomes one when it has been quiet)."""
    return box.arrivals()


@router.get("/stats/days")
def jobs_per_day(
    box: BoxDep,
    days: Annotated[int, Query(ge=1, le=3660)] = 365,
    utc_offset_minutes: Annotated[int, Query(ge=-900, le=900)] = 0,
) -> dict[str, Any]:
    """Jobs received per day over the last ``days`` days (days in the caller's time zone)."""
    return {"days": days, "counts": box.jobs_per_day(days, utc_offset_minutes)}


@router.get("/disk")
def disk(box: BoxDep, scratch_size: bool = False) -> dict[str, Any]:
    """Space on the scratch folder's disk. ``scratch_size``: also the folder's own size, summed
    in the background (at most every 5 minutes; null until the first sum is done)."""
    return box.disk(scratch_size)


@router.get("/setup")
def setup(box: BoxDep) -> dict[str, Any]:
    """The box's own settings (read-only here: change them in magickbox.toml and restart):
    each value by name, and every setting with its default and description."""
    from magickbox.config import setup_view  # here: the rest of this module is edited elsewhere

    return setup_view(box.settings)


@router.get("/archive")
def archive(
    box: BoxDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Archived studies, most recently changed first, with their patient and study tags."""
    return box.archived_studies(limit, offset)


@router.get("/health")
def health(box: BoxDep) -> dict[str, Any]:
    if not box.settings.scratch.is_dir():
        raise Invalid("scratch folder is missing")
    return {
        "ok": True,
        "aet": box.settings.aet,
        "dicom_port": box.settings.dicom_port,
        "pending_sends": box.pending_arrivals(),
    }
