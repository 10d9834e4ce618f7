"""What the routes share: the Box of the app, uploads to disk, zip and JSON responses."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Annotated

import orjson
from fastapi import Depends, Query, Request, Response
from fastapi import Path as FastAPIPath
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from magickbox.box import Box, Invalid
from magickbox.jobs.db import Job
from magickbox.zipstream import stream_zip, zip_dir_entries


def get_box(request: Request) -> Box:
    return request.app.state.box


async def save_upload(box: Box, upload: UploadFile) -> Path:
    """Copy an uploaded file into scratch in chunks (never whole in memory), with a size cap."""
    target = box.settings.scratch / ".uploads" / f"{uuid.uuid4().hex}.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    limit, written = box.settings.max_upload_bytes, 0
    try:
        with target.open("wb") as out:
            while chunk := await upload.read(1 << 20):
                written += len(chunk)
                if written > limit:
                    raise Invalid(f"upload larger than the limit of {limit} bytes")
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


async def upload_job(request: Request, box: Box, upload: UploadFile, **fields: str) -> Job:
    """An uploaded zip becomes a job (``fields`` as :meth:`Box.upload` takes them)."""
    saved = await save_upload(box, upload)
    try:
        peer = request.client.host if request.client else ""
        return await run_in_threadpool(box.upload, saved, caller_ip=peer, **fields)
    finally:
        discard(saved)


def discard(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


BoxDep = Annotated[Box, Depends(get_box)]

# Numbers a database can hold: larger ones are refused with 422, never a 500 from SQLite.
BIGGEST = 2**62
Offset = Annotated[int, Query(ge=0, le=BIGGEST, description="rows to skip")]
RowId = Annotated[int, FastAPIPath(ge=1, le=BIGGEST)]


def json_bytes(data: object, status_code: int = 200) -> Response:
    """JSON made by orjson: getScratch serves tens of thousands of jobs."""
    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json")


def zip_response(box: Box, scratchdir: str, part: str) -> StreamingResponse:
    """A job's OUTPUT or INPUT as a zip streamed as it is made (entries <scratchdir>/<part>/)."""
    folder = box.job_dir(scratchdir) / part
    entries = zip_dir_entries(folder, f"{scratchdir}/{part}") if folder.is_dir() else iter(())
    return StreamingResponse(
        stream_zip(entries),
        media_type="application/zip",
        headers={"Content-Disposition": f"attachment; filename={scratchdir}.zip"},
    )
