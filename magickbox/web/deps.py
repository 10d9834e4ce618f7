"""What the routes share: the Box of the app, uploads to disk, zip and JSON responses."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Depends, Query, Request, Response
from fastapi import Path as FastAPIPath
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from magickbox.box import Box
from magickbox.jobs.db import Job
from magickbox.web.uploads import UploadForm, read_upload
from magickbox.zipstream import stream_zip, zip_dir_entries


def get_box(request: Request) -> Box:
    return request.app.state.box


async def upload_job(
    request: Request, box: Box, file_field: str, fields: Callable[[UploadForm], dict[str, str]]
) -> Job:
    """The upload of ``request`` (read by ``web/uploads.py``) becomes a job; ``fields`` maps
    the form to :meth:`Box.upload`'s arguments."""
    form = await read_upload(request, box, file_field)
    try:
        peer = request.client.host if request.client else ""
        return await run_in_threadpool(box.upload, form.path, caller_ip=peer, **fields(form))
    finally:
        discard(form.path)


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


# What a zip download declares in the OpenAPI document (not the default JSON).
ZIP_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "a zip, streamed while it is made",
        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def zip_response(box: Box, scratchdir: str, part: str) -> StreamingResponse:
    """A job's OUTPUT or INPUT as a zip streamed as it is made (entries <scratchdir>/<part>/)."""
    folder = box.job_dir(scratchdir) / part
    entries = zip_dir_entries(folder, f"{scratchdir}/{part}") if folder.is_dir() else iter(())
    return StreamingResponse(
        stream_zip(entries),
        media_type="application/zip",
        headers={"Content-Disposition": f"attachment; filename={scratchdir}.zip"},
    )
