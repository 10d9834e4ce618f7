"""Grouper: received files -> arrivals -> one hand-over per arrival after a quiet window.

The tests use a small quiet window and wait for hand-overs with generous timeouts; they
never assert that something is fast, only that it happens, or that it has not happened
while an association holds an arrival back.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from magickbox.receive.completeness import SendPolicy, Verdict
from magickbox.receive.grouping import ArrivalKey, Grouper
from magickbox.receive.intake import Keeper
from magickbox.study.series import RawHeader, SeriesSet


def add_file(
    keeper: Keeper, assoc_id: int, key: ArrivalKey, src: Path, name: str,
    header: RawHeader | None = None,
) -> None:  # fmt: skip
    """A received file kept as the receiver keeps it: placed, then recorded."""
    keeper.record(keeper.place(assoc_id, key, src, name, header))


QUIET = 0.2
TIMEOUT = 20.0  # generous: a loaded CI machine may be slow, but the hand-over must come

KEY_A = ArrivalKey("MODALITY", "ProcBucket", "10.0.0.1", "1.2.3.1")
KEY_B = ArrivalKey("MODALITY", "ProcBucket", "10.0.0.1", "1.2.3.2")


@dataclass
class Handed:
    key: ArrivalKey
    started: float
    files: list[str]
    moved_to: Path
    series: object = None
    verdict: Verdict | None = None


class FakeJobs:
    """The on_ready callback: takes the folder away as create_job does and records it."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.handed: list[Handed] = []
        self.fail = False
        self._cond = threading.Condition()

    def __call__(
        self,
        folder: Path,
        key: ArrivalKey,
        started: float,
        series: object = None,
        verdict: Verdict | None = None,
    ) -> None:
        if self.fail:
            raise RuntimeError("database is down")
        target = self.dest / f"job{len(self.handed)}"
        shutil.move(str(folder), target)
        with self._cond:
            names = sorted(p.name for p in target.iterdir())
            self.handed.append(Handed(key, started, names, target, series, verdict))
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = TIMEOUT) -> list[Handed]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.handed) >= n, timeout)
            assert ok, f"expected {n} hand-overs, got {len(self.handed)}"
            return list(self.handed)

    def count(self) -> int:
        with self._cond:
            return len(self.handed)


@pytest.fixture
def jobs(tmp_path: Path) -> FakeJobs:
    dest = tmp_path / "jobs"
    dest.mkdir()
    return FakeJobs(dest)


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    return tmp_path / "scratch" / ".incoming"


@pytest.fixture
def grouper(incoming: Path, jobs: FakeJobs) -> Iterator[Grouper]:
    g = Grouper(incoming, QUIET, jobs)
    g.start()
    yield g
    g.stop()


class Wire:
    """Stands in for pynetdicom: makes a fully received temporary file to hand over."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.n = 0

    def file(self, content: bytes = b"DICM") -> Path:
        self.n += 1
        path = self.root / f"partial{self.n}"
        path.write_bytes(content)
        return path


@pytest.fixture
def wire(tmp_path: Path) -> Wire:
    return Wire(tmp_path / "scratch" / ".partial")


def records(incoming: Path) -> list[Path]:
    return sorted(incoming.glob("*.json"))


def records_gone(incoming: Path, timeout: float = TIMEOUT) -> bool:
    """The grouper drops an arrival's record just after the hand-over returns."""
    deadline = time.monotonic() + timeout
    while records(incoming) and time.monotonic() < deadline:
        time.sleep(0.01)
    return records(incoming) == []


def test_one_send_becomes_one_job_after_quiet(
    grouper: Grouper, jobs: FakeJobs, wire: Wire, incoming: Path
) -> None:
    before = time.time()
    for i in range(3):
        add_file(grouper, 1, KEY_A, wire.file(), f"img{i}.dcm")
    assert len(records(incoming)) == 1  # the arrival is on disk from its first file on
    closed = time.monotonic()
    grouper.association_closed(1)

    [job] = jobs.wait_for(1)
    handed_after = time.monotonic() - closed
    assert job.key == KEY_A
    assert job.files == ["img0.dcm", "img1.dcm", "img2.dcm"]
    assert before - 1 <= job.started <= time.time()
    # The quiet window is a minimum: no hand-over before it has passed.
    assert handed_after >= QUIET * 0.9
    assert records_gone(incoming)  # the record goes once the job exists
    assert grouper.pending() == 0
    time.sleep(QUIET * 2)
    assert jobs.count() == 1  # handed over once, not again


