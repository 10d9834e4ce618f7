"""The channel between the box and a receiver worker, and the worker's stand-in for the
grouper (``workers.Remote``), over a real Unix socket pair with the box's side played by a
thread here."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from magickbox.events import ImageReceived
from magickbox.receive import workers
from magickbox.receive.grouping import ArrivalKey, Where
from magickbox.receive.workers import Channel, Remote
from magickbox.study.series import CHARSET_TAG, SERIES_UID_TAG, RawHeader, SeriesSet
from tests.unit.test_grouping import add_file

KEY = ArrivalKey("SCU", "Recv", "127.0.0.1", "1.2.3")


def pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Channel(a), Channel(b)


def test_a_message_carries_a_file_descriptor_to_the_other_side() -> None:
    box, worker = pair()
    read_end, write_end = os.pipe()
    box.send(("take", {"assoc": 7}), [write_end])
    os.close(write_end)
    got = worker.receive()
    assert got is not None
    message, fds = got
    assert message == ("take", {"assoc": 7}) and len(fds) == 1
    os.write(fds[0], b"through")
    os.close(fds[0])
    assert os.read(read_end, 16) == b"through"
    box.close()
    assert worker.receive() is None  # the other side closed: the worker leaves


class FakeBox:
    """The box's side of a channel: names arrivals (per series when asked to), records the
    rest of what the worker says, in order."""

    def __init__(self, channel: Channel, folder: Path, per_series: bool, fail: bool = False):
        self.channel, self.folder, self.per_series, self.fail = channel, folder, per_series, fail
        self.asked: list[tuple[ArrivalKey, str | None]] = []
        self.said: list[tuple[Any, ...]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while (got := self.channel.receive()) is not None:
            message = got[0]
            if message[0] != "where":
                self.said.append(message)
                continue
            _kind, request, _assoc, key, series_uid, _src = message
            self.asked.append((key, series_uid))
            if self.fail:
                self.channel.send(("at", request, "No space left on device"))
                continue
            folder = self.folder / (series_uid or "study" if self.per_series else "study")
            folder.mkdir(parents=True, exist_ok=True)
            self.channel.send(("at", request, Where(key, folder, self.per_series)))


def answer_loop(remote: Remote, channel: Channel) -> None:
    """The worker's main loop, as far as answers go."""
    while (got := channel.receive()) is not None:
        if got[0][0] == "at":
            remote.answered(got[0][1], got[0][2])


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "partial").mkdir()
    yield tmp_path


def part(files: Path, n: int) -> Path:
    path = files / "partial" / f"{n}.part"
    path.write_bytes(b"data set %d" % n)
    return path


def header(series: str) -> RawHeader:
    return RawHeader({SERIES_UID_TAG: series.encode()}, {SERIES_UID_TAG: "UI"}, False, True)


def worker_with(files: Path, per_series: bool, fail: bool = False) -> tuple[Remote, FakeBox]:
    box_end, worker_end = pair()
    box = FakeBox(box_end, files / "arrivals", per_series, fail)
    remote = Remote(worker_end)
    threading.Thread(target=answer_loop, args=(remote, worker_end), daemon=True).start()
    return remote, box


def until_closed(box: FakeBox) -> None:
    """Wait for the association's end to reach the box (it comes after its files)."""
    deadline = time.monotonic() + 10
    while not box.said or box.said[-1][0] != "closed":
        assert time.monotonic() < deadline, box.said
        time.sleep(0.01)


def test_a_study_is_asked_about_once_and_its_files_told_before_the_close(files: Path) -> None:
    remote, box = worker_with(files, per_series=False)
    for n in range(3):
        add_file(remote, 1, KEY, part(files, n), f"{n}.dcm", header(f"S{n}"))
    remote.publish(ImageReceived("SCU", "Recv", 10))
    remote.association_closed(1)
    until_closed(box)
    assert box.asked == [(KEY, "S0")]  # one study: asked once, whatever the series
    assert sorted(p.name for p in (files / "arrivals" / "study").iterdir()) == [
        "0.dcm", "1.dcm", "2.dcm"
    ]  # fmt: skip
    assert [m[0] for m in box.said] == ["notes", "closed"]  # the files first, then the end
    kinds = [note[0] for note in box.said[0][1]]
    assert kinds == ["file", "file", "file", "event"]


