"""The native receiver's worker processes, on a real box: a worker that dies costs only its
own associations (what it acknowledged stays), a new one takes its place, a stop ends them
all, and with ``receiver_processes = 0`` every association runs on the box's threads.

Every other receive test runs on the workers too (the default): test_receive_edge's refusal
log lines, for one, are written by a worker and logged by the box.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer
from tests.e2e.peers import (
    QUICK,
    associate,
    contexts_for,
    input_files,
    install_buckets,
    pid_alive,
    receiver_workers,
    send_files,
    store,
    wait_for,
    wait_jobs,
)

pytestmark = pytest.mark.e2e


def two_workers(box: BoxServer) -> set[int]:
    def probe() -> set[int] | None:
        found = receiver_workers(box)
        return found if len(found) == 2 else None

    return wait_for("two receiver workers", probe)


@pytest.fixture
def box(box_factory, tmp_path: Path) -> BoxServer:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Recv=QUICK)
    return box_factory(home=home, env={"MAGICKBOX_RECEIVER_PROCESSES": "2"})


def test_associations_run_in_worker_processes_that_a_stop_ends(
    box: BoxServer, tmp_path: Path
) -> None:
    pids = two_workers(box)
    study = write_study(tmp_path / "s", n_images=3, rows=16, cols=16)
    assert len(send_files(box.dicom_port, "Recv", study.paths).ok) == 3
    (job,) = wait_jobs(box, 1)
    assert sorted(input_files(box, job["scratchdir"])) == sorted(p.name for p in study.paths)
    box.stop()
    for pid in pids:
        wait_for(f"worker {pid} to end with the box", lambda pid=pid: not pid_alive(pid) or None)


def test_a_killed_worker_loses_nothing_it_acknowledged_and_is_replaced(
    box: BoxServer, tmp_path: Path
) -> None:
    before = two_workers(box)
    study = write_study(tmp_path / "s", n_images=6, rows=16, cols=16)
    assoc = associate(box.dicom_port, "Recv", "DIES", contexts_for(study.paths))
    acked = [p.name for p in study.paths[:3] if store(assoc, p) == 0x0000]
    assert len(acked) == 3
    for pid in before:  # the association's worker is one of them
        os.kill(pid, signal.SIGKILL)
    # The box closes the dead worker's connections: the peer sees its association end.
    wait_for("the association to be gone", lambda: not assoc.is_established or None)
    (job,) = wait_jobs(box, 1, caller_aet="DIES")
    assert sorted(input_files(box, job["scratchdir"])) == sorted(acked)
    # New workers take their place and the next send is received whole.
    wait_for("two new workers", lambda: len(receiver_workers(box) - before) == 2 or None)
    assert len(send_files(box.dicom_port, "Recv", study.paths[3:], calling="AFTER").ok) == 3
    (after,) = wait_jobs(box, 1, caller_aet="AFTER")
    assert sorted(input_files(box, after["scratchdir"])) == sorted(p.name for p in study.paths[3:])
    assert "receiver worker" in box.log_path.read_text()


def test_no_workers_every_association_on_a_thread(box_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Recv=QUICK)
    box = box_factory(home=home, env={"MAGICKBOX_RECEIVER_PROCESSES": "0"})
    study = write_study(tmp_path / "s", n_images=3, rows=16, cols=16)
    assert len(send_files(box.dicom_port, "Recv", study.paths).ok) == 3
    (job,) = wait_jobs(box, 1)
    assert len(input_files(box, job["scratchdir"])) == 3
    time.sleep(0.2)
    assert receiver_workers(box) == set()
