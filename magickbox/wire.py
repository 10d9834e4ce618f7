"""The DICOM wire format both directions share: PDUs, PDVs and DIMSE command sets.

Pure encoding and decoding (PS3.8 section 9 for the upper layer, PS3.7 for command sets
in implicit VR little endian): no sockets and no pynetdicom, so the receiver
(receive/native.py) and the routing sender (routing/dimse.py) use one tested codec.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

# PDU types (PS3.8 table 9-11)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07
PDU_HEADER = struct.Struct(">BBI")  # type, reserved, length of what follows
PDV_HEADER = struct.Struct(">IBB")  # item length, presentation context id, control header
ELEMENT_HEADER = struct.Struct("<HHI")  # a command element's group, element and length

# DIMSE command fields (PS3.7 E.1)
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
NO_DATA_SET = 0x0101  # Command Data Set Type: no data set follows

# Command set elements (group 0000)
AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID = 0x0002, 0x0100, 0x0110
MESSAGE_ID_RESPONDED, DATA_SET_TYPE, STATUS = 0x0120, 0x0800, 0x0900
ERROR_COMMENT, AFFECTED_SOP_INSTANCE = 0x0902, 0x1000

# A PDV's message control header (PS3.8 E.2)
COMMAND_BIT, LAST_BIT = 0x01, 0x02


class WireError(ValueError):
    """Bytes that are not what the protocol allows here."""


def pdu(kind: int, body: bytes) -> bytes:
    return PDU_HEADER.pack(kind, 0, len(body)) + body


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    """A P-DATA-TF PDU holding one PDV."""
    return pdu(P_DATA, PDV_HEADER.pack(len(data) + 2, context_id, control) + data)


def pdvs(body: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(context id, control header, data) of each PDV of a P-DATA-TF body held whole."""
    offset = 0
    while offset + 6 <= len(body):
        length, context_id, control = PDV_HEADER.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > len(body):
            raise WireError(f"a PDV of length {length} does not fit its PDU")
        yield context_id, control, body[offset + 6 : offset + 4 + length]
        offset += 4 + length
    if offset != len(body):
        raise WireError("bytes left after the last PDV")


def release_rq() -> bytes:
    return pdu(RELEASE_RQ, bytes(4))


def release_rp() -> bytes:
    return pdu(RELEASE_RP, bytes(4))


def abort(source: int = 0, reason: int = 0) -> bytes:
    """A-ABORT: source 0 service user, 2 service provider (then ``reason`` says why)."""
    return pdu(ABORT, bytes([0, 0, source, reason]))


# -- command sets ------------------------------------------------------------------------


def element(elem: int, value: bytes) -> bytes:
    return ELEMENT_HEADER.pack(0x0000, elem, len(value)) + value


def uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def us(value: int) -> bytes:
    return _US.pack(value)


_US = struct.Struct("<H")
_NO_DATA = us(NO_DATA_SET)


def command_set(*elements: bytes) -> bytes:
    """Elements (in tag order) preceded by their Command Group Length."""
    body = b"".join(elements)
    return ELEMENT_HEADER.pack(0x0000, 0x0000, 4) + len(body).to_bytes(4, "little") + body


def decode_command(raw: bytes) -> dict[int, bytes]:
    """The elements of a command set, by element number (the group is always 0000)."""
    values: dict[int, bytes] = {}
    offset, end = 0, len(raw)
    while offset + 8 <= end:
        group, elem, length = ELEMENT_HEADER.unpack_from(raw, offset)
        if group != 0x0000 or offset + 8 + length > end:
            raise WireError(f"a bad command set element ({group:04X},{elem:04X})")
        values[elem] = raw[offset + 8 : offset + 8 + length]
        offset += 8 + length
    if offset != end:
        raise WireError("a truncated command set")
    return values


@dataclass(frozen=True)
class Command:
    """The fields of a request this box acts on."""

    field: int
    message_id: int
    sop_class: str
    sop_instance: str
    has_data: bool


def parse_request(raw: bytes) -> Command:
    values = decode_command(raw)
    try:
        (field_,) = _US.unpack_from(values[COMMAND_FIELD])
        (message_id,) = _US.unpack_from(values[MESSAGE_ID])
    except (KeyError, struct.error) as exc:
        raise WireError("a request without Command Field or Message ID") from exc
    return Command(
        field=field_,
        message_id=message_id,
        sop_class=_text(values.get(AFFECTED_SOP_CLASS, b"")),
        sop_instance=_text(values.get(AFFECTED_SOP_INSTANCE, b"")),
        has_data=values.get(DATA_SET_TYPE, _NO_DATA)[:2] != _NO_DATA,
    )


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \0")


def store_command(sop_class: str, sop_instance: str, msg_id: int) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1)."""
    return command_set(
        element(AFFECTED_SOP_CLASS, uid(sop_class)),
        element(COMMAND_FIELD, us(C_STORE_RQ)),
        element(MESSAGE_ID, us(msg_id)),
        element(0x0700, us(0x0000)),  # Priority: medium
        element(DATA_SET_TYPE, us(0x0000)),  # a data set follows
        element(AFFECTED_SOP_INSTANCE, uid(sop_instance)),
    )


# Command Field, Message ID Being Responded To, Command Data Set Type and Status of a
# response: four US elements in a row, packed at once (every C-STORE is answered)
_RESPONSE_FIELDS = struct.Struct("<" + "HHIH" * 4)


def response(request: Command, status: int, comment: str = "") -> bytes:
    """The C-STORE-RSP or C-ECHO-RSP command set answering ``request``."""
    answer = C_STORE_RSP if request.field == C_STORE_RQ else C_ECHO_RSP
    fields = _RESPONSE_FIELDS.pack(0, COMMAND_FIELD, 2, answer,
                                   0, MESSAGE_ID_RESPONDED, 2, request.message_id,
                                   0, DATA_SET_TYPE, 2, NO_DATA_SET,
                                   0, STATUS, 2, status)  # fmt: skip
    elements = [element(AFFECTED_SOP_CLASS, uid(request.sop_class)), fields]
    if comment:
        elements.append(element(ERROR_COMMENT, _even(comment[:64].encode("ascii", "replace"))))
    if request.field == C_STORE_RQ:
        elements.append(element(AFFECTED_SOP_INSTANCE, uid(request.sop_instance)))
    return command_set(*elements)


def _even(raw: bytes) -> bytes:
    return raw + b" " if len(raw) % 2 else raw


def parse_store_response(raw: bytes, msg_id: int) -> tuple[int, str]:
    """Status and Error Comment of a C-STORE-RSP (checked to answer ``msg_id``)."""
    values = decode_command(raw)
    field_ = values.get(COMMAND_FIELD, b"")
    if field_ and struct.unpack("<H", field_[:2])[0] != C_STORE_RSP:
        raise WireError("the peer answered with something other than a C-STORE response")
    answered = values.get(MESSAGE_ID_RESPONDED, b"")
    if answered and struct.unpack("<H", answered[:2])[0] != msg_id:
        raise WireError("the peer answered another request")
    if len(values.get(STATUS, b"")) < 2:
        raise WireError("a C-STORE response without a status")
    status = struct.unpack("<H", values[STATUS][:2])[0]
    return status, _text(values.get(ERROR_COMMENT, b"")).strip()
