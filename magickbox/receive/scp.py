"""The DICOM receiver: a pynetdicom SCP for C-ECHO and C-STORE.

Datasets are written to disk by pynetdicom as they arrive (chunked mode, so large files
never sit whole in memory) and kept byte for byte: nothing is decoded but the
StudyInstanceUID (which the arrival's grouping needs) and, once per series, the series
views' tags. One walk over the element headers refuses a data set that does not parse with
a failure status and keeps those elements' raw values on the way. The called AE title must
be an enabled bucket; any other is rejected while associating.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.filereader import read_partial
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from magickbox.config import Settings
from magickbox.names import BadName, check_study_uid, check_uid
from magickbox.receive.grouping import ArrivalKey, Grouper
from magickbox.receive.structure import Malformed, walk_stored_file
from magickbox.study.series import VIEW_TAGS, RawHeader

log = logging.getLogger(__name__)

STUDY_UID_TAG = 0x0020000D
SOP_UID_TAG = 0x00080018
# Storage SOP classes of PS3.4 table B.5-1 that pynetdicom's unrestricted storage service
# does not take for storage (it lists them under other services): accepted explicitly, in
# any transfer syntax pydicom knows, so that "every storage class" holds.
EXTRA_STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.200.1",  # CT Defined Procedure Protocol Storage
    "1.2.840.10008.5.1.4.1.1.200.3",  # Protocol Approval Storage
    "1.2.840.10008.5.1.4.1.1.200.7",  # XA Defined Procedure Protocol Storage
    "1.2.840.10008.5.1.4.1.1.201.1",  # Inventory Storage
    "1.2.840.10008.5.1.4.38.1",  # Hanging Protocol Storage
    "1.2.840.10008.5.1.4.39.1",  # Color Palette Storage
    "1.2.840.10008.5.1.4.43.1",  # Generic Implant Template Storage
    "1.2.840.10008.5.1.4.44.1",  # Implant Assembly Template Storage
    "1.2.840.10008.5.1.4.45.1",  # Implant Template Group Storage
)
# C-STORE failure statuses (PS3.4 B.2.3)
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700


def read_study_uid(path: Path) -> str:
    """The StudyInstanceUID of a stored file, reading no further than that element."""
    with path.open("rb") as fh:
        ds = read_partial(
            fh, stop_when=lambda tag, _vr, _len: tag > STUDY_UID_TAG, specific_tags=[STUDY_UID_TAG]
        )
    return study_uid_of(str(ds.get("StudyInstanceUID", "") or "").encode())


def study_uid_of(raw: bytes) -> str:
    uid = raw.decode("ascii", "replace").strip(" \0")
    if not uid:
        raise ValueError("dataset has no StudyInstanceUID")
    return check_study_uid(uid)  # need not be a proper UID: the archive folder is its key


def sop_uid_of(raw: bytes | None, requested: str) -> str:
    """The SOP Instance UID to name a stored file by: the data set's own, else the request's.

    The data set is what is kept, so its (0008,0018) wins; dcmtk puts garbage such as "31"
    into the request for files whose elements are all VR UN.
    """
    for candidate in (raw.decode("ascii", "replace") if raw else "", requested):
        try:
            return check_uid(candidate.strip(" \0"))
        except BadName:
            continue
    raise ValueError(f"no valid SOP Instance UID in the data set or the request ({requested!r})")


class Receiver:
    def __init__(
        self, settings: Settings, grouper: Grouper, accepts: Callable[[str], bool]
    ) -> None:
        self.settings = settings
        self.grouper = grouper
        self.accepts = accepts
        self.server: ThreadedAssociationServer | None = None
        # The one walk over each data set also keeps the series views' tags (raw bytes,
        # decoded only for a series' first file: see study.series.RawHeader).
        self.views = settings.series_views
        self.capture = frozenset((STUDY_UID_TAG, SOP_UID_TAG, *(VIEW_TAGS if self.views else ())))

    def start(self) -> None:
        _config.STORE_RECV_CHUNKED_DATASET = True
        # Every storage SOP class (private and future ones too) in the transfer syntax the
        # peer proposes first: the box keeps what it is given, compressed or big endian.
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        self.settings.partial.mkdir(parents=True, exist_ok=True)
        for leftover in self.settings.partial.iterdir():  # never acknowledged: not accepted
            leftover.unlink(missing_ok=True)
        # pynetdicom writes incoming datasets with NamedTemporaryFile(); pointing the temp
        # folder into scratch keeps them on the archive's filesystem, so storing is a rename.
        tempfile.tempdir = str(self.settings.partial)
        ae = AE(ae_title=self.settings.aet)
        ae.maximum_pdu_size = self.settings.max_pdu
        ae.maximum_associations = 64
        ae.network_timeout = 120
        ae.add_supported_context(Verification)
        for sop_class in EXTRA_STORAGE_CLASSES:
            ae.add_supported_context(sop_class, AllTransferSyntaxes)
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda _e: 0x0000),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        self.server = ae.start_server(
            (self.settings.host, self.settings.dicom_port), block=False, evt_handlers=handlers
        )
        log.info(
            "DICOM receiver %s listening on port %d", self.settings.aet, self.settings.dicom_port
        )

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()

    def _on_requested(self, event: Event) -> None:
        rq = event.assoc.requestor
        called = str(getattr(rq.primitive, "called_ae_title", "")).strip()
        if called == self.settings.aet:
            reason = self._own_title_refusal(event)
        elif self.accepts(called):
            reason = ""
        else:
            reason = "the called AE title is no enabled bucket"
        if not reason:
            event.assoc.acceptor.ae_title = called
            return
        log.warning(
            "rejected association from %s@%s calling %r: %s",
            str(getattr(rq.primitive, "calling_ae_title", "")).strip(),
            rq.address,
            called,
            reason,
        )
        event.assoc.acse.send_reject(0x01, 0x01, 0x07)  # permanent, service user, called AE
        event.assoc.kill()  # waits until the rejection is on the wire, then closes

    def _own_title_refusal(self, event: Event) -> str:
        """Why an association to the box's own AE title is refused ("" if it is not).

        The own title names no bucket, so it serves Verification only. Refusing a
        proposal with anything else makes a sender fail loudly: storescu would
        otherwise exit 0 over images that were all refused.
        """
        primitive = event.assoc.requestor.primitive
        proposed = primitive.presentation_context_definition_list if primitive else []
        others = {str(cx.abstract_syntax) for cx in proposed} - {str(Verification)}
        if not others:
            event.assoc.acceptor.ae_title = self.settings.aet
            return ""
        return f"the box's own AE title names no bucket: Verification only, not {sorted(others)}"

    def _on_store(self, event: Event) -> int:
        path = Path(event.dataset_path)
        assoc = event.assoc
        requested = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "").strip()
        called = str(assoc.acceptor.ae_title).strip()
        try:
            walked = walk_stored_file(path, event.context.transfer_syntax, self.capture)
            found = walked.values
            study_uid = study_uid_of(found.get(STUDY_UID_TAG, b""))
            sop_uid = sop_uid_of(found.get(SOP_UID_TAG), requested)
            if called == self.settings.aet:  # an association to the own title stores nothing
                raise ValueError("the box's own AE title names no bucket")
        except (ValueError, BadName, Malformed, OSError, EOFError) as exc:
            self._refused(assoc, requested, exc, logging.WARNING)
            path.unlink(missing_ok=True)
            return CANNOT_UNDERSTAND
        key = ArrivalKey(
            caller_aet=str(assoc.requestor.ae_title).strip(),
            called_aet=called,
            caller_ip=str(assoc.requestor.address),
            study_uid=study_uid,
        )
        header = (
            RawHeader(found, walked.vrs, walked.implicit, walked.little) if self.views else None
        )
        try:
            self.grouper.add_file(id(assoc), key, path, f"{sop_uid}.dcm", header)
        except OSError as exc:  # disk full or gone: the sender is told and may try again
            self._refused(assoc, sop_uid, exc, logging.ERROR)
            path.unlink(missing_ok=True)
            return OUT_OF_RESOURCES
        return 0x0000

    @staticmethod
    def _refused(assoc: Association, sop_uid: str, reason: Exception, level: int) -> None:
        """One log line per refused C-STORE naming who sent what to whom and why."""
        log.log(
            level,
            "C-STORE refused: calling AE %r at %s, called AE %r, SOP Instance UID %r: %s",
            str(assoc.requestor.ae_title).strip(),
            assoc.requestor.address,
            str(assoc.acceptor.ae_title).strip(),
            sop_uid,
            reason,
        )

    def _on_closed(self, event: Event) -> None:
        self.grouper.association_closed(id(event.assoc))
        discard_partial(event.assoc)


def discard_partial(assoc: Association) -> None:
    """Remove the data set a peer was sending when the connection went (never acknowledged).

    pynetdicom writes an incoming data set to a temporary file that only a complete
    C-STORE hands over; a peer that vanishes mid-send leaves it open and on disk.
    """
    message = getattr(assoc.dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return
    partial.close()
    Path(partial.name).unlink(missing_ok=True)
    log.info("discarded a data set cut off by %s", assoc.requestor.address)
