"""Is a received data set whole? A walk over its element headers that decodes no value.

A C-STORE whose data set cannot be parsed must get a failure status rather than become
part of a job. The walk reads each element's tag and length and skips its value (a seek),
so it costs a few microseconds per element whatever the size of the pixel data. It
refuses what no reader could make sense of:

* a value, item or fragment whose length runs past the end of its container or the file;
* a sequence, item or encapsulated pixel data with undefined length that never ends;
* item and delimiter tags where they do not belong, undefined lengths where none may be;
* bytes left over after the last element, or nesting deeper than any real data set.

Values are never checked (a wrong VR, an unsorted tag or an odd length is the bucket's
business: real modalities send such things and other receivers keep them).
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom.uid import UID

try:  # the walk's inner loop, compiled (_skim.c); without it the Python loop does it all
    from magickbox.receive._skim import skim as _skim
except ImportError:  # a build without a C compiler (tests/unit/test_structure.py tells)
    _skim = None  # type: ignore[assignment]

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
DELIMITERS = (ITEM, ITEM_END, SEQUENCE_END)
PIXEL_DATA = 0x7FE00010
# Explicit VRs whose length field has 4 bytes (after 2 reserved ones); others have 2.
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
MAX_DEPTH = 64


class Malformed(ValueError):
    """The data set's structure is broken: no reader could parse it."""


@dataclass
class Header:
    """The raw top-level elements a walk captured, with what is needed to decode them."""

    values: dict[int, bytes] = field(default_factory=dict)
    vrs: dict[int, str | None] = field(default_factory=dict)  # None: implicit VR
    implicit: bool = False
    little: bool = True


def check_stored_file(path: Path, syntax: str, capture: tuple[int, ...] = ()) -> dict[int, bytes]:
    """Check the data set of a Part 10 file (as pynetdicom stores it) in ``syntax``.

    Returns the raw values of the top-level elements whose tags are in ``capture`` (the
    receiver takes the StudyInstanceUID this way: one pass over the file instead of two).
    """
    return walk_stored_file(path, syntax, capture).values


def walk_stored_file(
    path: Path, syntax: str | None, capture: frozenset[int] | tuple[int, ...] = ()
) -> Header:
    """:func:`check_stored_file` that also keeps the captured elements' VRs and encoding
    (the receiver's series views decode them without reading the file again). A
    ``syntax`` of None is the file meta's own (0002,0010) (files from uploads)."""
    with path.open("rb") as fh:
        head = fh.read(144)
        if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
            raise Malformed("no file meta information")
        (meta_length,) = struct.unpack_from("<L", head, 140)
        if 144 + meta_length > os.fstat(fh.fileno()).st_size:
            raise Malformed("the file meta information runs past the end of the file")
        if syntax is None:
            syntax = meta_syntax(fh.read(meta_length))
        fh.seek(144 + meta_length)
        return walk_dataset(fh, UID(syntax), capture)


