"""Upload bodies (processZip, POST /api/v1/jobs): checked before they are read, streamed
with a counter straight into the file the job is made from, and timed out when slow.

Starlette's form parser would spool the file part to a temporary file (in the receiver's
partial folder, which the DICOM receiver points ``tempfile`` at) before the route runs, so
neither the cap nor the disk could be asked first. Here the route reads the body itself:

1. a Content-Length over ``max_upload_bytes`` is answered 413, and a disk below its
   reserve (or one the upload would take below it) 507, before a byte of the body is read;
2. the multipart body is parsed as it comes (python-multipart), the file part written to
   ``scratch/.uploads/<id>.zip``; the body is counted, so one without a Content-Length is
   cut off at the cap too, and the disk is asked again every few MiB;
3. a body that brings less than ``upload_min_rate`` bytes a second over ``upload_timeout``
   seconds is cut off with 408.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from magickbox.box import Box
from magickbox.errors import Invalid, TimedOut, TooLarge

FIELD_LIMIT = 64 << 10  # bytes of a text field: names, arguments, descriptions
DISK_CHECK_EVERY = 8 << 20  # bytes of body between two looks at the disk


UPLOAD_ERRORS = {
    400: "Not a multipart form, a missing field, or a bad or unsafe zip",
    404: "No enabled bucket has this AE title",
    408: "The body came too slowly (upload_timeout, upload_min_rate)",
    413: "Over max_upload_bytes (by Content-Length: refused before the body is read)",
    507: "The disk is below the box's reserve (disk_reserve), or would be after this upload",
}


@dataclass
class UploadForm:
    """A parsed upload: its text fields, and its file part saved at ``path``."""

    path: Path
    fields: dict[str, str] = field(default_factory=dict)
    filename: str = ""
    has_file: bool = False

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name) or default

    def required(self, name: str) -> str:
        if not self.fields.get(name):
            raise Invalid(f"form field {name!r} is required")
        return self.fields[name]


def openapi_form(file_field: str, required: list[str], fields: list[str]) -> dict[str, Any]:
    """The request body the route reads itself, for /docs and /openapi.json."""
    properties: dict[str, Any] = {file_field: {"type": "string", "format": "binary"}}
    properties |= {name: {"type": "string"} for name in fields}
    schema = {"type": "object", "properties": properties, "required": [file_field, *required]}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema}},
        },
        "responses": {str(code): {"description": why} for code, why in UPLOAD_ERRORS.items()},
    }


async def read_upload(request: Request, box: Box, file_field: str) -> UploadForm:
    """Check, then stream the multipart body of ``request`` (see the module docstring)."""
    settings = box.settings
    length = content_length(request)
    if length is not None and length > settings.max_upload_bytes:
        raise TooLarge(
            f"upload of {length} bytes is over the limit of {settings.max_upload_bytes} "
            "bytes (max_upload_bytes)"
        )
    box.check_upload_room(length)
    boundary = multipart_boundary(request)
    form = UploadForm(box.new_upload_path())
    try:
        with form.path.open("wb") as out:
            await _FormParser(form, file_field, out).feed(request, box, boundary)
    except BaseException:
        form.path.unlink(missing_ok=True)
        raise
    if not form.has_file:
        form.path.unlink(missing_ok=True)
        raise Invalid(f"the form has no file part {file_field!r}")
    return form


def content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise Invalid(f"bad Content-Length {raw!r}")
    return int(raw)


def multipart_boundary(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise Invalid("an upload must be a multipart/form-data body with a boundary")
    return boundary


class _FormParser:
    """python-multipart's callbacks: text fields into memory, the file part to ``out``."""

    def __init__(self, form: UploadForm, file_field: str, out: IO[bytes]) -> None:
        self.form, self.file_field, self.out = form, file_field, out
        self._header, self._value = b"", b""
        self._disposition = b""
        self._name, self._is_file = "", False
        self._text = bytearray()

    async def feed(self, request: Request, box: Box, boundary: bytes) -> None:
        callbacks: Any = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }
        parser = MultipartParser(boundary, callbacks)
        checked = 0
        async for chunk in body_chunks(request, box):
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise Invalid(f"bad multipart body: {exc}") from exc
            checked += len(chunk)
            if checked >= DISK_CHECK_EVERY:
                checked = 0
                box.check_upload_room(0)  # the disk may be filled by others meanwhile
        try:
            parser.finalize()
        except MultipartParseError as exc:
            raise Invalid(f"bad multipart body: {exc}") from exc

    def _part_begin(self) -> None:
        self._disposition, self._header, self._value = b"", b"", b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def _headers_finished(self) -> None:
        _kind, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = self._name == self.file_field
        if self._is_file:
            if self.form.has_file:
                raise Invalid(f"more than one {self.file_field!r} part")
            self.form.has_file = True
            self.form.filename = options.get(b"filename", b"").decode("utf-8", "replace")
        self._text = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.out.write(data[start:end])  # OSError (disk full): 507 by the app's handler
            return
        self._text += data[start:end]
        if len(self._text) > FIELD_LIMIT:
            raise Invalid(f"form field {self._name!r} is over {FIELD_LIMIT} bytes")

    def _part_end(self) -> None:
        if not self._is_file and self._name:
            self.form.fields[self._name] = self._text.decode("utf-8", "replace")


async def body_chunks(request: Request, box: Box) -> AsyncIterator[bytes]:
    """The request body as it arrives, counted against the cap and timed (see _Pace)."""
    settings = box.settings
    pace = _Pace(settings.upload_timeout, settings.upload_min_rate)
    received, cap = 0, settings.max_upload_bytes
    while True:
        message = await pace.next_message(request)
        if message["type"] == "http.disconnect":
            raise Invalid("the client went away before the upload was complete")
        body: bytes = message.get("body", b"")
        received += len(body)
        if received > cap:
            raise TooLarge(f"upload is over the limit of {cap} bytes (max_upload_bytes)")
        pace.arrived(len(body))
        if body:
            yield body
        if not message.get("more_body", False):
            return


class _Pace:
    """Each window of ``window`` seconds must bring ``min_rate * window`` bytes or more."""

    def __init__(self, window: float, min_rate: int) -> None:
        self.window, self.min_rate = window, min_rate
        loop = asyncio.get_running_loop()
        self._time = loop.time
        self._start, self._bytes = self._time(), 0

    def arrived(self, nbytes: int) -> None:
        self._bytes += nbytes
        if self._time() - self._start >= self.window:
            self._close_window()

    def _close_window(self) -> None:
        if self._bytes < self.min_rate * self.window:
            raise TimedOut(
                f"upload too slow: {self._bytes} bytes in the last {self.window:g} s, "
                f"less than {self.min_rate} bytes a second (upload_timeout, upload_min_rate)"
            )
        self._start, self._bytes = self._time(), 0

    async def next_message(self, request: Request) -> dict[str, Any]:
        while True:
            left = max(0.01, self._start + self.window - self._time())
            with contextlib.suppress(TimeoutError):
                return dict(await asyncio.wait_for(request.receive(), left))
            self._close_window()  # raises unless the window brought enough before
