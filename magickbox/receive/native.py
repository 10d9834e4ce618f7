"""The DICOM receiver's own upper layer: each association a loop on its blocking socket.

pynetdicom passes every PDU through a reactor and two polling threads per association,
which held the receiver to a third of dcmtk storescp's speed. Here an association is a
plain loop on its socket: the A-ASSOCIATE-RQ is read and answered (``acse.py``), then each
P-DATA-TF is read PDV by PDV, a data set is written to its file as its fragments arrive
(memory stays bounded whatever length a peer declares), and once it is complete it is
checked and kept (``intake.py``) before the C-STORE-RSP goes out. C-ECHO, A-RELEASE and
A-ABORT are handled; anything else is answered with an A-ABORT. Every association is
negotiated on a thread of the box; a plain-TCP one then goes on in one of the receiver's
worker processes (``workers.py``) with this same code, unless ``receiver_processes`` is 0.

Every read has a deadline: a peer gets ``ARTIM`` seconds for its request and
``PDU_TIMEOUT`` for each PDU after it, so idle or trickling connections cannot hold the
port. Past ``MAX_ASSOCIATIONS`` a request is rejected (transient, local limit exceeded).
Who may associate is decided by ``admission.admit`` and every refusal is recorded. With
``dicom_tls_port`` set, a second listener does the same behind TLS, each handshake on
its connection's own thread with a time limit.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable

from pydicom.uid import AllTransferSyntaxes

from magickbox import disk, wire
from magickbox.receive import acse
from magickbox.receive.admission import VERIFICATION, Request, admit
from magickbox.receive.incoming import MEMORY, Incoming, Spare
from magickbox.receive.intake import (
    CANNOT_UNDERSTAND,
    NOT_KEPT,
    OUT_OF_RESOURCES,
    SUCCESS,
    Kept,
    Peer,
    ReceiverBase,
    refused,
)
from magickbox.receive.rejections import Rejection
from magickbox.receive.structure import walk_buffer
from magickbox.receive.tlsserver import HANDSHAKE_SECONDS, tls_context
from magickbox.receive.workers import Handover, Pool

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
INBOX = 1 << 18  # bytes read from the socket at a time (PDV headers and fragments)
FIRST_INBOX = 1 << 12  # the inbox of a connection not yet associated (idle ones cost little)
DIRECT = 1 << 14  # a fragment part at least this large is received straight into its data set
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
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
    before, after = _meta_parts(sop_class, syntax, calling)
    body = before + _meta_element(0x0003, b"UI", wire.uid(sop_instance)) + after
    return _PREAMBLE + _meta_element(0x0000, b"UL", len(body).to_bytes(4, "little")) + body


_PREAMBLE = bytes(128) + b"DICM"


def _meta_element(elem: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


@functools.lru_cache(maxsize=256)
def _meta_parts(sop_class: str, syntax: str, calling: str) -> tuple[bytes, bytes]:
    """The file meta elements before and after (0002,0003), the same for every data set
    of one SOP class, transfer syntax and caller: made once, not per data set."""
    before = (
        struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2)
        + b"\x00\x01"
        + _meta_element(0x0002, b"UI", wire.uid(sop_class))
    )
    after = (
        _meta_element(0x0010, b"UI", wire.uid(syntax))
        + _meta_element(0x0012, b"UI", wire.uid(acse.IMPLEMENTATION_CLASS_UID))
        + _meta_element(0x0013, b"SH", _even(acse.IMPLEMENTATION_VERSION.encode()))
    )
    if calling:
        after += _meta_element(0x0016, b"AE", _even(calling.encode("ascii", "replace")[:16]))
    return before, after


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
        self.partial = self.settings.partial  # where data sets are written while they arrive
        processes = self.settings.receiver_processes  # 0: every association on a thread here
        self.pool = Pool(self, processes) if processes else None

    def start(self) -> None:
        self.stopping.clear()
        partial = self.partial
        partial.mkdir(parents=True, exist_ok=True)
        for leftover in partial.iterdir():  # never acknowledged: not accepted
            leftover.unlink(missing_ok=True)
        if self.pool is not None:  # forked before listening: they never hold the ports
            self.pool.start()
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
        port = int(sock.getsockname()[1])  # now: a quick stop may close it before the loop runs
        loop = threading.Thread(
            target=self._accept_loop,
            args=(sock, port, tls),
            name=f"dicom-accept-{port}",
            daemon=True,
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
        if self.pool is not None:
            self.pool.stop()
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

    def _accept_loop(self, listener: socket.socket, port: int, tls: ssl.SSLContext | None) -> None:
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
        self.incoming: Incoming | None = None  # the data set of the C-STORE under way
        self.spare: Spare | None = None  # the file the next data set will fill
        self.memory: bytearray | None = None  # the data sets' buffer, made at the first
        # What has come from the socket and is not yet used: inbox[head:tail]. One recv
        # usually brings several PDV headers and fragments, so most reads make no call.
        self.inbox = bytearray(FIRST_INBOX)  # INBOX once associated (_transfer)
        self.inview = memoryview(self.inbox)
        self.head = self.tail = 0
        self.timeout = -1.0  # the socket's timeout as last set (set only when it must change)
        self.slot = False
        self.id = id(self)  # its name for the grouper (a handed-over one gets the pool's)
        self.handed = False  # carried on by a worker process (workers.py) from its transfer on

    @classmethod
    def carried(
        cls, receiver: NativeReceiver, conn: socket.socket, handover: Handover
    ) -> Association:
        """In a worker process: the association the box negotiated, at its data transfer."""
        association = cls(receiver, conn, handover.peer.address, handover.port, None)
        association.id, association.peer = handover.assoc_id, handover.peer
        association.contexts, association.peer_max = handover.contexts, handover.peer_max
        association.slot = True  # the box's slot: the box gives it back when we are done
        pending = handover.pending
        association.inbox = bytearray(max(FIRST_INBOX, len(pending)))
        association.inview = memoryview(association.inbox)
        association.inbox[: len(pending)] = pending
        association.tail = len(pending)
        return association

    # -- the life of an association ------------------------------------------------------

    def run(self) -> None:
        self._guarded(self._begin)

    def carry_on(self) -> None:
        """In a worker process: the data transfer, the release or abort, the cleanup."""
        self._guarded(self._transfer)

    def _begin(self) -> None:
        if self.tls is not None and not self._handshake(self.tls):
            return
        if not self._associate():
            return
        pool = self.rx.pool
        if pool is not None and self.tls is None and pool.hand_over(self):
            self.handed = True  # the worker answers, releases and cleans up
            return
        self._transfer()

    def unread(self) -> bytes:
        """What was read from the socket and not yet used (for a worker to go on with)."""
        return bytes(self.inview[self.head : self.tail])

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
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
            if not self.handed:
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

    def _grow_inbox(self) -> None:
        """The full inbox, once associated (what it holds already moves along)."""
        left = bytes(self.inview[self.head : self.tail])
        self.inbox = bytearray(INBOX)
        self.inview = memoryview(self.inbox)
        self.inbox[: len(left)] = left
        self.head, self.tail = 0, len(left)

    def _transfer(self) -> None:
        self._grow_inbox()
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
            self._fill(6)
            item, context_id, control = wire.PDV_HEADER.unpack_from(self.inbox, self.head)
            self.head += 6
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
                if request is None or self.incoming is None:
                    raise wire.WireError("a data set fragment without a C-STORE request")
                self._fragment(self.incoming, size)
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
        if self.memory is None:
            self.memory = bytearray(MEMORY)
        meta = file_meta(request.sop_class, request.sop_instance, syntax, self.peer.calling)
        spare, self.spare = self.spare or Spare(self.rx.partial), None
        self.incoming = Incoming(self.memory, meta, spare)
        return request

    def _stored(self, context_id: int, request: wire.Command) -> None:
        """Answer a complete data set: checked, on disk and in its arrival first."""
        incoming, self.incoming = self.incoming, None
        assert incoming is not None
        incoming.finish()
        try:
            status, kept = self._verdict(context_id, request, incoming)
        finally:  # placed, or never to be kept
            incoming.release()
        try:
            self._respond(context_id, request, status)
        finally:  # counts, views and metrics wait until the sender has its answer
            if kept is not None:
                self.rx.intake.received(kept, self.peer)
        # The next data set's file is made now, while the peer reads the answer and
        # sends its next request, not when that request has come.
        self.spare = Spare(self.rx.partial)

    def _verdict(
        self, context_id: int, request: wire.Command, incoming: Incoming
    ) -> tuple[int, Kept | None]:
        """The C-STORE status of a data set in its file (and, when it was walked in memory
        and kept, what it was kept as: it is recorded after the answer)."""
        intake, settings = self.rx.intake, self.rx.settings
        if incoming.error is not None:  # the disk filled while writing: not acknowledged
            log.error("could not write a data set from %s: %s", self._who(), incoming.error)
            incoming.discard()
            return OUT_OF_RESOURCES, None
        syntax = self.contexts[context_id].transfer_syntax
        if incoming.spilled:  # larger than memory: walked from its file
            if disk.refused_write(incoming.path, incoming.size, settings):  # below the reserve
                return OUT_OF_RESOURCES, None
            return intake.store(incoming.path, syntax, request.sop_instance, self.peer,
                                self.id), None  # fmt: skip
        try:
            walked = walk_buffer(incoming.data, syntax, intake.capture)
            checked = intake.examine(walked, request.sop_instance, self.peer, incoming.size)
        except NOT_KEPT as exc:
            refused(self.peer, request.sop_instance, exc, logging.WARNING)
            incoming.discard()
            return CANNOT_UNDERSTAND, None
        if disk.refused_write(incoming.path, incoming.size, settings):  # below the reserve
            return OUT_OF_RESOURCES, None
        kept = intake.keep(incoming.path, checked, self.peer, self.id)
        return (OUT_OF_RESOURCES, None) if kept is None else (SUCCESS, kept)

    def _respond(self, context_id: int, request: wire.Command, status: int) -> None:
        self.conn.sendall(wire.pdv(context_id, wire.COMMAND_BIT | wire.LAST_BIT,
                                   wire.response(request, status)))  # fmt: skip

    # -- the socket ------------------------------------------------------------------------

    def _pdu_header(self) -> tuple[int, int]:
        self._fill(6)
        kind, _reserved, length = wire.PDU_HEADER.unpack_from(self.inbox, self.head)
        self.head += 6
        return kind, length

    def _fill(self, n: int) -> None:
        """Have at least ``n`` (at most the inbox's size) bytes in the inbox."""
        if self.head == self.tail:
            self.head = self.tail = 0
        elif self.head + n > len(self.inbox):  # too little room behind: move the rest to the front
            left = self.tail - self.head
            self.inbox[:left] = bytes(self.inview[self.head : self.tail])
            self.head, self.tail = 0, left
        while self.tail - self.head < n:
            self.tail += self._recv_into(self.inview[self.tail :])

    def _read(self, n: int) -> bytes:
        """The next ``n`` bytes (any number: a peer's declared length is not buffered whole
        beyond the inbox)."""
        if n <= len(self.inbox):
            self._fill(n)
            data = bytes(self.inview[self.head : self.head + n])
            self.head += n
            return data
        buf = bytearray(n)
        view = memoryview(buf)
        got = self.tail - self.head
        view[:got] = self.inview[self.head : self.tail]
        self.head = self.tail = 0
        while got < n:
            got += self._recv_into(view[got:])
        return bytes(buf)

    def _fragment(self, incoming: Incoming, n: int) -> None:
        """Move the next ``n`` bytes (a data set fragment) from the socket into ``incoming``:
        what the inbox holds first, then large parts straight from the socket."""
        while n:
            avail = self.tail - self.head
            if avail:
                take = min(avail, n)
                incoming.put(self.inview[self.head : self.head + take])
                self.head += take
                n -= take
                continue
            self.head = self.tail = 0
            room = incoming.room(n) if n >= DIRECT else None
            if room is not None:  # no copy through the inbox
                got = self._recv_into(room)
                incoming.advance(got)
                n -= got
            else:
                self.tail = self._recv_into(self.inview)

    def _recv_into(self, view: memoryview) -> int:
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise PeerGone("timed out")
            if abs(self.timeout - left) > 1.0:  # a system call: only when it moved a second
                self._set_timeout(left)
            if QUICKACK is not None:
                # A sender with Nagle's algorithm on (dcmtk without TCP_NODELAY=1) holds the
                # tail of a PDU until its data is acknowledged, while Linux delays the ACK
                # for a reply to ride on: ~40 ms lost per image. Quick-ack mode is dropped by
                # the kernel after a while, so it is asked for again before each read (in a
                # try: contextlib.suppress would cost three more calls per read).
                try:  # noqa: SIM105
                    self.conn.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
                except OSError:
                    pass
            try:
                got = self.conn.recv_into(view)
            except (TimeoutError, BlockingIOError):
                continue  # the deadline decides, at the top
            if not got:
                raise PeerGone("the peer closed the connection")
            return got

    def _set_timeout(self, seconds: float) -> None:
        """Bound each read and write of the socket by ``seconds``.

        A Python socket timeout makes every recv and send a poll() first; a plain socket
        stays blocking and the kernel keeps the time (SO_RCVTIMEO, SO_SNDTIMEO: a call
        past it fails with EAGAIN), one system call per read. TLS keeps Python's timeout.
        """
        self.timeout = seconds
        if self.tls is not None:
            self.conn.settimeout(seconds)
            return
        whole = int(seconds)
        limit = struct.pack("@ll", whole, int((seconds - whole) * 1e6))
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)

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
        if self.incoming is None:
            return
        incoming, self.incoming = self.incoming, None
        incoming.discard()
        log.info("discarded a data set cut off by %s", self._who())

    def _close(self) -> None:
        self._discard_partial()
        if self.spare is not None:
            self.spare.discard()
        if self.slot:
            self.rx.give_slot()
            self.rx.grouper.association_closed(self.id)
        with contextlib.suppress(OSError):
            self.conn.close()
        self.rx.forget(self.raw)
