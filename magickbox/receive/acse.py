"""Association negotiation of the receiver: an A-ASSOCIATE-RQ read, an AC or RJ written.

PS3.8 section 9.3: the request's fixed fields and items (application context,
presentation contexts, user information) are parsed with bounds checked on every length,
and the answer names, per presentation context, what was accepted. What to accept is
decided by the caller (``receive/native.py``); this module only speaks the format.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from magickbox import wire

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# A UUID-derived UID (the 2.25 arc of ISO/IEC 9834-8): unique without a registered root.
IMPLEMENTATION_CLASS_UID = "2.25.198717632809208011704374411550418394352"
IMPLEMENTATION_VERSION = "MAGICKBOX"

# Presentation context results (PS3.8 table 9-18)
ACCEPTED, ABSTRACT_NOT_SUPPORTED, TRANSFER_NOT_SUPPORTED = 0, 3, 4

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 table 9-21; admission.py names the
# service user's reasons
LOCAL_LIMIT = (2, 3, 2)  # transient, by the presentation layer: local limit exceeded


@dataclass
class Proposed:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass
class Request:
    called: str
    calling: str
    application_context: str = APPLICATION_CONTEXT
    contexts: list[Proposed] = field(default_factory=list)
    max_pdu: int = 0  # the largest P-DATA-TF the peer takes; 0: any
    implementation_class: str = ""


def parse_request(body: bytes) -> Request:
    """An A-ASSOCIATE-RQ PDU's body (after its 6-byte header)."""
    if len(body) < 68:
        raise wire.WireError("an A-ASSOCIATE-RQ shorter than its fixed fields")
    req = Request(called=_ae(body[4:20]), calling=_ae(body[20:36]))
    for kind, value in _items(body, 68):
        if kind == 0x10:
            req.application_context = _text(value)
        elif kind == 0x20:
            req.contexts.append(_presentation_context(value))
        elif kind == 0x50:
            _user_information(value, req)
    return req


def _items(body: bytes, offset: int) -> list[tuple[int, bytes]]:
    """The (type, value) items from ``offset`` on: 1 byte type, 1 reserved, 2 length."""
    out = []
    while offset < len(body):
        if offset + 4 > len(body):
            raise wire.WireError("a truncated item")
        kind, _reserved, length = struct.unpack_from(">BBH", body, offset)
        end = offset + 4 + length
        if end > len(body):
            raise wire.WireError(f"an item of type 0x{kind:02X} longer than its PDU")
        out.append((kind, body[offset + 4 : end]))
        offset = end
    return out


def _presentation_context(value: bytes) -> Proposed:
    if len(value) < 4:
        raise wire.WireError("a truncated presentation context")
    proposed = Proposed(context_id=value[0], abstract_syntax="", transfer_syntaxes=[])
    for kind, sub in _items(value, 4):
        if kind == 0x30:
            proposed.abstract_syntax = _text(sub)
        elif kind == 0x40:
            proposed.transfer_syntaxes.append(_text(sub))
    return proposed


def _user_information(value: bytes, req: Request) -> None:
    for kind, sub in _items(value, 0):
        if kind == 0x51 and len(sub) == 4:
            req.max_pdu = struct.unpack(">I", sub)[0]
        elif kind == 0x52:
            req.implementation_class = _text(sub)


def _ae(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \0")


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \0")


@dataclass(frozen=True)
class Answer:
    """What this box answers to one proposed context."""

    context_id: int
    result: int
    transfer_syntax: str


def accept(req: Request, answers: list[Answer], max_pdu: int) -> bytes:
    """The A-ASSOCIATE-AC PDU: the request's titles echoed, one item per context."""
    fixed = struct.pack(">HH", 1, 0) + _ae16(req.called) + _ae16(req.calling) + bytes(32)
    items = _item(0x10, req.application_context.encode("ascii"))
    for a in answers:
        syntax = _item(0x40, a.transfer_syntax.encode("ascii"))
        items += _item(0x21, bytes([a.context_id, 0, a.result, 0]) + syntax)
    user = (
        _item(0x51, struct.pack(">I", max_pdu))
        + _item(0x52, IMPLEMENTATION_CLASS_UID.encode("ascii"))
        + _item(0x55, IMPLEMENTATION_VERSION.encode("ascii"))
    )
    return wire.pdu(wire.ASSOCIATE_AC, fixed + items + _item(0x50, user))


def reject(result: int, source: int, reason: int) -> bytes:
    return wire.pdu(wire.ASSOCIATE_RJ, bytes([0, result, source, reason]))


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _ae16(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")
