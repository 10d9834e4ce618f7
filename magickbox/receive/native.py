"""The DICOM receiver's own upper layer: one thread per association, on blocking sockets.

pynetdicom passes every PDU through a reactor and two polling threads per association,
which held the receiver to a third of dcmtk storescp's speed. Here an association is a
plain loop on its socket: the A-ASSOCIATE-RQ is read and answered (``acse.py``), then each
P-DATA-TF is read PDV by PDV, a data set is written to its file as its fragments arrive
(memory stays bounded whatever length a peer declares), and once it is complete it is
checked and kept (``intake.py``) before the C-STORE-RSP goes out. C-ECHO, A-RELEASE and
A-ABORT are handled; anything else is answered with an A-ABORT.

Every read has a deadline: a peer gets ``ARTIM`` seconds for its request and
``PDU_TIMEOUT`` for each PDU after it, so idle or trickling connections cannot hold the
port. Past ``MAX_ASSOCIATIONS`` a request is rejected (transient, local limit exceeded).
Who may associate is decided by ``admission.admit`` and every refusal is recorded. With
``dicom_tls_port`` set, a second listener does the same behind TLS, each handshake on
its connection's own thread with a time limit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO

from pydicom.uid import AllTransferSyntaxes

from magickbox import disk, wire
from magickbox.receive import acse
from magickbox.receive.admission import VERIFICATION, Request, admit
from magickbox.receive.intake import OUT_OF_RESOURCES, SUCCESS, Peer, ReceiverBase
from magickbox.receive.rejections import Rejection
from magickbox.receive.tlsserver import HANDSHAKE_SECONDS, tls_context

log = logging.getLogger(__name__)

ARTIM = 10.0  # seconds for the association request (and the release) to arrive
PDU_TIMEOUT = 60.0  # seconds for each PDU once associated: a stalled peer is let go
LINGER = ARTIM  # seconds we wait for a peer to close after a rejection or a release
# pynetdicom 3.0's requestor loses an A-ASSOCIATE-RJ that arrives before its ACSE thread
# has looked at the fresh connection (it then reports an abort): a rejection is held
# this long so a peer's requestor thread has run by the time it is read.
REJECT_HOLD = 0.1
MAX_ASSOCIATIONS = 64  # established at once; more are rejected as transient
MAX_CONNECTIONS = 256  # sockets at once, associated or not; more are closed at once
MAX_REQUEST = 1 << 16  # bytes of an A-ASSOCIATE-RQ (a few hundred contexts)
MAX_COMMAND = 1 << 16  # bytes of a command set
CHUNK = 1 << 18  # bytes read from the socket at a time while a data set streams to disk
KNOWN_SYNTAXES = frozenset(str(uid) for uid in AllTransferSyntaxes)
# Services whose SOP classes are not storage (PS3.4): query/retrieve, worklist, MPPS,
# storage commitment, print, ... are refused per context; everything else, private and
# future storage classes included, is kept as it comes.
NOT_STORAGE = (
    "1.2.840.10008.1.",  # verification, storage commitment, instance availability ...
    "1.2.840.10008.3.",  # detached management, MPPS
    "1.2.840.10008.4.",  # media storage directory
    "1.2.840.10008.5.1.1.",  # print management
    "1.2.840.10008.5.1.4.1.2.",  # query/retrieve
    "1.2.840.10008.5.1.4.31",  # modality worklist
    "1.2.840.10008.5.1.4.32",  # general purpose worklist
    "1.2.840.10008.5.1.4.33",  # instance availability notification
    "1.2.840.10008.5.1.4.34.",  # unified procedure step
    "1.2.840.10008.5.1.4.37.",  # relevant patient information query
    "1.2.840.10008.5.1.4.41",  # implant template query/retrieve
    "1.2.840.10008.5.1.4.42",
)


class PeerGone(ConnectionError):
    """The peer closed the connection, aborted, or let a deadline pass."""


def answer_context(proposed: acse.Proposed) -> acse.Answer:
    """Accept Verification and any storage class, in the first transfer syntax we know."""
    syntax = next((ts for ts in proposed.transfer_syntaxes if ts in KNOWN_SYNTAXES), None)
    storage = proposed.abstract_syntax == VERIFICATION or not proposed.abstract_syntax.startswith(
        NOT_STORAGE
    )
    if not storage or not proposed.abstract_syntax:
        result = acse.ABSTRACT_NOT_SUPPORTED
    elif syntax is None:
        result = acse.TRANSFER_NOT_SUPPORTED
    else:
        result = acse.ACCEPTED
    first = proposed.transfer_syntaxes[0] if proposed.transfer_syntaxes else "1.2.840.10008.1.2"
    return acse.Answer(proposed.context_id, result, syntax or first)


def file_meta(sop_class: str, sop_instance: str, syntax: str, calling: str) -> bytes:
    """The preamble and file meta group (explicit VR little endian) of a stored data set."""

    def el(elem: int, vr: bytes, value: bytes) -> bytes:
        return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value

    body = (
        struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2)
        + b"\x00\x01"
        + el(0x0002, b"UI", wire.uid(sop_class))
        + el(0x0003, b"UI", wire.uid(sop_instance))
        + el(0x0010, b"UI", wire.uid(syntax))
        + el(0x0012, b"UI", wire.uid(acse.IMPLEMENTATION_CLASS_UID))
        + el(0x0013, b"SH", _even(acse.IMPLEMENTATION_VERSION.encode()))
    )
    if calling:
        body += el(0x0016, b"AE", _even(calling.encode("ascii", "replace")[:16]))
    return bytes(128) + b"DICM" + el(0x0000, b"UL", struct.pack("<I", len(body))) + body


def _even(raw: bytes) -> bytes:
    return raw + b" " if len(raw) % 2 else raw


class NativeReceiver(ReceiverBase):
    """Listens on the DICOM port and runs each association on a thread of its own."""

    def _prepare(self) -> None:
        self.listeners: list[socket.socket] = []
        self.threads: list[threading.Thread] = []  # one accept loop per listener
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        self.associated = 0

    def start(self) -> None:
        self.stopping.clear()
        partial = self.settings.partial
        partial.mkdir(parents=True, exist_ok=True)
        for leftover in partial.iterdir():  # never acknowledged: not accepted
            leftover.unlink(missing_ok=True)
        self._listen(self.settings.dicom_port, None)
        log.info(
            "DICOM receiver %s listening on port %d", self.settings.aet, self.settings.dicom_port
        )
        if self.settings.dicom_tls_port:  # same buckets and rules; TLS in front
            self._listen(self.settings.dicom_tls_port, tls_context(self.settings))
            log.info("DICOM receiver listening with TLS on port %d", self.settings.dicom_tls_port)

    def _listen(self, port: int, tls: ssl.SSLContext | None) -> None:
        sock = socket.create_server((self.settings.host, port), backlog=128)
        self.listeners.append(sock)
        loop = threading.Thread(
            target=self._accept_loop, args=(sock, tls), name=f"dicom-accept-{port}", daemon=True
        )
        loop.start()
        self.threads.append(loop)

    def stop(self) -> None:
        self.stopping.set()
        for sock in self.listeners:
            # shutdown first: on Linux it wakes the thread blocked in accept(), where a
            # bare close() would leave the port listening until that call returns
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        with self.lock:
            open_now = list(self.connections)
        for conn in open_now:  # their threads see the error, clean up and end
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.listeners.clear()
        self.threads.clear()

    def restart(self) -> None:
        """Stop what is left of the listeners and listen again (the heartbeat's repair)."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return bool(self.threads) and all(t.is_alive() for t in self.threads)

    def open_associations(self) -> int:
        with self.lock:
            return self.associated

    def _accept_loop(self, listener: socket.socket, tls: ssl.SSLContext | None) -> None:
        port = int(listener.getsockname()[1])
        while not self.stopping.is_set():
            try:
                conn, addr = listener.accept()
            except OSError:
                if self.stopping.is_set():
                    return
                time.sleep(0.05)  # e.g. out of file descriptors: breathe, go on
                continue
            with self.lock:
                full = len(self.connections) >= MAX_CONNECTIONS
                if not full:
                    self.connections.add(conn)
            if full:
                log.warning("connection from %s closed: %d already open", addr[0], MAX_CONNECTIONS)
                conn.close()
                continue
            # Requests and answers are small and strictly alternate: Nagle's algorithm
            # would hold each answer back for the peer's delayed ACK.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            association = Association(self, conn, str(addr[0]), port, tls)
            threading.Thread(target=association.run, name=f"dicom-{addr[0]}", daemon=True).start()

    def refuse(self, peer: Peer, port: int, reason: str) -> None:
        log.warning("rejected association from %s@%s calling %r: %s", peer.calling or "?",
                    peer.address, peer.called, reason)  # fmt: skip
        self.rejected(Rejection(peer.calling, peer.called, peer.address, port, reason))

    def forget(self, conn: socket.socket) -> None:
        with self.lock:
            self.connections.discard(conn)

    def take_slot(self) -> bool:
        with self.lock:
            if self.associated >= MAX_ASSOCIATIONS:
                return False
            self.associated += 1
            return True

    def give_slot(self) -> None:
        with self.lock:
            self.associated -= 1


class Association:
    """One peer's association, from its request to its release or abort."""

    def __init__(
        self,
        receiver: NativeReceiver,
        conn: socket.socket,
        address: str,
        port: int,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.rx = receiver
        self.conn = conn
        self.raw = conn  # the accepted socket, as the receiver counts it
        self.address = address
        self.port = port
        self.tls = tls
        self.peer = Peer(calling="", called="", address=address)
        self.contexts: dict[int, acse.Answer] = {}
        self.peer_max = 0
        self.deadline = 0.0
        self.partial: tuple[Path, BinaryIO] | None = None
        self.write_error: OSError | None = None  # of the data set being written
        self.slot = False

    # -- the life of an association ------------------------------------------------------

    def run(self) -> None:
        try:
            if self.tls is not None and not self._handshake(self.tls):
                return
            if self._associate():
                self._transfer()
        except PeerGone as exc:
            log.info("association with %s ended: %s", self._who(), exc)
        except wire.WireError as exc:
            log.warning("aborting the association with %s: %s", self._who(), exc)
            self._send_quietly(wire.abort(source=2, reason=0))
        except OSError as exc:
            log.info("association with %s broke: %s", self._who(), exc)
        except Exception:  # a bug must cost one association, never the receiver
            log.exception("association with %s failed", self._who())
            self._send_quietly(wire.abort(source=2, reason=0))
        finally:
            self._close()

    def _handshake(self, tls: ssl.SSLContext) -> bool:
        self.conn.settimeout(HANDSHAKE_SECONDS)
        try:
            self.conn = tls.wrap_socket(self.conn, server_side=True)
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            self.rx.refuse(self.peer, self.port, f"TLS handshake failed: {exc}")
            return False
        return True

    def _associate(self) -> bool:
        self.deadline = time.monotonic() + ARTIM
        kind, length = self._pdu_header()
        if kind != wire.ASSOCIATE_RQ:
            raise wire.WireError(f"PDU type 0x{kind:02X} before an association request")
        if length > MAX_REQUEST:
            raise wire.WireError(f"an association request of {length} bytes")
        req = acse.parse_request(self._read(length))
        self.peer = Peer(calling=req.calling, called=req.called, address=self.address)
        asked = Request(req.calling, req.called, self.address,
                        frozenset(cx.abstract_syntax for cx in req.contexts))  # fmt: skip
        settings = self.rx.settings
        decision = admit(asked, settings.aet, self.rx.bucket_of, settings.dicom_allowed_callers)
        reason, rejection = decision.reason, (1, 1, decision.diagnostic)
        if not reason:  # below the disk reserve: transient, the sender tries again later
            reason, rejection = disk.association_refusal(settings), acse.LOCAL_LIMIT
        if not reason and not self.rx.take_slot():
            reason, rejection = f"{MAX_ASSOCIATIONS} associations are open", acse.LOCAL_LIMIT
        if reason:
            self.rx.refuse(self.peer, self.port, reason)
            time.sleep(REJECT_HOLD)
            self.conn.sendall(acse.reject(*rejection))
            self._linger()
            return False
        self.slot = True
        answers = [answer_context(cx) for cx in req.contexts]
        self.contexts = {a.context_id: a for a in answers if a.result == acse.ACCEPTED}
        self.peer_max = req.max_pdu
        self.conn.sendall(acse.accept(req, answers, self.rx.settings.max_pdu))
        return True

    def _transfer(self) -> None:
        command = bytearray()
        request: wire.Command | None = None
        while True:
            self.deadline = time.monotonic() + PDU_TIMEOUT
            kind, length = self._pdu_header()
            if kind == wire.P_DATA:
                request = self._p_data(length, command, request)
            elif kind == wire.RELEASE_RQ:
                self._read(length)
                self._discard_partial()
                self.conn.sendall(wire.release_rp())
                self._linger()
                return
            elif kind == wire.ABORT:
                self._read(min(length, 64))
                raise PeerGone("the peer aborted")
            else:
                raise wire.WireError(f"unexpected PDU type 0x{kind:02X}")

    def _p_data(
        self, length: int, command: bytearray, request: wire.Command | None
    ) -> wire.Command | None:
        """Read one P-DATA-TF PDV by PDV; the request whose data set is still to come."""
        left = length
        while left:
            if left < 6:
                raise wire.WireError("a PDV header cut by its PDU's end")
            item, context_id, control = wire.PDV_HEADER.unpack(self._read(6))
            size = item - 2
            if item < 2 or size > left - 6:
                raise wire.WireError(f"a PDV of length {item} does not fit its PDU")
            left -= 6 + size
            if context_id not in self.contexts:
                raise wire.WireError(f"presentation context {context_id} was not accepted")
            if control & wire.COMMAND_BIT:
                if len(command) + size > MAX_COMMAND:
                    raise wire.WireError("a command set larger than 64 KiB")
                command += self._read(size)
                if control & wire.LAST_BIT:
                    request = self._command(context_id, bytes(command))
                    command.clear()
            else:
                if request is None or self.partial is None:
                    raise wire.WireError("a data set fragment without a C-STORE request")
                self._stream_into(self.partial[1], size)
                if control & wire.LAST_BIT:
                    self._stored(context_id, request)
                    request = None
        return request

    def _command(self, context_id: int, raw: bytes) -> wire.Command | None:
        request = wire.parse_request(raw)
        if request.field == wire.C_ECHO_RQ:
            self._respond(context_id, request, SUCCESS)
            return None
        if request.field != wire.C_STORE_RQ or not request.has_data:
            raise wire.WireError(f"a DIMSE request this box does not serve (0x{request.field:04X})")
        syntax = self.contexts[context_id].transfer_syntax
        fd, name = tempfile.mkstemp(dir=self.rx.settings.partial, suffix=".part")
        fh = os.fdopen(fd, "wb", buffering=1 << 20)
        self.partial = (Path(name), fh)
        self.write_error = None
        fh.write(file_meta(request.sop_class, request.sop_instance, syntax, self.peer.calling))
        return request

    def _stored(self, context_id: int, request: wire.Command) -> None:
        assert self.partial is not None
        path, fh = self.partial
        self.partial = None
        try:
            fh.close()
        except OSError as exc:
            self.write_error = self.write_error or exc
        if self.write_error is not None:  # the disk filled while writing: not acknowledged
            log.error("could not write a data set from %s: %s", self._who(), self.write_error)
            self.write_error = None
            path.unlink(missing_ok=True)
            self._respond(context_id, request, OUT_OF_RESOURCES)
            return
        if disk.refused_store(path, self.rx.settings):  # the disk went below its reserve
            self._respond(context_id, request, OUT_OF_RESOURCES)
            return
        syntax = self.contexts[context_id].transfer_syntax
        status = self.rx.intake.store(path, syntax, request.sop_instance, self.peer, id(self))
        self._respond(context_id, request, status)

    def _respond(self, context_id: int, request: wire.Command, status: int) -> None:
        self.conn.sendall(wire.pdv(context_id, wire.COMMAND_BIT | wire.LAST_BIT,
                                   wire.response(request, status)))  # fmt: skip

    # -- the socket ------------------------------------------------------------------------

    def _pdu_header(self) -> tuple[int, int]:
        kind, _reserved, length = wire.PDU_HEADER.unpack(self._read(6))
        return kind, length

    def _read(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            got += self._recv_into(view[got:])
        return bytes(buf)

    def _stream_into(self, fh: BinaryIO, n: int) -> None:
        """Copy the next ``n`` bytes from the socket into ``fh``, CHUNK at a time."""
        buf = bytearray(min(n, CHUNK))
        view = memoryview(buf)
        while n:
            got = self._recv_into(view[: min(n, CHUNK)])
            if self.write_error is None:
                try:
                    fh.write(view[:got])
                except OSError as exc:  # ENOSPC and the like: read on, answer A700 at the end
                    self.write_error = exc
            n -= got

    def _recv_into(self, view: memoryview) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise PeerGone("timed out")
        self.conn.settimeout(left)
        try:
            got = self.conn.recv_into(view)
        except TimeoutError as exc:
            raise PeerGone("timed out") from exc
        if not got:
            raise PeerGone("the peer closed the connection")
        return got

    def _linger(self) -> None:
        """After a rejection or a release the requestor closes the connection (PS3.8 9.1,
        ARTIM): wait for that, up to LINGER seconds, so that our answer is read first. A
        close from our side at once can make a peer see the connection reset, not the answer.
        """
        with contextlib.suppress(OSError):  # a timeout or a reset: we close anyway
            self.conn.settimeout(LINGER)
            while self.conn.recv(4096):
                pass

    def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.conn.settimeout(2)
            self.conn.sendall(data)

    def _who(self) -> str:
        return f"{self.peer.calling or '?'}@{self.address}"

    def _discard_partial(self) -> None:
        if self.partial is None:
            return
        path, fh = self.partial
        self.partial = None
        with contextlib.suppress(OSError):
            fh.close()
        path.unlink(missing_ok=True)
        log.info("discarded a data set cut off by %s", self._who())

    def _close(self) -> None:
        self._discard_partial()
        if self.slot:
            self.rx.give_slot()
            self.rx.grouper.association_closed(id(self))
        with contextlib.suppress(OSError):
            self.conn.close()
        self.rx.forget(self.raw)
