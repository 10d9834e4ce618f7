"""Series classification over HTTP: the home's rules and a test of them on a series.

``classifyRules.json`` is saved only after a strict check: a file with mistakes is answered
with 400 and every problem by its place (as the routing table's save), and the stored
rules stay as they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from magickbox.auth.roles import Role
from magickbox.box import Box, Invalid
from magickbox.study.classify import RulesError
from magickbox.web.deps import BoxDep, discard, json_bytes
from magickbox.web.security import require

router = APIRouter(prefix="/api/v1/classify", tags=["classification"])
VIEW, OPERATE, ADMIN = [require(Role.viewer)], [require(Role.operator)], [require(Role.admin)]

MAX_TEST_FILES = 1000


@router.get("/rules", dependencies=VIEW)
def get_rules(box: BoxDep) -> Response:
    """The home's classifyRules.json as stored (text, so a hand-written file shows as it is)."""
    return Response(box.classify_rules_text(), media_type="application/json")


@router.put("/rules", dependencies=ADMIN)
async def put_rules(request: Request, box: BoxDep) -> Response:
    """Replace the rules with the JSON body, after checking every type and rule."""
    text = (await request.body()).decode("utf-8", "replace")
    try:
        saved = box.save_classify_rules(text)
    except RulesError as exc:
        body = {"ok": False, "detail": str(exc), "problems": exc.problems}
        return json_bytes(body, status_code=400)
    return json_bytes(saved)


async def save_upload(box: Box, upload: UploadFile) -> Path:
    """A file to classify, copied into scratch in chunks (never whole in memory), capped."""
    target = box.new_upload_path()
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


@router.post("/test", dependencies=OPERATE)
async def test_rules(
    box: BoxDep,
    file: Annotated[list[UploadFile] | None, File(description="DICOM file(s)")] = None,
    study_uid: Annotated[str | None, Form()] = None,
    series_uid: Annotated[str | None, Form()] = None,
    rules: Annotated[str | None, Form(description="rules to try instead of the saved")] = None,
) -> Response:
    """Classify uploaded DICOM files (each series apart) or a stored series (``study_uid``,
    optionally ``series_uid``): per type, whether it matched and each rule's reason."""
    files = file or []
    if len(files) > MAX_TEST_FILES:
        raise Invalid(f"at most {MAX_TEST_FILES} files at once")
    saved: list[Path] = []
    try:
        for upload in files:
            saved.append(await save_upload(box, upload))
        try:
            result = await run_in_threadpool(
                box.classify_test, files=saved or None, study_uid=study_uid or None,
                series_uid=series_uid or None, rules_text=rules or None,
            )  # fmt: skip
        except RulesError as exc:
            body = {"ok": False, "detail": str(exc), "problems": exc.problems}
            return json_bytes(body, status_code=400)
    finally:
        for path in saved:
            discard(path)
    return Response(orjson.dumps(result, default=str), media_type="application/json")
