"""The original's endpoints, kept for the scripts that use them (see the seed's manual)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, StreamingResponse

from magickbox.box import Invalid
from magickbox.jobfolder import JobFolder
from magickbox.web.deps import BoxDep, json_bytes, upload_job, zip_response

router = APIRouter(tags=["original endpoints"])


@router.get("/code/php/getScratch.php")
def get_scratch(request: Request, box: BoxDep) -> Response:
    """All jobs, newest first, as the original listed them."""
    rendered = request.app.state.scratch_renderer.render(
        box.scratch_rows(), box.settings.scratch
    )
    return Response(rendered, media_type="application/json")


@router.get("/code/php/getOutputZip.php")
def get_output_zip(box: BoxDep, folder: str, type: str = "output") -> StreamingResponse:
    """The job's OUTPUT (or INPUT with ``type=input``) as a zip streamed while it is made."""
    if type.lower() not in ("output", "input"):
        raise Invalid("type must be output or input")
    return zip_response(box, folder, type.upper())


@router.get("/code/php/deleteStudy.php")
def delete_study(
    box: BoxDep, scratchdir: str | None = None, SIUID: Annotated[str | None, Query()] = None
) -> Response:
    """Delete one job (``scratchdir``) or a study and every job made of it (``SIUID``)."""
    if scratchdir:
        box.delete_job(scratchdir)
        return json_bytes({"ok": True, "deleted": scratchdir})
    if SIUID:
        return json_bytes({"ok": True, **box.delete_study(SIUID)})
    raise Invalid("give scratchdir or SIUID")


@router.post("/code/php/processZip.php")
async def process_zip(
    request: Request,
    box: BoxDep,
    theFile: UploadFile,
    aetitle: Annotated[str, Form()],
    sender: Annotated[str, Form()] = "",
    filename: Annotated[str, Form()] = "",
    jobname: Annotated[str, Form()] = "",
    arguments: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
) -> Response:
    """A zip of DICOM files for bucket ``aetitle`` (what ``mb push`` sends)."""
    job = await upload_job(request, box, theFile, aetitle=aetitle, sender=sender or "upload",
                           jobname=jobname or filename, arguments=arguments,
                           description=description)  # fmt: skip
    return json_bytes(
        {"ok": True, "scratchdir": job.scratchdir, "pid": job.study_uid, "files": job.nfiles}
    )


@router.get("/code/php/getInstalledBuckets.php")
def installed_buckets(box: BoxDep) -> Response:
    return json_bytes([b.info for b in box.buckets()])


@router.get("/code/php/getArchive.php")
def get_archive(box: BoxDep) -> Response:
    """Studies in the archive: PatientID, AccessionNumber, SIUID, StudyDate, PatientName,
    StudyDescription (most recently changed first)."""
    return json_bytes(box.archive_listing())


@router.get("/code/php/getStatus.php")
def status(box: BoxDep) -> Response:
    """Rows of [bucket, queued, running, workers], as gearman's status was shown."""
    return json_bytes(
        [[r["bucket"], r["queued"], r["running"], r["workers"]] for r in box.queue_status()]
    )


@router.get("/scratch/{scratchdir}/processing.log")
def processing_log(box: BoxDep, scratchdir: str) -> FileResponse:
    folder = JobFolder(box.job_dir(scratchdir))
    if not folder.has_log():
        raise Invalid("this job has no processing.log")
    return FileResponse(folder.log, media_type="text/plain; charset=utf-8")
