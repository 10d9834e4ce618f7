"""A C-STORE sender: the files of a folder to one DICOM node over one association.

Each file is sent as it is on disk (pynetdicom's chunked send: the data set after the
file meta goes on the wire untouched, compressed or not), in a presentation context
proposed for its own SOP class and transfer syntax. Every response is checked: a file
counts as sent only when the peer answered success or warning.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from magickbox.routing.rules import which_keeps, which_tags

log = logging.getLogger(__name__)

# Send files' bytes as they are (never decoded and re-encoded). This switch is global in
# pynetdicom; it only changes how a C-STORE *request* is built from a file path.
_config.STORE_SEND_CHUNKED_DATASET = True

MAX_CONTEXTS = 128  # presentation contexts one association can propose
WARNING_STATUSES = {0x0001, 0xB000, 0xB006, 0xB007}  # stored, with a remark


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    calling_aet: str
    called_aet: str
    timeout: float = 30.0


@dataclass(frozen=True)
class DicomFile:
    path: Path
    name: str  # the path relative to the sent folder: the key of "already accepted"
    sop_class: str
    syntax: str


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


# -- choosing files -----------------------------------------------------------------------


def dicom_files(folder: Path, which: Sequence[dict[str, str]] = ()) -> list[DicomFile]:
    """The DICOM files under ``folder`` (not following links out of it) that ``which`` keeps."""
    tags = which_tags(list(which))
    found = []
    for path in sorted(_walk(folder)):
        item = _probe(path, folder)
        if item is None:
            continue
        if which and not which_keeps(list(which), _tag_values(path, tags)):
            continue
        found.append(item)
    return found


def _walk(folder: Path) -> Iterator[Path]:
    if not folder.is_dir():
        return
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


def _probe(path: Path, root: Path) -> DicomFile | None:
    """Part 10 files only (what dcmftest accepted for the original); others are skipped."""
    try:
        meta = read_file_meta_info(path)
        return DicomFile(
            path=path,
            name=path.relative_to(root).as_posix(),
            sop_class=str(meta.MediaStorageSOPClassUID),
            syntax=str(meta.TransferSyntaxUID),
        )
    except (InvalidDicomError, AttributeError, OSError, ValueError, EOFError):
        return None


def _tag_values(path: Path, tags: list[int]) -> dict[int, str]:
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except Exception:  # an unreadable header: no values, so only empty-matching filters keep it
        return {}
    values = {}
    for tag in tags:
        elem = ds.get(tag)
        if elem is not None and elem.value is not None:
            value = elem.value
            values[tag] = "\\".join(map(str, value)) if elem.VM > 1 else str(value)
    return values


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
    try:
        for item in files:
            if not assoc.is_established:
                report.error = "the association was closed by the peer"
                return
            status, why = _store(assoc, item)
            if status:
                report.accepted.append(item.name)
                if on_accepted:
                    on_accepted(item.name)
            else:
                report.refused[item.name] = why
    finally:
        if assoc.is_established:
            assoc.release()


def _store(assoc: Association, item: DicomFile) -> tuple[bool, str]:
    try:
        rsp = assoc.send_c_store(item.path)
    except ValueError as exc:  # no accepted context for this SOP class / syntax
        return False, str(exc).splitlines()[0]
    except (OSError, RuntimeError) as exc:
        return False, f"could not be sent: {exc}"
    if "Status" not in rsp:
        return False, "no response (timeout or connection lost)"
    status = int(rsp.Status)
    if status == 0x0000 or status in WARNING_STATUSES:
        return True, ""
    comment = f" {rsp.ErrorComment}" if "ErrorComment" in rsp else ""
    return False, f"status 0x{status:04X}{comment}"


def _ae(target: Target) -> AE:
    ae = AE(ae_title=target.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = target.timeout
    ae.connection_timeout = target.timeout
    return ae


def _associate(ae: AE, target: Target, report: SendReport) -> Association | None:
    try:
        assoc = ae.associate(target.host, target.port, ae_title=target.called_aet)
    except (OSError, ValueError) as exc:
        where = f"{target.called_aet}@{target.host}:{target.port}"
        report.error = f"cannot associate with {where}: {exc}"
        return None
    if assoc.is_established:
        # pynetdicom's reactor sleeps this long between looks at the socket (default 1 ms);
        # with one request in flight at a time it sets the pace of the whole send.
        assoc.dul._run_loop_delay = 0.0001
        return assoc
    where = f"{target.called_aet}@{target.host}:{target.port}"
    if assoc.is_rejected:
        report.error = f"association with {where} rejected"
    else:  # pynetdicom says "aborted" for a refused connection too: tell which it was
        report.error = f"association with {where} failed: {_reachability(target)}"
    return None


def _reachability(target: Target) -> str:
    try:
        with socket.create_connection((target.host, target.port), timeout=target.timeout):
            return "the peer aborted it"
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
