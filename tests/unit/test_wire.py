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
