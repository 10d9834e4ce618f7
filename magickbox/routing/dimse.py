"""The DIMSE wire of a C-STORE, run on the socket of an association pynetdicom negotiated.

Data sets are framed into P-DATA-TF PDVs and responses read back with the codec the
receiver uses too (magickbox/wire.py), after pynetdicom's threads of the association are
parked so the socket is ours. This is the ONLY module that touches pynetdicom internals
(private attributes of Association and DULServiceProvider);
tests/unit/test_pynetdicom_internals.py names each.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from typing import BinaryIO

from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE

from magickbox import wire
from magickbox.routing.select import DicomFile

WARNING_STATUSES = {0x0001, 0xB000, 0xB006, 0xB007}  # stored, with a remark
SEND_BUFFER = 256 << 10  # bytes of PDUs gathered per socket write
MAX_FRAGMENT = 1 << 20  # PDV size when the peer sets no maximum PDU length


class LinkError(RuntimeError):
    """The peer aborted, answered out of turn, or the connection broke."""


class Link:
    """The transfer phase of an association pynetdicom negotiated, run on its socket.

    pynetdicom passes every PDU through two threads that poll with sleeps, which made a
    send of small images 10-15x slower than dcmtk's storescu here. So pynetdicom does
    what it is good at, the association negotiation (contexts, PDU sizes, rejections),
    then hands over: its threads are stopped, and C-STORE requests and responses go
    over the socket directly, one at a time, as storescu does. Release and abort are
    sent here too.
    """

    def __init__(self, assoc: Association, timeout: float) -> None:
        self.assoc = assoc
        self.contexts = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])): int(cx.context_id or 0)
            for cx in assoc.accepted_contexts
        }
        peer_max = int(assoc.acceptor.maximum_length or 0)  # 0: the peer takes any size
        self.fragment = (peer_max - 6) if peer_max else MAX_FRAGMENT
        _park_threads(assoc)
        transport = assoc.dul.socket
        if transport is None or transport.socket is None:
            raise LinkError("the association has no socket")
        self.sock: socket.socket = transport.socket
        self.sock.settimeout(timeout)

    def store(self, item: DicomFile, msg_id: int) -> tuple[bool, str]:
        """Send one file's data set as it is on disk; (accepted, why not)."""
        context_id = self.contexts.get((item.sop_class, item.syntax))
        if context_id is None:
            return False, f"the peer accepted no context for {item.sop_class} in {item.syntax}"
        command = wire.store_command(item.sop_class, item.sop_instance, msg_id)
        with item.path.open("rb") as fh:
            fh.seek(item.offset)
            self._send(context_id, command, fh)
        status, comment = self._response(msg_id)
        if status == 0x0000 or status in WARNING_STATUSES:
            return True, ""
        return False, f"status 0x{status:04X}" + (f" {comment}" if comment else "")

    def _send(self, context_id: int, command: bytes, data: BinaryIO) -> None:
        out = bytearray(wire.pdv(context_id, 0x03, command))  # command, last fragment
        chunk = data.read(self.fragment)
        while True:
            following = data.read(self.fragment) if chunk else b""
            out += wire.pdv(context_id, 0x00 if following else 0x02, chunk)
            if len(out) >= SEND_BUFFER or not following:
                self.sock.sendall(out)
                out.clear()
            if not following:
                return
            chunk = following

    def _response(self, msg_id: int) -> tuple[int, str]:
        command = bytearray()
        while True:
            kind, body = self._read_pdu()
            if kind == 0x07:
                raise LinkError("the peer aborted the association")
            if kind != 0x04:
                raise LinkError(f"unexpected PDU type 0x{kind:02X} instead of a response")
            try:
                for _context, control, data in wire.pdvs(body):
                    if control & wire.COMMAND_BIT:
                        command += data
                        if control & wire.LAST_BIT:
                            return wire.parse_store_response(bytes(command), msg_id)
            except wire.WireError as exc:
                raise LinkError(str(exc)) from exc

    def _read_pdu(self) -> tuple[int, bytes]:
        kind, _reserved, length = struct.unpack(">BBI", self._recv(6))
        return kind, self._recv(length)

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            got = self.sock.recv(n - len(buf))
            if not got:
                raise LinkError("the peer closed the connection")
            buf += got
        return bytes(buf)

    def release(self) -> None:
        """A-RELEASE: ask, wait for the answer (or a timeout), close."""
        try:
            self.sock.sendall(wire.release_rq())
            while self._read_pdu()[0] not in (0x06, 0x07):
                pass
        except (LinkError, OSError):
            pass  # the data was answered already; a peer that hangs up early is fine
        self._close(released=True)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(wire.abort())
        self._close(released=False)

    def _close(self, released: bool) -> None:
        assoc = self.assoc
        with contextlib.suppress(OSError):
            self.sock.close()
        assoc.is_established = False
        assoc.is_released, assoc.is_aborted = released, not released
        assoc._kill = True
        assoc._reactor_checkpoint.set()  # lets pynetdicom's parked thread end


def _park_threads(assoc: Association) -> None:
    """Stop pynetdicom's two threads of this association without touching the socket:
    the association thread parked (:func:`park_reactor`), the DUL thread told to end."""
    park_reactor(assoc)
    assoc.dul._kill_thread = True
    assoc.dul.join(5)


def park_reactor(assoc: Association) -> None:
    """Park pynetdicom's association thread at its checkpoint, and wait until it really
    waits there (it sets ``_is_paused`` on every turn of its loop just before it looks).

    pynetdicom 3.0's ``send_c_echo``/``send_c_store`` pause that thread too, but go on at
    the first sight of the flag: a thread that had just passed the checkpoint then takes
    the response meant for the call when the peer answers quickly, and the call waits its
    DIMSE timeout for nothing (seen under load: the peer's log shows the answer). Call
    this before them; they wake the thread again when they return.
    """
    checkpoint = assoc._reactor_checkpoint
    checkpoint.clear()
    # A thread blocked in Event.wait is one of its condition's waiters: exact, not a guess.
    waiters = checkpoint._cond._waiters  # type: ignore[attr-defined]
    while assoc.is_alive() and not waiters:
        time.sleep(0.0001)


def rejected(assoc: Association) -> bool:
    """Did the peer reject the association, even if pynetdicom says it was aborted?

    pynetdicom 3.0's requestor checks that its connection is open only after the DUL
    thread has connected and sent the request; a peer quick enough to answer with an
    A-ASSOCIATE-RJ (which makes the DUL close the connection) before that check ran is
    reported as an abort, the rejection left unread in the DUL's queue to the user.
    """
    if assoc.is_rejected:
        return True
    if assoc.is_established:
        return False
    return any(
        isinstance(item, A_ASSOCIATE) and item.result in (0x01, 0x02)
        for item in list(assoc.dul.to_user_queue.queue)
    )