def test_two_keys_make_two_jobs(grouper: Grouper, jobs: FakeJobs, wire: Wire) -> None:
    # One association carrying two studies.
    add_file(grouper, 1, KEY_A, wire.file(), "a1.dcm")
    add_file(grouper, 1, KEY_B, wire.file(), "b1.dcm")
    add_file(grouper, 1, KEY_A, wire.file(), "a2.dcm")
    grouper.association_closed(1)

    handed = jobs.wait_for(2)
    by_key = {h.key: h.files for h in handed}
    assert by_key == {KEY_A: ["a1.dcm", "a2.dcm"], KEY_B: ["b1.dcm"]}


@pytest.mark.parametrize(
    "other",
    [
        ArrivalKey("OTHERAE", "ProcBucket", "10.0.0.1", "1.2.3.1"),
        ArrivalKey("MODALITY", "OtherBucket", "10.0.0.1", "1.2.3.1"),
        ArrivalKey("MODALITY", "ProcBucket", "10.0.0.2", "1.2.3.1"),
    ],
    ids=["caller", "called", "ip"],
)
def test_each_part_of_the_key_separates_sends(
    grouper: Grouper, jobs: FakeJobs, wire: Wire, other: ArrivalKey
) -> None:
    add_file(grouper, 1, KEY_A, wire.file(), "a.dcm")
    add_file(grouper, 2, other, wire.file(), "b.dcm")
    grouper.association_closed(1)
    grouper.association_closed(2)
    handed = jobs.wait_for(2)
    assert {h.key for h in handed} == {KEY_A, other}


def test_an_open_association_holds_the_send_back(
    grouper: Grouper, jobs: FakeJobs, wire: Wire
) -> None:
    add_file(grouper, 7, KEY_A, wire.file(), "a.dcm")
    time.sleep(QUIET * 4)  # far past the quiet window, but the association is still open
    assert jobs.count() == 0
    assert grouper.pending() == 1
    grouper.association_closed(7)
    [job] = jobs.wait_for(1)
    assert job.files == ["a.dcm"]


def test_two_open_associations_on_one_key_merge(
    grouper: Grouper, jobs: FakeJobs, wire: Wire
) -> None:
    add_file(grouper, 1, KEY_A, wire.file(), "series1.dcm")
    add_file(grouper, 2, KEY_A, wire.file(), "series2.dcm")
    grouper.association_closed(1)
    time.sleep(QUIET * 3)
    assert jobs.count() == 0  # association 2 still open: the arrival waits for it
    add_file(grouper, 2, KEY_A, wire.file(), "series2b.dcm")
    grouper.association_closed(2)
    [job] = jobs.wait_for(1)
    assert job.files == ["series1.dcm", "series2.dcm", "series2b.dcm"]


def test_back_to_back_associations_within_quiet_merge(
    incoming: Path, jobs: FakeJobs, wire: Wire
) -> None:
    """OsiriX: one series per association, the next opening right after the last closed."""
    g = Grouper(incoming, 1.0, jobs)  # wide enough that no pause of a busy machine splits it
    g.start()
    try:
        for assoc in range(1, 4):
            add_file(g, assoc, KEY_A, wire.file(), f"s{assoc}.dcm")
            g.association_closed(assoc)
        [job] = jobs.wait_for(1)
        assert job.files == ["s1.dcm", "s2.dcm", "s3.dcm"]
    finally:
        g.stop()