def meta_syntax(meta: bytes) -> str:
    """The Transfer Syntax UID (0002,0010) of file meta elements (explicit VR little endian)."""
    pos = 0
    while pos + 8 <= len(meta):
        group, element = struct.unpack_from("<HH", meta, pos)
        vr = meta[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            (length,) = struct.unpack_from("<L", meta, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", meta, pos + 6)
            start = pos + 8
        if (group, element) == (0x0002, 0x0010):
            return meta[start : start + length].decode("ascii", "replace").strip(" \0")
        pos = start + length
    raise Malformed("the file meta information has no transfer syntax")


def dataset_bytes(path: Path) -> int:
    """Bytes of the data set of a Part 10 file (what came on the wire: no preamble or meta)."""
    with path.open("rb") as fh:
        head = fh.read(144)
        size = os.fstat(fh.fileno()).st_size
    if len(head) < 144:
        return size
    (meta_length,) = struct.unpack_from("<L", head, 140)
    return max(0, size - 144 - meta_length)


def check_dataset(fh: BinaryIO, syntax: UID, capture: tuple[int, ...] = ()) -> dict[int, bytes]:
    """Walk the data set from ``fh``'s position to its end; raise Malformed when broken."""
    return walk_dataset(fh, syntax, capture).values


def walk_dataset(
    fh: BinaryIO, syntax: UID, capture: frozenset[int] | tuple[int, ...] = ()
) -> Header:
    return _walk(_Inflating(fh) if _encoding(syntax)[2] else _Plain(fh), syntax, capture)


def walk_buffer(
    data: bytes | bytearray | memoryview,
    syntax: str,
    capture: frozenset[int] | tuple[int, ...] = (),
) -> Header:
    """:func:`walk_dataset` over a data set held in memory (the native receiver checks a
    data set this way before it writes it, instead of reading its file back)."""
    if _encoding(syntax)[2]:  # rare: the inflater reads a stream, give it one
        return _walk(_Inflating(io.BytesIO(data)), syntax, capture)
    return _walk(_Memory(memoryview(data)), syntax, capture)


@functools.lru_cache(maxsize=64)
def _encoding(syntax: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) of a transfer syntax: asked once per data set,
    and pydicom's UID properties cost more than the walk of a small header."""
    uid = UID(syntax)
    return uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated


def _walk(
    reader: _Plain | _Inflating | _Memory, syntax: str, capture: frozenset[int] | tuple[int, ...]
) -> Header:
    implicit, little, _deflated = _encoding(syntax)
    walker = _Walker(reader, implicit=implicit, little=little)
    walker.capture = frozenset(capture)
    if isinstance(reader, _Memory):
        walker.top_in_memory(reader)
    else:
        walker.elements(end=None, depth=0, top=True)
    reader.finish()
    return walker.header_out


class _Bounded:
    """A data set whose size is known: a skipped value is arithmetic, checked against it."""

    pos: int
    size: int

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise Malformed(f"a length of {n} runs past the end of the data set")
        self.pos += n

    def finish(self) -> None:
        pass


class _Plain(_Bounded):
    """The file itself, read through a window so that a header costs one read."""

    WINDOW = 1 << 16

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.pos = self.start = fh.tell()
        self.size = fh.seek(0, os.SEEK_END)
        self.buf = b""

    def read(self, n: int) -> bytes:
        off = self.pos - self.start
        if off + n > len(self.buf):
            self.fh.seek(self.pos)
            self.buf, self.start, off = self.fh.read(max(n, self.WINDOW)), self.pos, 0
        data = self.buf[off : off + n]
        self.pos += len(data)
        return data


class _Memory(_Bounded):
    """A data set already in memory: a header is a slice, a skipped value only arithmetic."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0
        self.size = len(data)

    def read(self, n: int) -> bytes:
        data = bytes(self.data[self.pos : self.pos + n])  # a copy: the buffer is reused
        self.pos += len(data)
        return data


class _Inflating:
    """The deflated transfer syntax: the data set is one raw deflate stream."""

    CHUNK = 1 << 16

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self.buf = b""
        self.pos = 0

    def _fill(self, n: int) -> None:
        # The end of the deflate stream is the end of the data set. Bytes after it are
        # tolerated (dcmtk pads an odd-length stream with a NUL): once the stream has
        # ended, decompress() only ever returns nothing, so asking again would spin.
        while len(self.buf) < n and not self.inflater.eof:
            if self.inflater.unconsumed_tail:
                data = self.inflater.unconsumed_tail
            else:
                data = self.fh.read(self.CHUNK)
                if not data:
                    self.buf += self.inflater.flush()
                    return
            try:
                out = self.inflater.decompress(data, self.CHUNK)
            except zlib.error as exc:
                raise Malformed(f"deflated data set: {exc}") from exc
            if not out and not self.inflater.eof and self.inflater.unconsumed_tail == data:
                raise Malformed("the deflated data set makes no progress")  # never spin
            self.buf += out

    def read(self, n: int) -> bytes:
        self._fill(n)
        data, self.buf = self.buf[:n], self.buf[n:]
        self.pos += len(data)
        return data

    def finish(self) -> None:
        if not self.inflater.eof:
            raise Malformed("the deflated data set is cut short")

    def skip(self, n: int) -> None:
        while n > 0:
            step = min(n, self.CHUNK)
            if len(self.read(step)) < step:
                raise Malformed(f"a length of {n} runs past the end of the data set")
            n -= step


_STRUCTS = {
    little: (struct.Struct(e + "HHL"), struct.Struct(e + "H"), struct.Struct(e + "L"))
    for little, e in ((True, "<"), (False, ">"))
}
# An explicit VR element header in one unpack: group, element, VR, 2-byte length
_EXPLICIT = {little: struct.Struct(e + "HH2sH") for little, e in ((True, "<"), (False, ">"))}


class _Walker:
    def __init__(self, reader: _Plain | _Inflating | _Memory, implicit: bool, little: bool) -> None:
        self.r = reader
        self.implicit = implicit
        # tag (group, element) and 4-byte length; 2-byte length; 4-byte length
        self.header, self.short, self.long = _STRUCTS[little]
        self.little = little
        self.capture: frozenset[int] = frozenset()
        self.header_out = Header(implicit=implicit, little=little)

    def _tag_and_length(self, data: bytes) -> tuple[int, int]:
        group, element, length = self.header.unpack(data)
        return group << 16 | element, length

    def elements(self, end: int | None, depth: int, top: bool = False) -> None:
        """Elements until ``end``, or (``end`` None) the item delimiter or, on top, EOF."""
        if depth > MAX_DEPTH:
            raise Malformed("sequences nested too deep")
        while end is None or self.r.pos < end:
            head = self.r.read(8)
            if top and not head:
                return
            if len(head) < 8:
                raise Malformed("the data set ends inside an element header or a sequence")
            tag, length = self._tag_and_length(head)
            if tag == ITEM_END and end is None and not top:
                return
            if tag in DELIMITERS:
                raise Malformed(f"a delimiter ({tag:08X}) where an element should be")
            vr = b""
            if not self.implicit:
                vr = head[4:6]
                if vr in LONG_VRS:
                    more = self.r.read(4)
                    if len(more) < 4:
                        raise Malformed("the data set ends inside an element header")
                    (length,) = self.long.unpack(more)
                else:
                    (length,) = self.short.unpack_from(head, 6)
            if length == UNDEFINED:
                self._undefined(tag, vr, depth)
            elif vr == b"SQ":
                self._within(end, length)
                self.items(self.r.pos + length, depth + 1)
            elif top and tag in self.capture:
                value = self.r.read(length)
                if len(value) < length:
                    raise Malformed(f"a length of {length} runs past the end of the data set")
                self.header_out.values[tag] = value
                self.header_out.vrs[tag] = vr.decode("latin-1") if vr else None
            else:
                self._within(end, length)
                self.r.skip(length)
        if self.r.pos != end:
            raise Malformed("an element runs past the end of its item")

    def top_in_memory(self, r: _Memory) -> None:
        """:meth:`elements` on top for a data set in memory, by the same rules: headers are
        unpacked where they lie (the receiver walks every data set this way, so this loop
        is its per-element cost); sequences and undefined lengths go the common way."""
        data, size, pos = r.data, r.size, r.pos
        unpack, explicit = self.header.unpack_from, _EXPLICIT[self.little].unpack_from
        long_ = self.long.unpack_from
        capture, out, implicit = self.capture, self.header_out, self.implicit
        vr = b""
        while pos < size:
            if _skim is not None:  # the plain elements compiled; the rest by the rules below
                pos = _skim(data, pos, implicit, self.little, capture, out.values, out.vrs)
                if pos == size:
                    break
            if pos + 8 > size:
                raise Malformed("the data set ends inside an element header or a sequence")
            if implicit:
                group, element, length = unpack(data, pos)
            else:  # a delimiter has no VR: it is refused below whatever these bytes say
                group, element, vr, length = explicit(data, pos)
            tag = group << 16 | element
            if tag in DELIMITERS:
                raise Malformed(f"a delimiter ({tag:08X}) where an element should be")
            pos += 8
            if vr in LONG_VRS:
                if pos + 4 > size:
                    raise Malformed("the data set ends inside an element header")
                (length,) = long_(data, pos)
                pos += 4
            if length == UNDEFINED or vr == b"SQ":
                r.pos = pos
                if length == UNDEFINED:
                    self._undefined(tag, vr, 0)
                else:
                    self.items(pos + length, 1)
                pos = r.pos
                continue
            if pos + length > size:
                raise Malformed(f"a length of {length} runs past the end of the data set")
            if tag in capture:
                out.values[tag] = bytes(data[pos : pos + length])
                out.vrs[tag] = vr.decode("latin-1") if vr else None
            pos += length
        r.pos = pos

    def _within(self, end: int | None, length: int) -> None:
        if end is not None and self.r.pos + length > end:
            raise Malformed(f"a length of {length} runs past the end of its item")

    def _undefined(self, tag: int, vr: bytes, depth: int) -> None:
        if self.implicit or vr == b"SQ":
            self.items(None, depth + 1)
        elif vr == b"UN":  # a sequence in implicit VR little endian (PS3.5 6.2.2)
            inner = _Walker(self.r, implicit=True, little=True)
            inner.items(None, depth + 1)
        elif tag == PIXEL_DATA and vr in (b"OB", b"OW"):
            self.fragments()
        else:
            raise Malformed(f"undefined length for ({tag:08X}) {vr.decode('latin-1')}")

    def items(self, end: int | None, depth: int) -> None:
        """A sequence's items until ``end`` or (``end`` None) its delimiter."""
        if depth > MAX_DEPTH:
            raise Malformed("sequences nested too deep")
        while end is None or self.r.pos < end:
            tag, length = self._delimiter()
            if tag == SEQUENCE_END and end is None:
                return
            if tag != ITEM:
                raise Malformed(f"({tag:08X}) where a sequence item should be")
            if length == UNDEFINED:
                self.elements(None, depth)
            else:
                self._within(end, length)
                self.elements(self.r.pos + length, depth)
        if self.r.pos != end:
            raise Malformed("a sequence runs past its length")

    def fragments(self) -> None:
        """Encapsulated pixel data: items of defined length up to the sequence delimiter."""
        while True:
            tag, length = self._delimiter()
            if tag == SEQUENCE_END:
                return
            if tag != ITEM or length == UNDEFINED:
                raise Malformed("broken encapsulated pixel data")
            self.r.skip(length)

    def _delimiter(self) -> tuple[int, int]:
        head = self.r.read(8)
        if len(head) < 8:
            raise Malformed("the data set ends inside a sequence")
        return self._tag_and_length(head)
