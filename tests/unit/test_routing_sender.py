"""The sender's own pieces: the DIMSE wire (dimse.py) and reading a file's meta (select.py)."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.filereader import read_dataset

from magickbox.routing import dimse, select
from magickbox.testing.dicomgen import write_study


def test_the_store_command_is_a_valid_implicit_little_endian_command_set() -> None:
    raw = dimse.store_command("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", 7)
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
    assert dimse._parse_response(response(3, 0x0000), 3) == (0, "")
    assert dimse._parse_response(response(3, 0xA700, "full"), 3) == (0xA700, "full")
    with pytest.raises(dimse.LinkError, match="another request"):
        dimse._parse_response(response(2, 0), 3)
    with pytest.raises(dimse.LinkError, match="other than a C-STORE"):
        dimse._parse_response(response(3, 0, field=0x8030), 3)


def test_pdus_hold_one_pdv_each_and_are_read_back() -> None:
    pdu = dimse._pdv(5, 0x03, b"abcd")
    kind, _reserved, length = struct.unpack(">BBI", pdu[:6])
    assert (kind, length) == (0x04, len(pdu) - 6)
    assert list(dimse._pdvs(pdu[6:] + pdu[6:])) == [(0x03, b"abcd"), (0x03, b"abcd")]


@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.5"]
)
def test_the_quick_file_meta_reader_agrees_with_pydicom(tmp_path: Path, syntax: str) -> None:
    study = write_study(tmp_path / "s", n_images=2, rows=16, cols=16, transfer_syntax=syntax)
    (tmp_path / "s" / "notes.txt").write_text("not DICOM")
    found = select.dicom_files(tmp_path / "s")
    assert sorted(f.sop_instance for f in found) == sorted(study.sop_uids)
    for item in found:
        assert select._quick_meta(item.path) == select._pydicom_meta(item.path)
        assert item.syntax == syntax
