"""The JSON API, ``/api/v1``: jobs, buckets, queue. Documented at ``/docs``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from magickbox.auth.principal import Principal
from magickbox.auth.roles import Role
from magickbox.buckets.slurm import SlurmStatus
from magickbox.jobfolder import JobFolder
from magickbox.jobs.browse import IMAGE_SUFFIXES
from magickbox.jobs.render import dicom_png
from magickbox.web.deps import (
    BIGGEST,
    ZIP_ANSWER,
    BoxDep,
    Offset,
    json_bytes,
    upload_job,
    zip_response,
)
from magickbox.web.filters import ListQuery
from magickbox.web.security import require
from magickbox.web.uploads import openapi_form
from magickbox.web.views import job_detail_view, job_view

router = APIRouter(prefix="/api/v1", tags=["api v1"])
NOSNIFF = {"X-Content-Type-Options": "nosniff"}  # a file is what its type says, nothing else

VIEW, OPERATE, ADMIN = [require(Role.viewer)], [require(Role.operator)], [require(Role.admin)]
Viewer = Annotated[Principal, require(Role.viewer)]
Operator = Annotated[Principal, require(Role.operator)]
Admin = Annotated[Principal, require(Role.admin)]


@router.get("/jobs", dependencies=VIEW)
def list_jobs(box: BoxDep, query: Annotated[ListQuery, Query()]) -> Response:
    """Jobs filtered by any of the fields, newest first or sorted by ``sort`` (``order``
    asc or desc; done by the database), a page at a time."""
    jobs, total = box.find_jobs(
        query.job_filter(),
        limit=query.limit,
        offset=query.offset,
        sort=query.sort,
        descending=query.order == "desc",
    )
    etas = box.job_etas([job for job, _size in jobs])
    slurm = box.slurm_statuses()
    views = [
        job_view(job, size, etas.get(job.scratchdir), _text(slurm.get(job.scratchdir)))
        for job, size in jobs
    ]
    page = {"total": total, "limit": query.limit, "offset": query.offset, "jobs": views}
    return json_bytes({**page, "sort": query.sort, "order": query.order})


def _text(status: SlurmStatus | None) -> str | None:
    return status.text if status else None


@router.post(
    "/jobs",
    status_code=201,
    openapi_extra=openapi_form(
        "file", ["bucket"], ["bucket", "sender", "jobname", "arguments", "description"]),
)  # fmt: skip
async def post_job(request: Request, box: BoxDep, who: Operator) -> Response:
    """Upload a zip of DICOM files (``file``) as a new job for ``bucket``. Over
    ``max_upload_bytes``: 413 before the body is read; disk below its reserve: 507."""
    job = await upload_job(request, box, "file", lambda form: {
        "aetitle": form.required("bucket"), "sender": form.get("sender", "api"),
        "jobname": form.get("jobname", form.filename),
        "arguments": form.get("arguments"), "description": form.get("description")})  # fmt: skip
    box.audit(who, "upload", job.scratchdir, bucket=job.bucket, study=job.study_uid)
    return json_bytes(job_view(job), status_code=201)


@router.get("/jobs/{scratchdir}", dependencies=VIEW)
def get_job(box: BoxDep, scratchdir: str) -> Response:
    """A job; ``verdict`` is its proc.json (success, message), null when it has none."""
    job = box.job(scratchdir)
    eta = box.job_etas([job]).get(job.scratchdir)
    slurm = box.slurm_status(scratchdir)
    parts = box.job_parts(job)
    return json_bytes(
        job_detail_view(job, box.log_size(job), box.job_verdict(job), eta, slurm, parts)
    )


@router.get("/jobs/{scratchdir}/series", dependencies=VIEW)
def job_series(box: BoxDep, scratchdir: str) -> Response:
    """The series of the job's INPUT: tags, NumFiles, ClassifyType and file names."""
    return json_bytes(box.job_series(scratchdir))


@router.get("/jobs/{scratchdir}/files", dependencies=VIEW)
def job_files(
    box: BoxDep, scratchdir: str, part: Annotated[str, Query(pattern="^(OUTPUT|INPUT)$")] = "OUTPUT"
) -> Response:
    """Regular files of the job's OUTPUT or INPUT (links are neither listed nor followed)."""
    return json_bytes(box.job_files(scratchdir, part))


@router.get("/jobs/{scratchdir}/files/{name:path}")
def job_file(
    box: BoxDep,
    who: Viewer,
    scratchdir: str,
    name: str,
    part: Annotated[str, Query(pattern="^(OUTPUT|INPUT)$")] = "OUTPUT",
    render: Annotated[str | None, Query(pattern="^png$", description="png: draw DICOM")] = None,
    frame: Annotated[int, Query(ge=0, le=100_000)] = 0,
    download: bool = False,
) -> Response:
    """One file of OUTPUT or INPUT; ``render=png`` draws a DICOM image as PNG (for the page).

    Only PNG and JPEG are shown inline: anything else is sent as a download, never as a
    page the browser would run. A download (not a picture shown on the page) is audited."""
    path = box.job_file(scratchdir, part, name)
    if render:
        return Response(dicom_png(path, frame), media_type="image/png", headers=NOSNIFF)
    media = IMAGE_SUFFIXES.get(path.suffix.lower())
    inline = media is not None and not download
    kind = "inline" if inline else "attachment"
    if not inline:
        box.audit(who, "download", scratchdir, part=part, file=name)
    return FileResponse(
        path,
        media_type=media or "application/octet-stream",
        filename=path.name,
        content_disposition_type=kind,
        headers=NOSNIFF,
    )


