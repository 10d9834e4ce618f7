"""A small full disk, end to end: a real ``magickbox serve`` whose home is a 60 MB tmpfs.

Below the reserve dcmtk's storescu is told "out of resources" (A700) and then rejected
while associating; what was acknowledged before stays; freeing space lets the very same
send through without a restart. A full disk while a data set is written answers A700 too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer, free_port, tmpfs
from tests.e2e.peers import (
    api_jobs,
    assert_receiver,
    input_files,
    install_buckets,
    wait_for,
    wait_jobs,
)

pytestmark = pytest.mark.e2e

KEEP = "#!/bin/sh\nexit 0\n"  # writes nothing: the disk is the test's alone
MB = 1 << 20
IMAGE = 512  # rows and columns: 512 KiB of pixels an image


@pytest.fixture(name="tmpfs")
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 60 MB filesystem of this test's own."""
    with tmpfs(tmp_path / "disk") as mount:
        yield mount


def ballast(folder: Path, leave_free: int) -> Path:
    """A file that fills the filesystem of ``folder`` until ``leave_free`` bytes are free."""
    path = folder / "ballast"
    size = shutil.disk_usage(folder).free - leave_free
    with path.open("wb") as fh:
        for _ in range(size // MB):
            fh.write(b"\0" * MB)
        fh.write(b"\0" * (size % MB))
    return path


def storescu_text(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def test_a_send_past_the_reserve_is_refused_loses_nothing_and_goes_through_later(
    box_factory, tmpfs: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    home = tmpfs / "home"
    install_buckets(home, Keep=KEEP)
    box: BoxServer = box_factory(home=home, quiet=0.3,
                                 extra_args=["--set", "disk_reserve=20M"])  # fmt: skip
    study = tmp_path / "study"
    write_study(study, n_images=30, rows=IMAGE, cols=IMAGE, seed=7)  # 15 MiB
    weight = ballast(tmpfs, leave_free=20 * MB + 6 * MB)  # room for ~12 images

    first = box.storescu(study, "Keep", "ip44", "-v")  # the statuses are verbose output
    assert "Refused: OutOfResources" in storescu_text(first), storescu_text(first)
    job = wait_jobs(box, 1)[0]
    kept = input_files(box, job["scratchdir"])
    assert 0 < len(kept) < 30, kept
    assert len(kept) == storescu_text(first).count("Received Store Response (Success)")
    assert box.get("/api/v1/health").json()["disk"]["low"] is True

    refused = box.storescu(study, "Keep", "ip44", "-v")
    assert refused.returncode != 0
    assert "Local Limit Exceeded" in storescu_text(refused), storescu_text(refused)
    assert len(api_jobs(box)) == 1  # the refused association made nothing

    weight.unlink()  # space comes back: the same send goes through, no restart
    wait_for("the box to accept again", lambda: box.get("/api/v1/health").json()["accepting"])
    again = box.storescu(study, "Keep")
    assert again.returncode == 0, storescu_text(again)
    jobs = wait_jobs(box, 2)
    assert len(input_files(box, jobs[0]["scratchdir"])) == 30
    assert input_files(box, job["scratchdir"]).keys() == kept.keys()  # nothing acknowledged lost


@pytest.mark.parametrize("receiver", ["pynetdicom", "native"])
def test_a_full_disk_while_a_data_set_is_written_answers_a700_and_keeps_the_rest(
    box_factory, tmpfs: Path, tmp_path: Path, receiver: str
) -> None:  # type: ignore[no-untyped-def]
    """No reserve: the disk really fills while a data set is written (ENOSPC). Each
    refused data set gets its own A700 and the association goes on (the native receiver
    writes a data set of this size in one writev once it is whole)."""
    home = tmpfs / "home"
    install_buckets(home, Keep=KEEP)
    box: BoxServer = box_factory(home=home, quiet=0.3, extra_args=[
        "--set", "disk_reserve=0", "--set", f"receiver={receiver}"])  # fmt: skip
    assert_receiver(box, receiver)
    study = tmp_path / "study"
    write_study(study, n_images=20, rows=IMAGE, cols=IMAGE, seed=8)
    weight = ballast(tmpfs, leave_free=5 * MB)

    first = box.storescu(study, "Keep", "ip44", "-v")
    text = storescu_text(first)
    assert "Refused: OutOfResources" in text, text
    acknowledged = text.count("Received Store Response (Success)")
    assert 0 < acknowledged < 20, text
    # one answer per data set: every one of the 20 was answered within the association
    assert acknowledged + text.count("Refused: OutOfResources") == 20, text
    weight.unlink()  # room for the job to be made and for the send again
    job = wait_jobs(box, 1)[0]
    assert len(input_files(box, job["scratchdir"])) == acknowledged
    assert not any((home / "scratch" / ".partial").iterdir())  # no half-written data set left
    again = box.storescu(study, "Keep")
    assert again.returncode == 0, storescu_text(again)
    assert len(input_files(box, wait_jobs(box, 2)[0]["scratchdir"])) == 20


GATED = """#!/bin/sh
while [ ! -e "{gate}" ]; do sleep 0.1; done
"""


def test_the_scrub_frees_down_to_the_low_mark_and_spares_running_and_unsent_jobs(
    tmp_path: Path,
) -> None:
    """A 100 MB home, scrub at 50 % down to 30 %: eight studies of 5 MB each, one still
    running, one whose send waits for a retry in an hour; ballast takes it over the mark."""
    with tmpfs(tmp_path / "disk", size="100m") as disk:
        home = disk / "home"
        gate = tmp_path / "gate"
        install_buckets(home, Keep=KEEP, Gated=GATED.format(gate=gate), Unsent=KEEP)
        nowhere = free_port()  # nothing listens: the send fails and is retried in an hour
        to_nowhere = {"IP": "127.0.0.1", "PORT": nowhere, "AETitleSender": "MB",
                      "AETitleTo": "NOWHERE"}  # fmt: skip
        table = {"routing": [{"name": "to nowhere", "AETitleIn": "^Unsent$",
                              "RouteDirectory": "INPUT", "send": [{".*": to_nowhere}]}]}
        (home / "routing.json").write_text(json.dumps(table))
        settings = {"scrub_high": 50, "scrub_low": 30, "sweep_seconds": 0.3,
                    "disk_reserve": 0, "routing_retry_delay": 3600}  # fmt: skip
        args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
        box = BoxServer(home, quiet=0.3, extra_args=args)
        box.log_path = tmp_path / "server.log"  # off the small disk
        try:
            box.start()
            names = scrub_scene(box, tmp_path)
            ballast_to(box, disk, 52.5)  # the scrub may start at once: look at its log after
            wait_for("the scrub", lambda: box.get("/api/v1/disk").json()["used_percent"] < 30)
            left = {j["scratchdir"] for j in api_jobs(box)}
            assert {names["running"], names["unsent"]} <= left
            keep = names["keep"]
            gone = [n for n in keep if n not in left]
            assert 0 < len(gone) < len(keep) and gone == keep[: len(gone)]  # the oldest first
            assert not any((home / "scratch" / n).exists() for n in gone)
            log = box.log_path.read_text()
            assert "above scrub_high 50%: freeing down to 30%" in log
            assert all(f"removed job {n}" in log for n in gone) and "freed" in log
        finally:
            gate.touch()
            box.stop()


def scrub_scene(box: BoxServer, tmp_path: Path) -> dict:
    """Send the studies: one to Gated (left running), one to Unsent, six to Keep."""
    def send(bucket: str, n: int) -> None:
        study = tmp_path / f"s{n}"
        write_study(study, n_images=10, rows=IMAGE, cols=IMAGE, seed=100 + n)
        assert box.storescu(study, bucket).returncode == 0
        shutil.rmtree(study)

    send("Gated", 0)
    running = wait_for("the running job", lambda: api_jobs(box, state="running"))[0]
    send("Unsent", 1)
    unsent = wait_jobs(box, 1, bucket="Unsent")[0]
    sends = f"/api/v1/jobs/{unsent['scratchdir']}/sends"
    first = wait_for("the failed first try", lambda: [
        s for s in box.get(sends).json() if s["attempts"] >= 1 and s["state"] == "pending"])[0]
    assert first["reason"], first  # it failed, and its retry is in an hour
    for n in range(2, 8):
        send("Keep", n)
        wait_jobs(box, n - 1, bucket="Keep")
    keep = [j["scratchdir"] for j in reversed(api_jobs(box, bucket="Keep"))]  # oldest first
    return {"running": running["scratchdir"], "unsent": unsent["scratchdir"], "keep": keep}


def ballast_to(box: BoxServer, disk: Path, percent: float) -> None:
    """Fill ``disk`` until ``percent`` of it is in use (as the box counts it)."""
    now = box.get("/api/v1/disk").json()
    assert now["used_percent"] < 50, now  # below the high mark until the ballast comes
    room = now["used"] + now["free"]
    ballast(disk, leave_free=now["free"] - int(room * percent / 100 - now["used"]))
