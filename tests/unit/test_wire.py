"""The wire codec both directions share (magickbox/wire.py): PDVs and command sets."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pydicom.filereader import read_dataset

from magickbox import wire


def test_the_store_command_is_a_valid_implicit_little_endian_command_set() -> None:
    raw = wire.store_command("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", 7)
    ds = read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    assert ds[0x00000000].value == len(raw) - 12  # group length counts what follows it
    assert str(ds[0x00000002].value).rstrip("\0") == "1.2.840.10008.5.1.4.1.1.4"
    assert ds.CommandField == 0x0001  # C-STORE-RQ
    assert ds.MessageID == 7
    assert ds.CommandDataSetType != 0x0101  # a data set follows
    assert str(ds[0x00001000].value).rstrip("\0") == "1.2.3.45"
    assert len(raw) % 2 == 0


def response(msg_id: int, status: int, comment: str = "", field: int = 0x8001) -> bytes:
    def el(elem: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, elem, len(value)) + value

    body = el(0x0100, struct.pack("<H", field)) + el(0x0120, struct.pack("<H", msg_id))
    body += el(0x0900, struct.pack("<H", status))
    if comment:
        body += el(0x0902, comment.encode() + b" " * (len(comment) % 2))
    return el(0x0000, struct.pack("<I", len(body))) + body


def test_a_response_gives_status_and_comment_and_must_answer_the_request() -> None:
    assert wire.parse_store_response(response(3, 0x0000), 3) == (0, "")
    assert wire.parse_store_response(response(3, 0xA700, "full"), 3) == (0xA700, "full")
    with pytest.raises(wire.WireError, match="another request"):
        wire.parse_store_response(response(2, 0), 3)
    with pytest.raises(wire.WireError, match="other than a C-STORE"):
        wire.parse_store_response(response(3, 0, field=0x8030), 3)


def test_pdus_hold_one_pdv_each_and_are_read_back() -> None:
    pdu = wire.pdv(5, 0x03, b"abcd")
    kind, _reserved, length = struct.unpack(">BBI", pdu[:6])
    assert (kind, length) == (0x04, len(pdu) - 6)
    assert list(wire.pdvs(pdu[6:] + pdu[6:])) == [(5, 0x03, b"abcd"), (5, 0x03, b"abcd")]
    with pytest.raises(wire.WireError, match="does not fit"):
        list(wire.pdvs(pdu[6:-1]))


@pytest.mark.parametrize(("field", "status", "comment"), [
    (wire.C_STORE_RQ, 0x0000, ""), (wire.C_STORE_RQ, 0xA700, "disk full"),
    (wire.C_ECHO_RQ, 0x0000, ""),
])  # fmt: skip
def test_the_receivers_answer_is_a_valid_command_set_answering_its_request(
    field: int, status: int, comment: str
) -> None:
    raw = wire.store_command("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", 65535)
    request = wire.parse_request(raw)
    assert (request.message_id, request.sop_instance, request.has_data) == (65535, "1.2.3.45", True)
    request = wire.Command(field, 65535, request.sop_class, request.sop_instance, True)
    answer = wire.response(request, status, comment)
    ds = read_dataset(BytesIO(answer), is_implicit_VR=True, is_little_endian=True)
    assert ds[0x00000000].value == len(answer) - 12
    assert ds.CommandField == (0x8001 if field == wire.C_STORE_RQ else 0x8030)
    assert ds.MessageIDBeingRespondedTo == 65535
    assert (ds.CommandDataSetType, ds.Status) == (0x0101, status)  # no data set follows
    assert ds.get("ErrorComment", "") == comment
    assert ("AffectedSOPInstanceUID" in ds) == (field == wire.C_STORE_RQ)


def test_a_request_without_its_command_field_or_message_id_is_refused() -> None:
    no_id = wire.command_set(wire.element(wire.COMMAND_FIELD, wire.us(wire.C_ECHO_RQ)))
    short = wire.command_set(wire.element(wire.COMMAND_FIELD, b"\x30"),
                             wire.element(wire.MESSAGE_ID, wire.us(1)))  # fmt: skip
    for raw in (no_id, short):
        with pytest.raises(wire.WireError, match="without Command Field or Message ID"):
            wire.parse_request(raw)
    echo = wire.command_set(wire.element(wire.COMMAND_FIELD, wire.us(wire.C_ECHO_RQ)),
                            wire.element(wire.MESSAGE_ID, wire.us(9)))  # fmt: skip
    assert wire.parse_request(echo) == wire.Command(wire.C_ECHO_RQ, 9, "", "", False)