def test_a_bucket_per_series_is_asked_about_each_series_and_each_file_without_one(
    files: Path,
) -> None:
    remote, box = worker_with(files, per_series=True)
    add_file(remote, 1, KEY, part(files, 1), "1.dcm", header("A"))
    add_file(remote, 1, KEY, part(files, 2), "2.dcm", header("A"))
    add_file(remote, 1, KEY, part(files, 3), "3.dcm", header("B"))
    add_file(remote, 1, KEY, part(files, 4), "4.dcm", None)  # series read by the box
    add_file(remote, 1, KEY, part(files, 5), "5.dcm", None)
    assert box.asked == [(KEY, "A"), (KEY, "B"), (KEY, None), (KEY, None)]
    assert (files / "arrivals" / "A" / "2.dcm").exists()
    assert (files / "arrivals" / "B" / "3.dcm").exists()
    add_file(remote, 2, KEY, part(files, 6), "6.dcm", header("A"))  # another association
    assert box.asked[-1] == (KEY, "A")


def mr_header(series: str, **changed: bytes) -> RawHeader:
    """A header as the walk captures it (tags: description, name, echo time, charset)."""
    raw = {SERIES_UID_TAG: series.encode(), 0x0008103E: b"T1 MPRAGE", 0x00100010: b"Doe^Jo",
           0x00180081: b"", CHARSET_TAG: b"ISO_IR 100"}  # fmt: skip
    tags = {"SeriesDescription": 0x0008103E, "PatientName": 0x00100010, "EchoTime": 0x00180081,
            "InversionTime": 0x00180082}  # fmt: skip
    raw.update({tags[k]: v for k, v in changed.items()})
    vrs = {SERIES_UID_TAG: "UI", 0x0008103E: "LO", 0x00100010: "PN", 0x00180081: "DS",
           0x00180082: "DS", CHARSET_TAG: "CS"}  # fmt: skip
    return RawHeader(raw, {t: vrs[t] for t in raw}, False, True)


def test_a_series_elements_are_told_once_and_the_views_stay_the_same(files: Path) -> None:
    """After a series' first file the box hears only what changed (and the series UID and
    character set): views built from what it heard equal views built from every header."""
    remote, box = worker_with(files, per_series=False)
    headers = [
        mr_header("A"),
        mr_header("A"),
        mr_header("A", EchoTime=b"2.5 "),  # was empty: the view takes it from this file
        mr_header("A", SeriesDescription=b"T1 again", InversionTime=b"900"),
        mr_header("B"),  # another series: told in full
        mr_header("A"),
    ]
    for n, head in enumerate(headers):
        add_file(remote, 1, KEY, part(files, n), f"{n}.dcm", head)
    remote.association_closed(1)
    until_closed(box)
    told = [note[3] for note in box.said[0][1] if note[0] == "file"]
    # a value unlike the one told last is told (file 4: the echo time is empty again)
    assert [len(h.values) for h in told] == [5, 2, 3, 5, 5, 3]
    assert set(told[1].values) == {SERIES_UID_TAG, CHARSET_TAG}
    heard, full = SeriesSet(), SeriesSet()
    for n, (short, whole) in enumerate(zip(told, headers, strict=True)):
        heard.add(short, f"{n}.dcm")
        full.add(whole, f"{n}.dcm")
    as_json = [(view.to_json(), names) for view, names in full.items()]
    assert [(view.to_json(), names) for view, names in heard.items()] == as_json
    assert as_json[0][0]["EchoTime"] == 2.5 and as_json[0][0]["InversionTime"] == 900
    assert as_json[0][0]["NumFiles"] == 5


def test_an_arrival_the_box_cannot_make_is_an_os_error_and_the_file_stays(files: Path) -> None:
    remote, _box = worker_with(files, per_series=False, fail=True)
    src = part(files, 1)
    with pytest.raises(OSError, match="No space left"):  # intake answers A700
        add_file(remote, 1, KEY, src, "1.dcm", header("A"))
    assert src.exists()  # intake.keep removes it


def test_an_oversized_message_is_refused_by_the_sender_and_dropped_by_the_receiver() -> None:
    box, worker = pair()
    with pytest.raises(OSError, match="at most"):
        worker.send(("log", "x", 30, "y" * (workers.MESSAGE + 1)))
    raw = b"z" * (workers.MESSAGE + 10)  # as a buggy sender would write it, past send()
    worker.sock.send(raw)
    assert box.receive() == (("dropped", workers.MESSAGE), [])
    worker.send(("closed", 3))  # and the channel goes on
    assert box.receive() == (("closed", 3), [])


def test_a_workers_long_log_line_is_cut_to_what_the_box_logs() -> None:
    box, worker = pair()
    record = logging.LogRecord(
        "magickbox.x", logging.WARNING, __file__, 1, "%s", ("u" * 10**6,), None
    )
    workers.ToBox(worker).emit(record)
    got = box.receive()
    assert got is not None
    (_kind, name, level, text), _fds = got
    assert (name, level) == ("magickbox.x", logging.WARNING)
    assert len(text) < workers.LOG_LIMIT + 100 and text.endswith("characters more)")
