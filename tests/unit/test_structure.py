"""The receive path's structural check: whole data sets pass, broken ones are refused."""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid
from pynetdicom.dsutils import split_dataset

from magickbox.receive import structure
from magickbox.receive.structure import (
    Header,
    Malformed,
    check_dataset,
    check_stored_file,
    walk_buffer,
    walk_stored_file,
)
from magickbox.testing.dicomgen import (
    MALFORMED_KINDS,
    SYNTAXES,
    make_dataset,
    malformed_dataset_bytes,
    save_dataset,
)


def image(syntax: str, **kw: object) -> Dataset:
    return make_dataset(study_uid=generate_uid(), series_uid=generate_uid(), rows=32, cols=32,
                        transfer_syntax=syntax, seed=1, **kw)  # fmt: skip


def nested(depth: int) -> Dataset:
    """A data set with ``depth`` sequences inside each other."""
    ds = image("explicit")
    inner = ds
    for _ in range(depth):
        item = Dataset()
        item.CodeValue = "1"
        inner.ReferencedImageSequence = Sequence([item])
        inner = item
    return ds


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_whole_files_pass_and_every_cut_inside_an_element_is_refused(
    tmp_path: Path, syntax: str
) -> None:
    path = tmp_path / "ok.dcm"
    ds = image(syntax)
    ds.ReferencedImageSequence = Sequence([Dataset(), Dataset()])
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
    save_dataset(ds, path)
    check_stored_file(path, SYNTAXES[syntax])

    data = path.read_bytes()
    _meta, offset = split_dataset(path)
    # Cut inside the last element (a deflated stream may end in one byte of padding).
    for cut in (len(data) - 3, len(data) - 7):
        (tmp_path / "cut.dcm").write_bytes(data[:cut])
        with pytest.raises(Malformed):
            check_stored_file(tmp_path / "cut.dcm", SYNTAXES[syntax])
    assert offset < len(data)


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_the_generators_malformed_kinds_are_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.dcm"
    path.write_bytes(malformed_dataset_bytes(kind))
    with pytest.raises(Malformed):
        check_stored_file(path, SYNTAXES["explicit"])


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "bigendian"])
def test_undefined_length_sequences_pass_until_nested_absurdly_deep(
    tmp_path: Path, syntax: str
) -> None:
    ds = nested(10)
    ds.file_meta.TransferSyntaxUID = SYNTAXES[syntax]
    for element in ds.iterall():
        if element.VR == "SQ":
            element.is_undefined_length = True
    save_dataset(ds, tmp_path / "deep.dcm")
    check_stored_file(tmp_path / "deep.dcm", SYNTAXES[syntax])

    ds = nested(80)
    save_dataset(ds, tmp_path / "deeper.dcm")
    with pytest.raises(Malformed, match="too deep"):
        check_stored_file(tmp_path / "deeper.dcm", SYNTAXES["explicit"])


def test_stray_delimiters_and_trailing_bytes_are_refused() -> None:
    explicit = UID(SYNTAXES["explicit"])
    element = b"\x08\x00\x60\x00CS\x02\x00MR"  # (0008,0060) CS "MR"
    check_dataset(io.BytesIO(element), explicit)
    for bad in (
        element + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00",  # an item delimiter at the top
        element + b"\x10\x00",  # half an element header
        b"\x08\x00\x60\x00CS\x04\x00MR",  # a value longer than what follows
        b"\x08\x00\x60\x00UT\x00\x00\xff\xff\xff\xff",  # undefined length on a text
    ):
        with pytest.raises(Malformed):
            check_dataset(io.BytesIO(bad), explicit)


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_the_walk_hands_back_the_study_uid(tmp_path: Path, syntax: str) -> None:
    path = tmp_path / "ok.dcm"
    ds = image(syntax)
    save_dataset(ds, path)
    found = check_stored_file(path, SYNTAXES[syntax], (0x0020000D,))
    assert found[0x0020000D].rstrip(b"\0 ").decode() == ds.StudyInstanceUID
    assert check_stored_file(path, SYNTAXES[syntax]) == {}


