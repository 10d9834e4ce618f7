"""What the end-to-end tests share: a pynetdicom sender, raw DICOM bytes, waiting and looking.

The sender sends files as they are on disk (pynetdicom's chunked send: the bytes after
the file meta go on the wire untouched), proposing each file's own transfer syntax, so a
test can compare what the box stored with what was sent, byte for byte.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from magickbox.routing import dimse
from tests.conftest import BoxServer, copy_bucket, dcmtk

logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
# Send the bytes of a file as they are, never decoded and re-encoded.
_config.STORE_SEND_CHUNKED_DATASET = True

T = TypeVar("T")

# -- waiting -------------------------------------------------------------------------------


def wait_for(what: str, probe: Callable[[], T], timeout: float = 60.0) -> T:
    """Call ``probe`` until it returns something true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting ({timeout:g} s) for {what}; last: {last!r}")
        time.sleep(0.1)
        last = probe()
    return last


def api_jobs(box: BoxServer, **params: object) -> list[dict]:
    """Every job of /api/v1/jobs (one big page), newest first."""
    res = box.get("/api/v1/jobs", params={"limit": 10_000, **params})
    assert res.status_code == 200, res.text
    return res.json()["jobs"]


def api_job(box: BoxServer, scratchdir: str) -> dict:
    res = box.get(f"/api/v1/jobs/{scratchdir}")
    assert res.status_code == 200, res.text
    return res.json()


FINISHED = ("done", "failed")


def wait_jobs(box: BoxServer, n: int, timeout: float = 60.0, **params: object) -> list[dict]:
    """Wait until exactly ``n`` jobs (matching ``params``) exist and all are finished."""

    def probe() -> list[dict] | None:
        jobs = api_jobs(box, **params)
        if len(jobs) > n:
            raise AssertionError(f"expected {n} jobs, got {len(jobs)}: {jobs}")
        if len(jobs) == n and all(j["state"] in FINISHED for j in jobs):
            return jobs
        return None

    return wait_for(f"{n} finished jobs ({params})", probe, timeout)


def wait_state(box: BoxServer, scratchdir: str, *states: str, timeout: float = 60.0) -> dict:
    def probe() -> dict | None:
        job = api_job(box, scratchdir)
        return job if job["state"] in states else None

    return wait_for(f"job {scratchdir} to be {states}", probe, timeout)


# -- looking at the home -------------------------------------------------------------------


def job_dir(box: BoxServer, scratchdir: str) -> Path:
    return box.home / "scratch" / scratchdir


def input_files(box: BoxServer, scratchdir: str) -> dict[str, Path]:
    """The files of a job's INPUT by name."""
    folder = job_dir(box, scratchdir) / "INPUT"
    return {p.name: p for p in folder.rglob("*") if p.is_file()}


def dataset_part(path: Path) -> bytes:
    """The bytes of a Part 10 file after its file meta: the data set as it went on the wire."""
    _meta, offset = split_dataset(path)
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read()


def file_syntax(path: Path) -> str:
    meta, _offset = split_dataset(path)
    return str(meta.TransferSyntaxUID)


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is no zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def receiver_workers(box: BoxServer) -> set[int]:
    """The box's child processes that are receiver workers (buckets run as other programs)."""
    assert box.proc is not None
    found: set[int] = set()
    for task in Path(f"/proc/{box.proc.pid}/task").iterdir():
        try:  # a thread may end between the listing and the read
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"magickbox" in cmdline and pid_alive(int(pid)):  # a fork of the box itself
                found.add(int(pid))
    return found


# -- buckets -------------------------------------------------------------------------------

QUICK = """#!/bin/sh
# A test bucket: lists its input, records the run, succeeds.
ls "$1" > "$2/files.txt"
echo "run $MB_SCRATCHDIR" >> "$MB_MEMORY/runs.txt"
echo "listed $(ls "$1" | wc -l) files"
echo '[{"success": "success", "message": "listed"}]' > "$MB_PROC_JSON"
"""


def recv_box(box_factory: Callable[..., BoxServer], tmp_path: Path) -> BoxServer:
    """A started box with one QUICK bucket, Recv: what the receive tests send to."""
    home = tmp_path / "home"
    install_buckets(home, Recv=QUICK)
    return box_factory(home=home)


def install_buckets(home: Path, **buckets: str | tuple[str, dict]) -> None:
    """Install test buckets before the box starts: name=work.sh or name=(work.sh, info)."""
    for name, spec in buckets.items():
        work, info = spec if isinstance(spec, tuple) else (spec, {})
        copy_bucket(home, name, work, **info)


# -- sending -------------------------------------------------------------------------------


@dataclass
class SendResult:
    statuses: list[tuple[Path, int]] = field(default_factory=list)

    @property
    def ok(self) -> list[Path]:
        return [p for p, s in self.statuses if s == 0x0000]


def contexts_for(paths: Iterable[Path]) -> list[tuple[str, str]]:
    """(SOP class, transfer syntax) of each file: each is proposed in its own syntax only."""
    found: dict[tuple[str, str], None] = {}
    for path in paths:
        meta, _ = split_dataset(path)
        found[(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))] = None
    return list(found)


def associate(
    port: int,
    called: str,
    calling: str = "PYSCU",
    contexts: Sequence[tuple[str, str]] = (),
    echo: bool = False,
) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    if echo:
        ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, f"association to {called} on port {port} was not accepted"
    return assoc


def store(assoc: Association, path: Path) -> int:
    dimse.park_reactor(assoc)  # pynetdicom's own thread may otherwise take a quick answer
    status = assoc.send_c_store(path)
    assert "Status" in status, f"no C-STORE response for {path.name}"
    return int(status.Status)


def send_files(port: int, called: str, paths: Sequence[Path], calling: str = "PYSCU") -> SendResult:
    """Send ``paths`` over one association and release it; every status is recorded."""
    result = SendResult()
    assoc = associate(port, called, calling, contexts_for(paths))
    try:
        for path in paths:
            result.statuses.append((path, store(assoc, path)))
    finally:
        assoc.release()
    return result


def echo(port: int, called: str) -> int:
    assoc = associate(port, called, echo=True)
    try:
        dimse.park_reactor(assoc)
        status = assoc.send_c_echo()
        return int(status.Status)
    finally:
        assoc.release()


def echoscu(box: BoxServer, called: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-aec", called, "127.0.0.1", str(box.dicom_port)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def dataset_with(ds: Dataset, **changes: object) -> Dataset:
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def assert_receiver(box: BoxServer, receiver: str) -> None:
    """The box runs the receiver a test asked for (``--set receiver=...``): its log says."""
    module = "native" if receiver == "native" else "scp"
    assert f"magickbox.receive.{module}: DICOM receiver" in box.log_path.read_text(), receiver
