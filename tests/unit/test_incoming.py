"""A data set while it arrives: written to its file as it comes, kept in memory for the walk
while it fits, and a write that fails kept for an A700 answer instead of raised. Every test
runs with unnamed files (O_TMPFILE, the usual case on Linux) and with named ones in
``.partial`` (a filesystem without them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from magickbox.jobs import scratch
from magickbox.receive import incoming
from magickbox.receive.incoming import FLUSH, Incoming, Spare

META = b"\0" * 128 + b"DICM" + b"meta"


@pytest.fixture(autouse=True, params=["unnamed", "named"])
def way(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "unnamed":
        assert incoming.unnamed_files(tmp_path)  # Linux on ext4 or tmpfs, /proc mounted
    else:
        monkeypatch.setitem(incoming._unnamed_in, str(tmp_path), False)
    return str(request.param)


def arriving(tmp_path: Path, memory: int = 1 << 20) -> Incoming:
    return Incoming(bytearray(memory), META, Spare(tmp_path))


def test_a_small_data_set_is_in_memory_and_in_its_file_behind_the_meta(tmp_path: Path) -> None:
    data = os.urandom(5000)
    got = arriving(tmp_path)
    got.put(memoryview(data[:1000]))
    room = got.room(4000)
    assert room is not None
    room[:] = data[1000:]
    got.advance(4000)
    got.finish()
    assert not got.spilled and got.error is None
    assert bytes(got.data) == data
    assert Path(got.path).read_bytes() == META + data
    if got.spare.unnamed:  # nowhere in a folder until it is placed
        assert list(tmp_path.iterdir()) == []
    else:
        assert list(tmp_path.iterdir()) == [Path(got.path)]


def test_a_placed_data_set_is_in_its_arrival_and_nowhere_else(tmp_path: Path, way: str) -> None:
    arrival = tmp_path / "arrival"
    arrival.mkdir()
    got = arriving(tmp_path)
    got.put(memoryview(b"z" * 3000))
    got.finish()
    assert scratch.place_file(got.path, arrival, "1.2.3.dcm") == "1.2.3.dcm"
    got.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrival"]  # .partial is left empty
    assert (arrival / "1.2.3.dcm").read_bytes() == META + b"z" * 3000
    assert (arrival / "1.2.3.dcm").stat().st_nlink == 1


def test_a_data_set_never_placed_is_gone_once_released(tmp_path: Path, way: str) -> None:
    got = arriving(tmp_path)
    got.put(memoryview(b"z" * 3000))
    got.finish()
    path = got.path
    if way == "named":
        got.discard()
    else:
        got.release()  # closed: an unnamed file needs no removal
    assert not os.path.exists(path)
    assert list(tmp_path.iterdir()) == []


def test_the_file_is_written_while_the_data_set_still_comes(tmp_path: Path) -> None:
    got = arriving(tmp_path)
    got.put(memoryview(b"a" * (FLUSH - 1)))
    assert Path(got.path).stat().st_size == 0  # gathered: not a write per fragment
    got.put(memoryview(b"b"))
    assert Path(got.path).read_bytes() == META + b"a" * (FLUSH - 1) + b"b"
    got.put(memoryview(b"c" * 10))
    got.finish()
    assert Path(got.path).read_bytes() == META + b"a" * (FLUSH - 1) + b"b" + b"c" * 10


def test_a_data_set_larger_than_memory_spills_and_memory_stays_bounded(tmp_path: Path) -> None:
    memory = 1000
    data = os.urandom(10 * memory + 7)
    got = arriving(tmp_path, memory)
    for start in range(0, len(data), 333):
        chunk = data[start : start + 333]
        room = got.room(len(chunk))
        if room is None:
            got.put(memoryview(chunk))
        else:
            room[:] = chunk
            got.advance(len(chunk))
    got.finish()
    assert got.spilled and got.error is None
    assert got.room(1) is None  # nothing more goes to memory once spilled
    assert len(got.view) == memory
    assert Path(got.path).read_bytes() == META + data
    assert Path(got.path).parent == tmp_path  # named in .partial once spilled: walked from it
    assert list(tmp_path.iterdir()) == [Path(got.path)]


def test_an_empty_data_set_still_gets_its_meta(tmp_path: Path) -> None:
    got = arriving(tmp_path)
    got.finish()
    assert Path(got.path).read_bytes() == META


def test_a_full_disk_is_kept_as_the_error_and_the_rest_is_read_on(tmp_path: Path) -> None:
    got = arriving(tmp_path)
    os.close(got.spare.fd)
    got.spare.fd = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
    for _ in range(4):
        got.put(memoryview(b"x" * FLUSH))  # no exception: the sender is answered A700 later
    got.finish()
    assert got.error is not None and got.error.errno == 28  # ENOSPC
    got.discard()
    assert list(tmp_path.iterdir()) == []
    assert got.spare.fd == -1


def test_a_spare_that_cannot_be_made_makes_an_a700_not_a_crash(tmp_path: Path) -> None:
    spare = Spare(tmp_path / "gone")
    assert isinstance(spare.error, FileNotFoundError)
    got = Incoming(bytearray(100), META, spare)
    got.put(memoryview(b"y" * 500))
    got.finish()
    assert got.error is spare.error
    got.discard()  # harmless


def test_discard_removes_the_file_and_names_are_unique(tmp_path: Path, way: str) -> None:
    spares = [Spare(tmp_path) for _ in range(50)]
    assert len({s.path for s in spares}) == 50
    if way == "named":
        assert all(Path(s.path).name.startswith(f"{os.getpid()}-") for s in spares)
    else:
        assert all(s.path == f"/proc/{os.getpid()}/fd/{s.fd}" for s in spares)
    for spare in spares:
        spare.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_forked_child_names_its_files_by_its_own_pid(tmp_path: Path) -> None:
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 when its name carries its own pid
        name = Path(incoming.partial_path(tmp_path)).name
        os._exit(0 if name.startswith(f"{os.getpid()}-") else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("sizes", [[3], [1, 2, 3], [70000, 1, 5]])
def test_write_all_writes_every_part_in_order(tmp_path: Path, sizes: list[int]) -> None:
    parts = [os.urandom(n) for n in sizes]
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    incoming.write_all(fd, [memoryview(p) for p in parts])
    os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(parts)


@pytest.mark.parametrize("calling", ["STORESCU", "ODD", ""])
def test_the_file_meta_written_before_each_data_set_names_that_data_set(calling: str) -> None:
    """Its parts shared by one class, syntax and caller are made once: the instance UID and
    the group length must still be each data set's own."""
    from io import BytesIO

    import pydicom

    from magickbox.receive.native import file_meta

    for instance in ("1.2.3.4", "1.2.3.45", "1.2.840.99.12345678901234567890"):
        raw = file_meta("1.2.840.10008.5.1.4.1.1.4", instance, "1.2.840.10008.1.2.1", calling)
        meta = pydicom.dcmread(BytesIO(raw)).file_meta  # an empty data set behind it
        assert meta.FileMetaInformationGroupLength == len(raw) - 128 - 4 - 12
        assert meta.MediaStorageSOPInstanceUID == instance
        assert meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
        assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert meta.get("SourceApplicationEntityTitle", "").strip() == calling