DEFLATED = UID("1.2.840.10008.1.2.1.99")


def deflated_with_trailing(tmp_path: Path, trailing: bytes) -> Path:
    """A deflated file with ``trailing`` bytes after the end of its deflate stream.

    Its flat pixels inflate to more than one inflate chunk from less than one read: the
    stream ends while input is still waiting, the case that made the walk spin."""
    ds = make_dataset(study_uid=generate_uid(), series_uid=generate_uid(), rows=256, cols=256,
                      transfer_syntax="deflate", seed=3)  # fmt: skip
    ds.PixelData = bytes(len(ds.PixelData))
    path = tmp_path / "dfl.dcm"
    save_dataset(ds, path)
    path.write_bytes(path.read_bytes() + trailing)
    return path


@pytest.mark.timeout(20)  # the bug this guards against was an endless loop
@pytest.mark.parametrize("trailing", [b"", b"\0", b"\0\0\0", b"junk after the stream"])
def test_a_deflate_stream_followed_by_bytes_ends_the_walk(tmp_path: Path, trailing: bytes) -> None:
    path = deflated_with_trailing(tmp_path, trailing)
    ds = pydicom.dcmread(path)
    found = check_stored_file(path, DEFLATED, (0x00080018, 0x0020000D))
    assert found[0x00080018].rstrip(b"\0 ").decode() == ds.SOPInstanceUID
    assert found[0x0020000D].rstrip(b"\0 ").decode() == ds.StudyInstanceUID


@pytest.mark.timeout(20)
def test_pydicoms_deflated_test_file_passes(tmp_path: Path) -> None:
    """image_dfl.dcm ends its deflate stream with a pad byte, as dcmtk writes it."""
    path = Path(get_testdata_file("image_dfl.dcm"))  # type: ignore[arg-type]
    ds = pydicom.dcmread(path)
    found = check_stored_file(path, DEFLATED, (0x00080018, 0x0020000D))
    assert found[0x00080018].rstrip(b"\0 ").decode() == ds.SOPInstanceUID
    # Cut short inside the stream it is still refused.
    (tmp_path / "cut.dcm").write_bytes(path.read_bytes()[:-40])
    with pytest.raises(Malformed):
        check_stored_file(tmp_path / "cut.dcm", DEFLATED)


def outcome(walk: Callable[[], Header]) -> tuple[object, ...]:
    """What a walk found (values and VRs), or the message of its refusal."""
    try:
        header = walk()
    except Malformed as exc:
        return ("refused", str(exc))
    return ("passed", header.values, header.vrs)


