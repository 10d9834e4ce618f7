"""TLS contexts of DICOM: the receiver's TLS port and routing destinations that say "TLS".

Made from PEM files with the standard library's ``ssl``; every unusable file (missing,
unreadable, not PEM, a key that is not the certificate's) is an :class:`Invalid` naming
the file, so a setting or a routing table with a typo is refused with a clear message.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from magickbox.errors import Invalid

# TLS 1.2 at least: what DICOM's secure transport profiles (PS3.15 B.9 ff.) still allow.
MIN_VERSION = ssl.TLSVersion.TLSv1_2


def server_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """The TLS port's context; with ``ca``, a client certificate signed by it is required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSION
    _load_chain(ctx, cert, key)
    if ca is not None:
        _load_ca(ctx, ca)
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no certificate, no association
    return ctx


@dataclass(frozen=True)
class ClientFiles:
    """A routing destination's "TLS": the CA to trust (empty: the system's), and the box's
    own certificate and key when the peer asks for one."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    check_hostname: bool = True


def client_context(files: ClientFiles, base: Path) -> ssl.SSLContext:
    """The context of a send to a TLS destination (relative paths are in ``base``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MIN_VERSION
    if files.ca:
        _load_ca(ctx, base / files.ca)
    else:
        ctx.load_default_certs()
    ctx.check_hostname = files.check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED  # a peer that cannot prove who it is gets no data
    if files.cert or files.key:
        if not (files.cert and files.key):
            raise Invalid('TLS: "cert" and "key" go together')
        _load_chain(ctx, base / files.cert, base / files.key)
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    for what, path in (("certificate", cert), ("key", key)):
        if not path.is_file():
            raise Invalid(f"TLS {what} {path}: no such file")
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise Invalid(f"TLS certificate {cert} with key {key}: unusable ({_why(exc)})") from exc


def _load_ca(ctx: ssl.SSLContext, ca: Path) -> None:
    if not ca.is_file():
        raise Invalid(f"TLS CA file {ca}: no such file")
    try:
        ctx.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise Invalid(f"TLS CA file {ca}: unusable ({_why(exc)})") from exc


def _why(exc: Exception) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