def test_a_file_after_hand_over_makes_a_new_send(
    grouper: Grouper, jobs: FakeJobs, wire: Wire
) -> None:
    add_file(grouper, 1, KEY_A, wire.file(b"first"), "same.dcm")
    grouper.association_closed(1)
    [first] = jobs.wait_for(1)

    add_file(grouper, 2, KEY_A, wire.file(b"second"), "same.dcm")
    grouper.association_closed(2)
    _, second = jobs.wait_for(2)
    assert second.key == KEY_A
    assert second.files == ["same.dcm"]
    assert second.moved_to != first.moved_to
    # The first job's file was not touched by the second arrival.
    assert (first.moved_to / "same.dcm").read_bytes() == b"first"
    assert (second.moved_to / "same.dcm").read_bytes() == b"second"


def test_failed_hand_over_is_tried_again_without_a_restart(
    incoming: Path, jobs: FakeJobs, wire: Wire
) -> None:
    """A full disk failed the job's making: once space is back the arrival becomes one."""
    jobs.fail = True
    g = Grouper(incoming, QUIET, jobs, retry=0.2)
    g.start()
    try:
        add_file(g, 1, KEY_A, wire.file(), "a.dcm")
        g.association_closed(1)
        deadline = time.monotonic() + TIMEOUT
        while g.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert jobs.count() == 0 and len(records(incoming)) == 1  # tried, failed, kept
        jobs.fail = False
        [job] = jobs.wait_for(1)
        while records(incoming) and time.monotonic() < deadline:  # removed after the hand-over
            time.sleep(0.05)
    finally:
        g.stop()
    assert job.key == KEY_A and job.files == ["a.dcm"]
    assert records(incoming) == []


def test_failed_hand_over_keeps_folder_and_record_for_the_next_start(
    incoming: Path, jobs: FakeJobs, wire: Wire
) -> None:
    jobs.fail = True
    g = Grouper(incoming, QUIET, jobs)
    g.start()
    try:
        add_file(g, 1, KEY_A, wire.file(), "a.dcm")
        g.association_closed(1)
        deadline = time.monotonic() + TIMEOUT
        while g.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert g.pending() == 0  # it was tried
    finally:
        g.stop()
    [record] = records(incoming)
    assert (record.with_suffix("") / "a.dcm").is_file()

    # The next start turns it into a job.
    jobs.fail = False
    [job] = handed_after_start(Grouper(incoming, QUIET, jobs), jobs, 1)
    assert job.key == KEY_A
    assert job.files == ["a.dcm"]
    assert records_gone(incoming)


def handed_after_start(grouper: Grouper, jobs: FakeJobs, n: int) -> list[Handed]:
    """Start ``grouper`` (it recovers what .incoming holds) and wait for ``n`` hand-overs."""
    grouper.start()
    try:
        return jobs.wait_for(n)
    finally:
        grouper.stop()


def write_arrival(
    incoming: Path, arrival_id: str, key: ArrivalKey, started: float, files: list[str]
):
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / f"{arrival_id}.json").write_text(json.dumps({**asdict(key), "started": started}))
    folder = incoming / arrival_id
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(b"DICM")
    return folder


def test_recover_turns_leftover_sends_into_jobs(incoming: Path, jobs: FakeJobs) -> None:
    write_arrival(incoming, "a" * 32, KEY_A, 1000.0, ["x.dcm", "y.dcm"])
    write_arrival(incoming, "b" * 32, KEY_B, 2000.0, ["z.dcm"])
    handed = handed_after_start(Grouper(incoming, QUIET, jobs), jobs, 2)
    by_key = {h.key: h for h in handed}
    assert by_key[KEY_A].files == ["x.dcm", "y.dcm"]
    assert by_key[KEY_A].started == 1000.0  # the arrival's own start, not the restart's time
    assert by_key[KEY_B].files == ["z.dcm"]
    assert by_key[KEY_B].started == 2000.0
    assert records_gone(incoming) and list(incoming.iterdir()) == []


def test_recover_drops_records_whose_folder_is_gone(incoming: Path, jobs: FakeJobs) -> None:
    incoming.mkdir(parents=True)
    (incoming / f"{'c' * 32}.json").write_text(json.dumps({**asdict(KEY_A), "started": 1.0}))
    write_arrival(incoming, "d" * 32, KEY_B, 2.0, ["z.dcm"])
    [job] = handed_after_start(Grouper(incoming, QUIET, jobs), jobs, 1)
    assert job.key == KEY_B
    assert records_gone(incoming) and list(incoming.iterdir()) == []


