"""A fuzz test of the receiver: valid A-ASSOCIATE-RQ and P-DATA-TF PDUs, mutated (PDU
type, declared lengths, presentation context IDs, PDV lengths and flags, truncation,
stray bytes), seeded and bounded, against a running ``magickbox serve``. Afterwards
C-ECHO and a storescu send must work, and no thread may spin: the box's CPU time over
an idle second (from /proc) stays near what it was before the fuzzing.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom import dcmread

from magickbox import wire
from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer
from tests.e2e.peers import echoscu, recv_box, wait_jobs
from tests.integration.test_native_receiver import associate_rq, dataset_of

pytestmark = pytest.mark.e2e

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
CASES = 240
SEED = 1313


@pytest.fixture
def box(box_factory, tmp_path: Path) -> BoxServer:  # type: ignore[no-untyped-def]
    return recv_box(box_factory, tmp_path)


def cpu_seconds(pid: int) -> float:
    """User + system time of a process, all its threads, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pid: int, seconds: float = 1.0) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


# -- mutations of a valid PDU ------------------------------------------------------------


def set_type(rng: random.Random, raw: bytearray) -> None:
    raw[0] = rng.choice([0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0xFF])


def set_length(rng: random.Random, raw: bytearray) -> None:
    real = len(raw) - 6
    raw[2:6] = struct.pack(">I", rng.choice([0, 1, 5, real - 1, real + 1, real + 4096,
                                             1 << 31, 0xFFFFFFFF]) & 0xFFFFFFFF)  # fmt: skip


def truncate(rng: random.Random, raw: bytearray) -> None:
    del raw[rng.randint(1, len(raw) - 1) :]


def flip_bytes(rng: random.Random, raw: bytearray) -> None:
    for _ in range(rng.randint(1, 8)):
        raw[rng.randrange(len(raw))] = rng.randrange(256)


def set_context_id(rng: random.Random, raw: bytearray) -> None:
    """The presentation context ID: of the PDV (P-DATA) or of a proposed context (RQ)."""
    at = 10 if raw[0] == wire.P_DATA else bytes(raw).find(b"\x20\x00", 74) + 4
    if 0 < at < len(raw):
        raw[at] = rng.choice([0, 2, 3, 255, rng.randrange(256)])


def set_pdv(rng: random.Random, raw: bytearray) -> None:
    """A P-DATA's first PDV: its item length or its message control header."""
    if raw[0] != wire.P_DATA or len(raw) < 12:
        return flip_bytes(rng, raw)
    if rng.random() < 0.5:
        raw[6:10] = struct.pack(">I", rng.choice([0, 1, 2, 3, len(raw), 0xFFFFFFFF]))
    else:
        raw[11] = rng.randrange(256)
    return None


MUTATIONS: list[Callable[[random.Random, bytearray], None]] = [
    set_type, set_length, truncate, flip_bytes, set_context_id, set_pdv,
]  # fmt: skip


def valid_pdus(sop: str, data: bytes) -> dict[str, bytes]:
    contexts = [(1, MR, EXPLICIT_LE), (3, "1.2.840.10008.1.1", "1.2.840.10008.1.2")]
    command = wire.store_command(MR, sop, 1)
    both = wire.PDV_HEADER.pack(len(command) + 2, 1, 0x03) + command
    both += wire.PDV_HEADER.pack(len(data) + 2, 1, 0x02) + data
    return {
        "rq": associate_rq("Recv", contexts),
        "command": wire.pdv(1, 0x03, command),
        "data": wire.pdv(1, 0x02, data),
        "both": wire.pdu(wire.P_DATA, both),  # command and data set in one PDU
    }


def one_case(port: int, pdus: dict[str, bytes], seed: int) -> None:
    """One mutated PDU: an association request, or a P-DATA after a valid request."""
    rng = random.Random(seed)
    kind = rng.choice(list(pdus))
    raw = bytearray(pdus[kind])
    for mutate in rng.sample(MUTATIONS, rng.randint(1, 2)):
        if len(raw) > 1:
            mutate(rng, raw)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(2)
        try:
            if kind != "rq":
                sock.sendall(pdus["rq"])
                sock.recv(4096)  # the AC
                if kind == "data":  # a valid request first, so the data set has a home
                    sock.sendall(pdus["command"])
            sock.sendall(bytes(raw))
            sock.recv(4096)  # an answer, an abort or a close: any is fine
        except OSError:
            pass  # the box hung up on us: also fine


@pytest.mark.timeout(300)
def test_mutated_pdus_leave_the_receiver_serving_and_idle(box: BoxServer, tmp_path: Path) -> None:
    assert box.proc is not None
    baseline = idle_cpu(box.proc.pid)
    plain = write_study(tmp_path / "one", n_images=1, rows=16, cols=16,
                        transfer_syntax=EXPLICIT_LE)  # fmt: skip
    sop = str(dcmread(plain.paths[0], stop_before_pixels=True).SOPInstanceUID)
    pdus = valid_pdus(sop, dataset_of(plain.paths[0]))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: one_case(box.dicom_port, pdus, SEED + n), range(CASES)))
    assert box.proc.poll() is None, "the box died"
    assert echoscu(box, "Recv").returncode == 0

    study = write_study(tmp_path / "after", n_images=3, rows=16, cols=16)
    done = box.storescu(study.paths[0].parent, "Recv", "AFTERFUZZ")
    assert done.returncode == 0, done.stderr
    (job,) = wait_jobs(box, 1, caller_aet="AFTERFUZZ")
    assert job["study_uid"] == study.study_uid and job["files"] == 3

    time.sleep(2)  # the send's job has run; what is left open waits, it does not spin
    after = idle_cpu(box.proc.pid)
    assert after < baseline + 0.3, f"{after:.2f} s CPU in an idle second, {baseline:.2f} before"

