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

from magickbox.box import Invalid
from magickbox.study.classify import RulesError
from magickbox.web.deps import BoxDep, discard, json_bytes, save_upload

router = APIRouter(prefix="/api/v1/classify", tags=["classification"])

MAX_TEST_FILES = 1000


@router.get("/rules")
def get_rules(box: BoxDep) -> Response:
    """The home's classifyRules.json as stored (text, so a hand-written file shows as it is)."""
    return Response(box.classify_rules_text(), media_type="application/json")


@router.put("/rules")
async def put_rules(request: Request, box: BoxDep) -> Response:
    """Replace the rules with the JSON body, after checking every type and rule."""
    text = (await request.body()).decode("utf-8", "replace")
    try:
        saved = box.save_classify_rules(text)
    except RulesError as exc:
        body = {"ok": False, "detail": str(exc), "problems": exc.problems}
        return json_bytes(body, status_code=400)
    return json_bytes(saved)


@router.post("/test")
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
