"""The box's one error hierarchy.

Core functions raise these; each front maps them once: the web app to an HTTP status
(:data:`HTTP_STATUS`, used by the one exception handler in ``web/app.py``), the CLIs to a
message and an exit code. Anything else that escapes is a bug (a 500).
"""

from __future__ import annotations

from typing import ClassVar


class MagickBoxError(Exception):
    """Base of every error a front may show to its user as it is."""

    http_status = 500


class NotFound(MagickBoxError, LookupError):
    """No such job, study, bucket, send or file."""

    http_status = 404


class Invalid(MagickBoxError, ValueError):
    """The request itself is wrong: a bad name, argument, zip or routing table."""

    http_status = 400


class Conflict(MagickBoxError):
    """The thing exists but is in a state that does not allow this (e.g. retry a running job)."""

    http_status = 409


class StorageFull(MagickBoxError, OSError):
    """The disk (or the box's reserve on it) is full: try again later."""

    http_status = 507


class BadMeasures(Invalid):
    """A bucket's measures.json that is not a flat object (or a list of them) of numbers
    and strings; the message names the place. A job's end only logs it."""


class Unauthorized(MagickBoxError):
    """No credentials, or credentials that are wrong, revoked or expired: log in first."""

    http_status = 401
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="magickbox"'}


class Forbidden(MagickBoxError):
    """Known credentials whose role may not do this (or a request a browser marked cross-site)."""

    http_status = 403


class TooManyRequests(MagickBoxError):
    """Too many failed logins from this address or for this user: wait and try again."""

    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, retry_after))}


class TooLarge(MagickBoxError):
    """A request body over the box's cap (max_upload_bytes)."""

    http_status = 413


class TimedOut(MagickBoxError):
    """A request body that came too slowly (upload_timeout, upload_min_rate)."""

    http_status = 408
