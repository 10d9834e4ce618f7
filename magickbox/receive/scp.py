"""The DICOM receiver: a pynetdicom SCP for C-ECHO and C-STORE.

Datasets are written to disk by pynetdicom as they arrive (chunked mode, so large files
never sit whole in memory) and kept byte for byte: nothing is decoded except the few
header elements up to the StudyInstanceUID, which the arrival's grouping needs. A walk over
the element headers (no values) refuses a data set that does not parse with a failure
status. The called AE title must be an enabled bucket; any other is rejected while
associating.
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
from magickbox.receive.grouping import Grouper
from magickbox.receive.intake import (
    STUDY_UID_TAG,
    Intake,
    Peer,
    association_refusal,
    study_uid_of,
)

log = logging.getLogger(__name__)

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
def read_study_uid(path: Path) -> str:
    """The StudyInstanceUID of a stored file, reading no further than that element."""
    with path.open("rb") as fh:
        ds = read_partial(
            fh, stop_when=lambda tag, _vr, _len: tag > STUDY_UID_TAG, specific_tags=[STUDY_UID_TAG]
        )
    return study_uid_of(str(ds.get("StudyInstanceUID", "") or "").encode())


class Receiver:
    def __init__(
        self, settings: Settings, grouper: Grouper, accepts: Callable[[str], bool]
    ) -> None:
        self.settings = settings
        self.grouper = grouper
        self.accepts = accepts
        self.intake = Intake(settings.aet, grouper)
        self.server: ThreadedAssociationServer | None = None

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
        primitive = rq.primitive
        proposed = primitive.presentation_context_definition_list if primitive else []
        reason = association_refusal(
            self.settings.aet, self.accepts, called, [str(cx.abstract_syntax) for cx in proposed]
        )
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

    def _on_store(self, event: Event) -> int:
        assoc = event.assoc
        peer = Peer(
            calling=str(assoc.requestor.ae_title).strip(),
            called=str(assoc.acceptor.ae_title).strip(),
            address=str(assoc.requestor.address),
        )
        requested = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "").strip()
        return self.intake.store(
            Path(event.dataset_path), event.context.transfer_syntax, requested, peer, id(assoc)
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