def in_memory_and_on_disk(tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """(case, file, syntax) of every kind of data set above, whole, cut and broken."""
    for syntax in sorted(SYNTAXES):
        ds = image(syntax)
        ds.ReferencedImageSequence = Sequence([Dataset(), Dataset()])
        ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
        path = tmp_path / f"{syntax}.dcm"
        save_dataset(ds, path)
        yield syntax, path, SYNTAXES[syntax]
        for cut in (3, 7, 200):
            short = tmp_path / f"{syntax}-{cut}.dcm"
            short.write_bytes(path.read_bytes()[:-cut])
            yield f"{syntax} cut by {cut}", short, SYNTAXES[syntax]
    for kind in MALFORMED_KINDS:
        path = tmp_path / f"{kind}.dcm"
        path.write_bytes(malformed_dataset_bytes(kind))
        yield kind, path, SYNTAXES["explicit"]
    for depth, syntax in ((10, "implicit"), (10, "bigendian"), (80, "explicit")):
        ds = nested(depth)
        ds.file_meta.TransferSyntaxUID = SYNTAXES[syntax]
        for element in ds.iterall():
            if element.VR == "SQ":
                element.is_undefined_length = True
        path = tmp_path / f"nested-{depth}-{syntax}.dcm"
        save_dataset(ds, path)
        yield f"{depth} nested sequences, {syntax}", path, SYNTAXES[syntax]
    yield "pydicom's image_dfl.dcm", Path(get_testdata_file("image_dfl.dcm")), DEFLATED  # type: ignore[arg-type]


@pytest.fixture(params=["compiled", "python"])
def top_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The walk in memory with its compiled inner loop (_skim.c) and without it."""
    if request.param == "python":
        monkeypatch.setattr(structure, "_skim", None)
    return str(request.param)


def test_the_compiled_inner_loop_is_built() -> None:
    """install.sh installs a C compiler: the receiver's walk must not fall back to Python
    unnoticed (setup.py builds _skim.c as optional, so only this test tells)."""
    assert structure._skim is not None, "magickbox/receive/_skim.c was not compiled"


def test_the_walk_in_memory_finds_and_refuses_what_the_walk_of_the_file_does(
    tmp_path: Path, top_loop: str
) -> None:
    """The native receiver walks a data set in memory (walk_buffer, its own loop for the
    top level, compiled or not): it must keep and refuse exactly what the walk of the
    stored file does."""
    capture = (0x00080018, 0x0020000D, 0x00200011, 0x00280010, 0x00081140)
    refused = meta_only = 0
    for case, path, syntax in in_memory_and_on_disk(tmp_path):
        raw = path.read_bytes()
        (meta_length,) = struct.unpack_from("<I", raw, 140)
        data = bytearray(raw[144 + meta_length :])
        on_disk = outcome(lambda: walk_stored_file(path, syntax, capture))  # noqa: B023
        if "file meta" in str(on_disk[1]):
            meta_only += 1
            continue  # a broken file meta: the receiver writes its own
        assert outcome(lambda: walk_buffer(data, syntax, capture)) == on_disk, case  # noqa: B023
        refused += on_disk[0] == "refused"
        if on_disk[0] == "passed":
            assert on_disk[1][0x00080018], case  # the capture did capture
    assert refused + meta_only >= len(MALFORMED_KINDS) + 3 * len(SYNTAXES)  # cuts and broken


def mutations(data: bytes, rng: random.Random) -> Iterator[bytes]:
    """``data`` with random bytes changed, lengths set to odd values, and cut."""
    for _ in range(300):
        raw = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(raw))
            kind = rng.random()
            if kind < 0.4:
                raw[at] = rng.randrange(256)
            elif kind < 0.7 and at + 4 <= len(raw):  # a length or tag field's worth
                value = rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF, len(raw), rng.randrange(1 << 32)])
                raw[at : at + 4] = struct.pack("<I", value)
            else:
                del raw[at:]
        yield bytes(raw)


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_the_compiled_inner_loop_decides_as_the_python_loop(
    syntax: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Mutated data sets (bytes, lengths, cuts) are kept or refused alike, with the same
    captured values, whether the compiled loop skims the plain elements or Python does."""
    if structure._skim is None:
        pytest.skip("the compiled loop is not built (test_the_compiled_inner_loop_is_built)")
    ds = image(SYNTAXES[syntax])
    ds.ReferencedImageSequence = Sequence([Dataset()])
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
    save_dataset(ds, tmp_path / "image.dcm")
    raw = (tmp_path / "image.dcm").read_bytes()
    (meta_length,) = struct.unpack_from("<I", raw, 140)
    data = raw[144 + meta_length :]
    capture = (0x00080018, 0x0020000D, 0x00280010, 0x00081140, 0x7FE00010)
    compiled = structure._skim
    rng = random.Random(f"skim-{syntax}")
    decided = set()
    for mutated in mutations(data, rng):
        fast = outcome(lambda: walk_buffer(mutated, SYNTAXES[syntax], capture))  # noqa: B023
        monkeypatch.setattr(structure, "_skim", None)
        slow = outcome(lambda: walk_buffer(mutated, SYNTAXES[syntax], capture))  # noqa: B023
        monkeypatch.setattr(structure, "_skim", compiled)
        assert fast == slow
        decided.add(fast[0])
    assert decided == {"passed", "refused"}  # the mutations reached both outcomes