@router.get("/jobs/{scratchdir}/log", dependencies=VIEW)
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


@router.get("/jobs/{scratchdir}/output.zip", response_class=StreamingResponse, responses=ZIP_ANSWER)
def output_zip(box: BoxDep, who: Viewer, scratchdir: str) -> StreamingResponse:
    response = zip_response(box, scratchdir, "OUTPUT")
    box.audit(who, "download", scratchdir, part="OUTPUT")
    return response


@router.get("/jobs/{scratchdir}/input.zip", response_class=StreamingResponse, responses=ZIP_ANSWER)
def input_zip(box: BoxDep, who: Viewer, scratchdir: str) -> StreamingResponse:
    response = zip_response(box, scratchdir, "INPUT")
    box.audit(who, "download", scratchdir, part="INPUT")
    return response


@router.delete("/jobs/{scratchdir}")
def delete_job(box: BoxDep, who: Operator, scratchdir: str) -> Response:
    """Delete a job; a running job is stopped first. ``freed_bytes``: what that gave back
    (INPUT files stay in the archive until their study is deleted)."""
    deleted = box.delete_job(scratchdir)
    box.audit(who, "delete", scratchdir)
    return json_bytes(deleted)


@router.post("/jobs/{scratchdir}/retry")
def retry_job(box: BoxDep, who: Operator, scratchdir: str) -> Response:
    """Run a finished job again, with an empty OUTPUT."""
    job = box.retry_job(scratchdir)
    box.audit(who, "retry", scratchdir)
    return json_bytes(job_view(job))


@router.delete("/studies/{study_uid}")
def delete_study(box: BoxDep, who: Operator, study_uid: str) -> Response:
    """Delete a study from the archive and every job made of it."""
    deleted = box.delete_study(study_uid)
    box.audit(who, "delete", study_uid, jobs=deleted["deleted_jobs"])
    return json_bytes(deleted)


@router.get("/buckets", dependencies=VIEW)
def buckets(box: BoxDep, all: bool = False) -> list[dict[str, Any]]:
    """Installed buckets (only the enabled ones unless ``all=true``)."""
    return box.bucket_overview(enabled_only=not all)


@router.post("/buckets/{name}/enable")
def enable_bucket(box: BoxDep, who: Admin, name: str) -> dict[str, Any]:
    """Enable a bucket: sends to its AE title become jobs again (audited)."""
    return box.set_bucket_enabled(who, name, True)


@router.post("/buckets/{name}/disable")
def disable_bucket(box: BoxDep, who: Admin, name: str) -> dict[str, Any]:
    """Disable a bucket: sends to its AE title are refused from now on, and jobs of it
    still queued fail when their turn comes (audited)."""
    return box.set_bucket_enabled(who, name, False)


@router.get("/queue", dependencies=VIEW)
def queue(box: BoxDep) -> list[dict[str, Any]]:
    """Per bucket: jobs queued, running, and how many may run at once."""
    return box.queue_status()


@router.get("/receiving", dependencies=VIEW)
def receiving(box: BoxDep) -> list[dict[str, Any]]:
    """Sends still arriving: not jobs yet (a send becomes one when it has been quiet)."""
    return box.arrivals()


@router.get("/rejections", dependencies=OPERATE)
def rejections(
    box: BoxDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Refused DICOM associations, newest first: time, calling and called AE title, the
    caller's address, the box's port it came to, and why (unknown called AE title, caller
    not on the allow-list, the box's own title used for storage, a failed TLS handshake)."""
    return box.rejections_page(limit, offset)


@router.get("/stats/days", dependencies=VIEW)
def jobs_per_day(
    box: BoxDep,
    days: Annotated[int, Query(ge=1, le=3660)] = 365,
    utc_offset_minutes: Annotated[int, Query(ge=-900, le=900)] = 0,
) -> dict[str, Any]:
    """Jobs received per day over the last ``days`` days (days in the caller's time zone)."""
    return {"days": days, "counts": box.jobs_per_day(days, utc_offset_minutes)}


@router.get("/stats/buckets", dependencies=VIEW)
def bucket_stats(box: BoxDep) -> dict[str, Any]:
    """Per bucket: done and failed jobs, success rate, mean run (done and failed apart), mean
    wait in the queue, and jobs finished an hour over the last day."""
    return box.bucket_stats()


@router.get("/disk", dependencies=VIEW)
def disk(box: BoxDep, scratch_size: bool = False) -> dict[str, Any]:
    """Space on the scratch folder's disk. ``scratch_size``: also the folder's own size, summed
    in the background (at most every 5 minutes; null until the first sum is done)."""
    return box.disk(scratch_size)


@router.get("/setup", dependencies=ADMIN)
def setup(box: BoxDep) -> dict[str, Any]:
    """The box's own settings: each value by name, and every setting with its default,
    description and whether it is ``live`` (``PATCH /api/v1/setup`` changes those at once;
    the rest: edit magickbox.toml and restart)."""
    from magickbox.config import setup_view  # here: the rest of this module is edited elsewhere

    return setup_view(box.settings)


@router.get("/archive", dependencies=VIEW)
def archive(
    box: BoxDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Archived studies, most recently changed first, with their patient and study tags."""
    return box.archived_studies(limit, offset)
