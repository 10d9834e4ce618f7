"""A C-STORE sender: the files of a folder to one DICOM node over one association.

pynetdicom negotiates the association, proposing a presentation context for each file's
own SOP class and transfer syntax; the transfer itself runs on its socket (dimse.Link,
the only module touching pynetdicom internals). Which files go is select.py's business.
Each file is sent as it is on disk, streamed in PDU-sized pieces: the data set after the
file meta goes on the wire untouched, compressed or not. Every response is checked: a
file counts as sent only when the peer answered success or warning.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from magickbox.routing import dimse
from magickbox.routing.dimse import Link, LinkError
from magickbox.routing.select import DicomFile, dicom_files

__all__ = ["DicomFile", "SendReport", "Target", "dicom_files", "echo", "send"]

log = logging.getLogger(__name__)


MAX_CONTEXTS = 128  # presentation contexts one association can propose


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    calling_aet: str
    called_aet: str
    timeout: float = 30.0
    tls: ssl.SSLContext | None = None  # None: plain DICOM


@dataclass
class SendReport:
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # name -> why
    error: str = ""  # the association failed (not reachable, rejected, aborted)

    def summary(self, total: int) -> str:
        parts = [f"{len(self.accepted)} of {total} files accepted"]
        if self.refused:
            first = next(iter(self.refused.items()))
            parts.append(f"{len(self.refused)} refused (e.g. {first[0]}: {first[1]})")
        if self.error:
            parts.append(self.error)
        return "; ".join(parts)


# -- sending --------------------------------------------------------------------------------


def send(
    target: Target,
    files: Sequence[DicomFile],
    on_accepted: Callable[[str], None] | None = None,
) -> SendReport:
    """Send ``files`` to ``target``: one association (more only past 128 contexts)."""
    report = SendReport()
    for batch in _batches(files):
        _send_batch(target, batch, report, on_accepted)
        if report.error:
            break
    return report


def _batches(files: Sequence[DicomFile]) -> Iterator[list[DicomFile]]:
    """Groups of files whose (SOP class, syntax) pairs fit into one association."""
    batch: list[DicomFile] = []
    contexts: set[tuple[str, str]] = set()
    for item in files:
        pair = (item.sop_class, item.syntax)
        if pair not in contexts and len(contexts) == MAX_CONTEXTS:
            yield batch
            batch, contexts = [], set()
        contexts.add(pair)
        batch.append(item)
    if batch:
        yield batch


def _send_batch(
    target: Target,
    files: list[DicomFile],
    report: SendReport,
    on_accepted: Callable[[str], None] | None,
) -> None:
    ae = _ae(target)
    for sop_class, syntax in dict.fromkeys((f.sop_class, f.syntax) for f in files):
        ae.add_requested_context(sop_class, syntax)
    assoc = _associate(ae, target, report)
    if assoc is None:
        return
    link = Link(assoc, target.timeout)
    try:
        for msg_id, item in enumerate(files, start=1):
            accepted, why = link.store(item, msg_id & 0xFFFF)
            if accepted:
                report.accepted.append(item.name)
                if on_accepted:
                    on_accepted(item.name)
            else:
                report.refused[item.name] = why
    except (LinkError, OSError) as exc:
        report.error = f"the connection failed: {exc}"
        link.abort()
    else:
        link.release()


def _ae(target: Target) -> AE:
    ae = AE(ae_title=target.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = target.timeout
    ae.connection_timeout = target.timeout
    return ae


def _associate(ae: AE, target: Target, report: SendReport) -> Association | None:
    try:
        tls_args = (target.tls, target.host) if target.tls else None
        assoc = ae.associate(
            target.host, target.port, ae_title=target.called_aet, tls_args=tls_args
        )
    except (OSError, ValueError) as exc:
        where = f"{target.called_aet}@{target.host}:{target.port}"
        report.error = f"cannot associate with {where}: {exc}"
        return None
    if assoc.is_established:
        return assoc
    where = f"{target.called_aet}@{target.host}:{target.port}"
    if dimse.rejected(assoc):
        report.error = f"association with {where} rejected"
    else:  # pynetdicom says "aborted" for a refused connection too: tell which it was
        report.error = f"association with {where} failed: {_reachability(target)}"
    return None


def _reachability(target: Target) -> str:
    try:
        with socket.create_connection((target.host, target.port), timeout=target.timeout) as s:
            if target.tls is not None:  # a failed handshake is the likely cause: name it
                target.tls.wrap_socket(s, server_hostname=target.host).close()
            return "the peer aborted it"
    except ssl.SSLError as exc:
        return f"the TLS handshake failed ({exc.reason or exc})"
    except OSError as exc:
        return f"not reachable ({exc.strerror or exc})"


def echo(target: Target) -> dict[str, object]:
    """C-ECHO ``target``: is the node there and does it accept us?"""
    ae = _ae(target)
    ae.add_requested_context(Verification)
    started = time.monotonic()
    report = SendReport()
    assoc = _associate(ae, target, report)
    if assoc is None:
        return {"ok": False, "status": None, "message": report.error}
    try:
        dimse.park_reactor(assoc)  # or pynetdicom's own thread may take a quick answer
        rsp = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    status = int(rsp.Status) if "Status" in rsp else None
    ms = round((time.monotonic() - started) * 1000, 1)
    ok = status == 0
    return {
        "ok": ok,
        "status": status,
        "message": f"answered in {ms} ms" if ok else "no success status",
    }
