"""The native receiver's data-set path, with dcmtk's storescu as the sender.

A data set up to ``incoming.MEMORY`` bytes is held in memory, walked there and written
with its file meta in one call; a larger one streams to its file while it arrives. Both
must store exactly what was sent (the data set byte for byte behind a file meta of ours),
and a malformed data set between good ones is refused alone.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from magickbox import wire
from magickbox.receive import incoming
from magickbox.receive.intake import CANNOT_UNDERSTAND, SUCCESS
from magickbox.receive.native import Association
from magickbox.testing.dicomgen import write_study
from tests.conftest import InProcessBox, copy_bucket, dcmtk
from tests.e2e.peers import wait_for
from tests.integration.test_native_receiver import MR, Peer, dataset_of, status, wait_files

KEEP = "#!/bin/sh\nexit 0\n"
BIG = 1100  # rows and columns of 16-bit pixels: past what a data set may hold in memory


@pytest.fixture
def native(app_factory: Callable[..., InProcessBox], tmp_path: Path) -> InProcessBox:
    home = tmp_path / "home"
    copy_bucket(home, "Keep", KEEP)
    return app_factory(home=home, dicom=True, quiet_seconds=0.3, receiver="native")


def storescu(box: InProcessBox, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("storescu"), "-v", "+sd", "+r", "-nh", "-aet", "PATH", "-aec", "Keep",
         "127.0.0.1", str(box.dicom_port), str(folder)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip


def stored_files(box: InProcessBox, jobs: list[dict]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for job in jobs:
        folder = box.home / "scratch" / job["scratchdir"] / "INPUT"
        found.update({p.name: p for p in folder.rglob("*.dcm")})
    return found


def test_data_sets_in_memory_and_past_it_are_stored_byte_for_byte(
    native: InProcessBox, tmp_path: Path
) -> None:
    assert BIG * BIG * 2 > incoming.MEMORY  # the big ones take the streaming path
    send = tmp_path / "send"
    studies = [
        write_study(send / "mr", n_images=4, rows=64, cols=64, seed=1),
        write_study(send / "ct", n_images=3, rows=512, cols=512, modality="CT", seed=2),
        write_study(send / "big", n_images=2, rows=BIG, cols=BIG, seed=3),
    ]
    sent = {p.name: p for s in studies for p in s.paths}
    result = storescu(native, send)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Received Store Response (Success)") == len(sent), result.stderr

    stored = stored_files(native, wait_files(native, len(sent)))
    assert stored.keys() == sent.keys()
    for name, path in stored.items():
        assert dataset_of(path) == dataset_of(sent[name]), name
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == pydicom.dcmread(sent[name]).file_meta.TransferSyntaxUID
        assert f"{meta.MediaStorageSOPInstanceUID}.dcm" == name
    assert not any((native.home / "scratch" / ".partial").iterdir())


def send_dataset(peer: Peer, sop: str, msg_id: int, data: bytes) -> int:
    """One C-STORE over ``peer``, the data set in PDVs of 1 MiB; the status answered."""
    peer.sock.sendall(wire.pdv(1, wire.COMMAND_BIT | wire.LAST_BIT,
                               wire.store_command(MR, sop, msg_id)))  # fmt: skip
    step = 1 << 20
    for start in range(0, len(data), step):
        last = wire.LAST_BIT if start + step >= len(data) else 0
        peer.sock.sendall(wire.pdv(1, last, data[start : start + step]))
    return status(peer.response())


def test_a_malformed_data_set_among_good_ones_is_refused_alone(
    native: InProcessBox, tmp_path: Path
) -> None:
    """C000 for a data set cut inside its last element, in memory and streamed alike; the
    association goes on and the good ones around them are stored byte for byte."""
    small = write_study(tmp_path / "small", n_images=3, rows=64, cols=64, seed=4).paths
    big = write_study(tmp_path / "big", n_images=2, rows=BIG, cols=BIG, seed=5).paths
    peer = Peer(native.dicom_port)
    peer.associate("Keep")
    answers = []
    for msg_id, path in enumerate([small[0], small[1], big[0], big[1], small[2]], start=1):
        data = dataset_of(path)
        if path in (small[1], big[0]):
            data = data[:-3]
        answers.append(send_dataset(peer, path.stem, msg_id, data))
    assert answers == [SUCCESS, CANNOT_UNDERSTAND, CANNOT_UNDERSTAND, SUCCESS, SUCCESS]
    peer.sock.sendall(wire.release_rq())
    assert peer.recv_pdu()[0] == wire.RELEASE_RP
    peer.sock.close()  # as a requestor does after the release: the box waits for it (ARTIM)

    stored = stored_files(native, wait_files(native, 3))
    kept = {p.name: p for p in (small[0], big[1], small[2])}
    assert stored.keys() == kept.keys()
    for name, path in stored.items():
        assert dataset_of(path) == dataset_of(kept[name]), name
    assert not any((native.home / "scratch" / ".partial").iterdir())


@pytest.mark.parametrize("processes", [0, 2], ids=["threads", "workers"])
def test_a_data_set_whose_answer_cannot_go_out_still_counts_in_its_views(
    app_factory: Callable[..., InProcessBox],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    processes: int,
) -> None:
    """A kept file's count and series view are recorded after its answer: an answer that
    fails (the connection breaks) must not leave the file in its job but out of its views."""
    real = Association._respond
    answered: list[int] = []

    def respond(self: Association, context_id: int, request: wire.Command,
                status: int) -> None:  # fmt: skip
        answered.append(status)
        if len(answered) == 3:
            raise OSError("the connection broke")  # what a reset peer makes sendall raise
        real(self, context_id, request, status)

    monkeypatch.setattr(Association, "_respond", respond)  # before workers fork
    home = tmp_path / "home"
    copy_bucket(home, "Keep", KEEP)
    box = app_factory(home=home, dicom=True, quiet_seconds=0.3, receiver="native",
                      receiver_processes=processes)  # fmt: skip
    study = write_study(tmp_path / "s", n_images=3, rows=32, cols=32, seed=6)
    peer = Peer(box.dicom_port)
    peer.associate("Keep")
    first_two = enumerate(study.paths[:2], start=1)
    assert [send_dataset(peer, p.stem, n, dataset_of(p)) for n, p in first_two] == [SUCCESS] * 2
    third = study.paths[2]
    peer.sock.sendall(wire.pdv(1, wire.COMMAND_BIT | wire.LAST_BIT,
                               wire.store_command(MR, third.stem, 3)))  # fmt: skip
    peer.sock.sendall(wire.pdv(1, wire.LAST_BIT, dataset_of(third)))
    assert peer.closed(within=10)  # the box gave the association up, no answer sent

    (job,) = wait_files(box, 3)
    assert sorted(stored_files(box, [job])) == sorted(p.name for p in study.paths)
    raw = box.home / "views" / "raw" / job["study_uid"]
    # The views are written a moment after the job is listed: wait for them.
    views = wait_for("the study's series views", lambda: list(raw.glob("*.json")), timeout=30)
    assert [json.loads(p.read_text())["NumFiles"] for p in views] == [3]