def test_recover_leaves_an_unreadable_record_alone(incoming: Path, jobs: FakeJobs) -> None:
    incoming.mkdir(parents=True)
    bad = incoming / f"{'e' * 32}.json"
    bad.write_text("{not json")
    (incoming / ("e" * 32)).mkdir()
    Grouper(incoming, QUIET, jobs).recover()
    assert jobs.count() == 0
    assert bad.exists()  # left for inspection, not deleted


NEEDS_DWI = SendPolicy(quiet=QUIET, requires=("T1", "DWI"), wait=600.0)


def recovering_grouper(incoming: Path, jobs: FakeJobs, types: set[str]) -> Grouper:
    """A grouper whose bucket requires T1 and DWI; its sends' types are ``types``."""
    return Grouper(incoming, QUIET, jobs, policy_for=lambda _aet: NEEDS_DWI,
                   types_of=lambda _arrival: types)  # fmt: skip


def test_a_recovered_send_waits_on_from_its_last_file_not_from_the_restart(
    incoming: Path, jobs: FakeJobs
) -> None:
    """Its last file came 700 s before the restart: with wait_seconds 600 the wait is
    over, so it is a failed job at once (counted from the restart, 600 s more)."""
    folder = write_arrival(incoming, "f" * 32, KEY_A, 1000.0, ["t1.dcm"])
    old = time.time() - 700
    for path in (folder / "t1.dcm", folder):
        os.utime(path, (old, old))
    [job] = handed_after_start(recovering_grouper(incoming, jobs, {"T1"}), jobs, 1)
    assert job.verdict is not None and job.verdict.fail
    assert job.verdict.reason == "missing series: DWI"
    assert job.files == ["t1.dcm"] and job.started == 1000.0


def test_a_recovered_send_missing_a_type_goes_on_waiting_until_it_comes(
    incoming: Path, jobs: FakeJobs
) -> None:
    write_arrival(incoming, "g" * 32, KEY_A, 1000.0, ["t1.dcm"])
    types = {"T1"}
    g = recovering_grouper(incoming, jobs, types)
    g.start()
    try:
        time.sleep(QUIET * 5)  # quiet for five windows: without DWI it is still waiting
        assert jobs.count() == 0 and g.pending() == 1
        assert g.snapshot()[0]["files"] == 1
        types.add("DWI")  # as a later send's file would bring it
        g.association_closed(999)  # a closed association wakes the grouper up
        [job] = jobs.wait_for(1)
    finally:
        g.stop()
    assert job.verdict is None and job.key == KEY_A  # complete: no missing series


def _header(series_uid: str) -> RawHeader:
    raw = {0x0020000E: series_uid.encode(), 0x00080060: b"MR"}
    return RawHeader(raw, {0x0020000E: "UI", 0x00080060: "CS"}, implicit=False, little=True)


def test_headers_become_the_arrivals_series_views(
    grouper: Grouper, jobs: FakeJobs, wire: Wire
) -> None:
    for i, uid in enumerate(["1.1", "1.2", "1.1"]):
        add_file(grouper, 1, KEY_A, wire.file(), f"img{i}.dcm", _header(uid))
    assert grouper.snapshot()[0]["series"] == 2
    grouper.association_closed(1)
    [job] = jobs.wait_for(1)
    assert isinstance(job.series, SeriesSet)
    got = {view.series_uid: (view.num_files, files) for view, files in job.series.items()}
    assert got == {"1.1": (2, ["img0.dcm", "img2.dcm"]), "1.2": (1, ["img1.dcm"])}
    assert job.series.views["1.1"].values["Modality"] == "MR"


def test_a_file_without_header_leaves_the_views_to_the_job(
    grouper: Grouper, jobs: FakeJobs, wire: Wire
) -> None:
    add_file(grouper, 1, KEY_A, wire.file(), "a.dcm", _header("1.1"))
    add_file(grouper, 1, KEY_A, wire.file(), "b.dcm")  # e.g. a receiver that captures none
    grouper.association_closed(1)
    [job] = jobs.wait_for(1)
    assert job.series is None  # the job store reads every header once instead
