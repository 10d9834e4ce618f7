"""The box's one error hierarchy.

Core functions raise these; each front maps them once: the web app to an HTTP status
(:data:`HTTP_STATUS`, used by the one exception handler in ``web/app.py``), the CLIs to a
message and an exit code. Anything else that escapes is a bug (a 500).
"""

from __future__ import annotations


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


class TooLarge(MagickBoxError):
    """A request body over the box's cap (max_upload_bytes)."""

    http_status = 413


class TimedOut(MagickBoxError):
    """A request body that came too slowly (upload_timeout, upload_min_rate)."""

    http_status = 408
