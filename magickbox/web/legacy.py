"""The original's endpoints, kept for the scripts that use them (see the seed's manual)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from magickbox.auth.principal import Principal
from magickbox.auth.roles import Role
from magickbox.box import Invalid
from magickbox.jobfolder import JobFolder
from magickbox.web.deps import ZIP_ANSWER, BoxDep, json_bytes, upload_job, zip_response
from magickbox.web.security import require
from magickbox.web.uploads import openapi_form

router = APIRouter(tags=["original endpoints"])

# Trusted networks (setting trusted_networks) may use these without credentials.
VIEW = [require(Role.viewer, legacy=True)]
Operator = Annotated[Principal, require(Role.operator, legacy=True)]


@router.get("/code/php/getScratch.php", dependencies=VIEW)
def get_scratch(request: Request, box: BoxDep) -> Response:
    """All jobs, newest first, as the original listed them."""
    rendered = request.app.state.scratch_renderer.render(box.scratch_rows(), box.settings.scratch)
    return Response(rendered, media_type="application/json")


@router.get("/code/php/getOutputZip.php", response_class=StreamingResponse, responses=ZIP_ANSWER)
def get_output_zip(
    box: BoxDep,
    who: Annotated[Principal, require(Role.viewer, legacy=True)],
    folder: str,
    type: str = "output",
) -> StreamingResponse:
    """The job's OUTPUT (or INPUT with ``type=input``) as a zip streamed while it is made."""
    if type.lower() not in ("output", "input"):
        raise Invalid("type must be output or input")
    response = zip_response(box, folder, type.upper())
    box.audit(who, "download", folder, part=type.upper())
    return response


@router.get("/code/php/deleteStudy.php")
def delete_study(
    box: BoxDep,
    who: Annotated[Principal, require(Role.operator, legacy=True, get_changes_state=True)],
    scratchdir: str | None = None,
    SIUID: Annotated[str | None, Query()] = None,
) -> Response:
    """Delete one job (``scratchdir``) or a study and every job made of it (``SIUID``).
    A GET that changes state, kept for the seed's scripts: never from a cross-site page."""
    if scratchdir:
        deleted = box.delete_job(scratchdir)
        box.audit(who, "delete", scratchdir)
        return json_bytes({"ok": True, **deleted})
    if SIUID:
        deleted = box.delete_study(SIUID)
        box.audit(who, "delete", SIUID, jobs=deleted["deleted_jobs"])
        return json_bytes({"ok": True, **deleted})
    raise Invalid("give scratchdir or SIUID")


@router.post(
    "/code/php/processZip.php",
    openapi_extra=openapi_form(
        "theFile", ["aetitle"], ["aetitle", "sender", "filename", "jobname", "arguments",
                                 "description"]),
)  # fmt: skip
async def process_zip(request: Request, box: BoxDep, who: Operator) -> Response:
    """A zip of DICOM files (``theFile``) for bucket ``aetitle`` (what ``mb push`` sends).
    Over ``max_upload_bytes``: 413 before the body is read; disk below its reserve: 507."""
    job = await upload_job(request, box, "theFile", lambda form: {
        "aetitle": form.required("aetitle"), "sender": form.get("sender", "upload"),
        "jobname": form.get("jobname", form.get("filename")),
        "arguments": form.get("arguments"), "description": form.get("description")})  # fmt: skip
    box.audit(who, "upload", job.scratchdir, bucket=job.bucket, study=job.study_uid)
    return json_bytes(
        {"ok": True, "scratchdir": job.scratchdir, "pid": job.study_uid, "files": job.nfiles}
    )


@router.get("/code/php/getInstalledBuckets.php", dependencies=VIEW)
def installed_buckets(box: BoxDep) -> Response:
    return json_bytes([b.info for b in box.buckets()])


@router.get("/code/php/getArchive.php", dependencies=VIEW)
def get_archive(box: BoxDep) -> Response:
    """Studies in the archive: PatientID, AccessionNumber, SIUID, StudyDate, PatientName,
    StudyDescription (most recently changed first)."""
    return json_bytes(box.archive_listing())


@router.get("/code/php/getStatus.php", dependencies=VIEW)
def status(box: BoxDep) -> Response:
    """Rows of [bucket, queued, running, workers], as gearman's status was shown."""
    return json_bytes(
        [[r["bucket"], r["queued"], r["running"], r["workers"]] for r in box.queue_status()]
    )


@router.get("/scratch/{scratchdir}/processing.log", dependencies=VIEW)
def processing_log(box: BoxDep, scratchdir: str) -> FileResponse:
    folder = JobFolder(box.job_dir(scratchdir))
    if not folder.has_log():
        raise Invalid("this job has no processing.log")
    return FileResponse(folder.log, media_type="text/plain; charset=utf-8")
