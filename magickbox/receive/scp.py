"""The DICOM receiver: a pynetdicom SCP for C-ECHO and C-STORE.

Datasets are written to disk by pynetdicom as they arrive (chunked mode, so large files
never sit whole in memory) and kept byte for byte: nothing is decoded but the
StudyInstanceUID (which the arrival's grouping needs) and, once per series, the series
views' tags (receive/intake.py). A walk over
the element headers (no values) refuses a data set that does not parse with a failure
status. Who may associate is decided by ``admission.admit`` (the called AE title must be
an enabled bucket, the caller on its allow-list); any other is rejected while associating
and recorded (``rejections.py``). With ``dicom_tls_port`` the same AE also listens with
TLS (``tlsserver.py``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from pydicom.filereader import read_partial
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from magickbox import disk
from magickbox.receive.admission import Request, admit
from magickbox.receive.intake import (
    OUT_OF_RESOURCES,
    STUDY_UID_TAG,
    Peer,
    ReceiverBase,
    study_uid_of,
)
from magickbox.receive.rejections import Rejection
from magickbox.receive.tlsserver import start_tls_server

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


def association_request(assoc: Association) -> Request:
    """What the admission rule is told of an association being requested."""
    primitive = assoc.requestor.primitive
    proposed = primitive.presentation_context_definition_list if primitive else []
    return Request(
        calling_aet=str(getattr(primitive, "calling_ae_title", "")).strip(),
        called_aet=str(getattr(primitive, "called_ae_title", "")).strip(),
        address=str(assoc.requestor.address),
        contexts=frozenset(str(cx.abstract_syntax) for cx in proposed),
    )


class Receiver(ReceiverBase):
    def _prepare(self) -> None:
        self.servers: list[ThreadedAssociationServer] = []

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
        disk.guard_dataset_writes()  # a full disk answers A700 instead of dropping the peer
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
        address = (self.settings.host, self.settings.dicom_port)
        server = ae.start_server(address, block=False, evt_handlers=handlers)
        assert server is not None  # non-blocking: the running server
        self.servers.append(server)
        log.info(
            "DICOM receiver %s listening on port %d", self.settings.aet, self.settings.dicom_port
        )
        if self.settings.dicom_tls_port:  # same AE, handlers and rules; TLS in front
            self.servers.append(start_tls_server(ae, self.settings, handlers, self.rejected))

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
        self.servers.clear()

    def restart(self) -> None:
        """Stop what is left of the listeners and listen again (the heartbeat's repair)."""
        try:
            self.stop()
        except Exception:  # a broken server is what is being repaired
            log.exception("receiver: stopping the old listener failed")
            self.servers.clear()
        self.start()

    @property
    def running(self) -> bool:
        return bool(self.servers)

    def open_associations(self) -> int:
        return sum(len(server.active_associations) for server in self.servers)

    def _on_requested(self, event: Event) -> None:
        if disk.refused_association(event.assoc, self.settings):
            return
        request = association_request(event.assoc)
        decision = admit(
            request, self.settings.aet, self.bucket_of, self.settings.dicom_allowed_callers
        )
        if decision.accepted:
            event.assoc.acceptor.ae_title = request.called_aet
            return
        log.warning(
            "rejected association from %s@%s calling %r: %s",
            request.calling_aet,
            request.address,
            request.called_aet,
            decision.reason,
        )
        self.rejected(
            Rejection(
                request.calling_aet,
                request.called_aet,
                request.address,
                int(event.assoc.acceptor.port or 0),
                decision.reason,
            )
        )
        # permanent, by the service user, with the reason the decision names
        event.assoc.acse.send_reject(0x01, 0x01, decision.diagnostic)
        event.assoc.kill()  # waits until the rejection is on the wire, then closes

    def _on_store(self, event: Event) -> int:
        if disk.refused_store(Path(event.dataset_path), self.settings, event):
            return OUT_OF_RESOURCES
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
