"""One box per home, and free ports, checked before any crash recovery touches the home."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from magickbox.testing.dicomgen import write_study
from magickbox.testing.server import BoxServer, listening
from tests.e2e.peers import (
    api_job,
    api_jobs,
    install_buckets,
    pid_alive,
    send_files,
    wait_for,
    wait_state,
)
from tests.e2e.test_containers import containers, image, install, start  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(home: Path, dicom: int, web: int) -> subprocess.Popen[str]:
    # These tests are about homes, ports and signals, not HTTP credentials: no auth.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MAGICKBOX_AUTH": "false"}
    cmd = [
        sys.executable,
        "-m",
        "magickbox.cli",
        "serve",
        "--home",
        str(home),
        "--host",
        "127.0.0.1",
        "--dicom-port",
        str(dicom),
        "--web-port",
        str(web),
        "--quiet-seconds",  # a send is a job soon: the tests wait less
        "0.3",
    ]
    return subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# Runs until $MB_MEMORY/go exists: a job that is running while a second box tries the home.
HOLD = """#!/bin/sh
echo "$$" >> "$MB_MEMORY/runs.txt"
while [ ! -e "$MB_MEMORY/go" ]; do sleep 0.1; done
echo ok > "$2/done.txt"
"""


def serving(home: Path) -> Iterator[tuple[Path, int, int]]:
    """A box on ``home`` that holds its lock (and, soon, its ports) until the end."""
    dicom, web = free_port(), free_port()
    install_buckets(home, Hold=HOLD)
    proc = serve(home, dicom, web)
    deadline = time.monotonic() + 30
    while not (home / "magickbox.lock").is_file() or not (home / "magickbox.lock").read_text():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    yield home, dicom, web
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def first(tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    yield from serving(tmp_path / "home")


@pytest.fixture(scope="module")
def ports_taken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, int]]:
    """One running box for the tests that only need its ports taken (it never changes)."""
    running = serving(tmp_path_factory.mktemp("taken") / "home")
    taken = next(running)
    wait_for("both ports to listen", lambda: listening(taken[1]) and listening(taken[2]))
    yield taken
    next(running, None)  # stops it


def second(home: Path, dicom: int, web: int) -> tuple[int, str]:
    proc = serve(home, dicom, web)
    _out, err = proc.communicate(timeout=60)
    return proc.returncode, err


def job_of(web: int, scratchdir: str) -> dict:
    return httpx.get(f"http://127.0.0.1:{web}/api/v1/jobs/{scratchdir}", timeout=30).json()


def test_second_box_on_one_home_refused_and_the_first_ones_job_runs_on_untouched(
    first: tuple[Path, int, int], tmp_path: Path
) -> None:
    home, dicom, web = first
    runs, go = home / "memory" / "Hold" / "runs.txt", home / "memory" / "Hold" / "go"
    wait_for("the first box to serve", lambda: listening(web) and listening(dicom))
    study = write_study(tmp_path / "study", n_images=1, rows=16, cols=16)
    assert len(send_files(dicom, "Hold", study.paths).ok) == 1
    bucket_pid = int(wait_for("the job to run", lambda: runs.is_file() and runs.read_text()))
    jobs = httpx.get(f"http://127.0.0.1:{web}/api/v1/jobs", timeout=30).json()["jobs"]
    (scratchdir,) = [j["scratchdir"] for j in jobs]

    # On other ports, then on the first box's own: both refused before touching the home.
    for ports in ((free_port(), free_port()), (dicom, web)):
        code, err = second(home, *ports)
        pid = (home / "magickbox.lock").read_text().strip()
        assert code != 0 and f"home {home} is already served by pid {pid}" in err
        assert "Traceback" not in err
        assert pid_alive(bucket_pid), "the second box killed the first one's running bucket"
        job = job_of(web, scratchdir)
        assert (job["state"], job["attempts"]) == ("running", 1), job

    go.touch()
    done = wait_for("the job to end", lambda: (j := job_of(web, scratchdir))["state"]
                    in ("done", "failed") and j)  # fmt: skip
    assert (done["state"], done["attempts"]) == ("done", 1), done
    assert runs.read_text().split() == [str(bucket_pid)]  # ran once, never re-run
    log = (home / "scratch" / scratchdir / "processing.log").read_text()
    assert "restarted" not in log and "interrupted" not in log, log
    assert (home / "scratch" / scratchdir / "OUTPUT" / "done.txt").is_file()


@pytest.mark.parametrize("which", ["DICOM", "web"])
def test_busy_port_named(ports_taken: tuple[Path, int, int], tmp_path: Path, which: str) -> None:
    home, dicom, web = ports_taken
    ports = (dicom, free_port()) if which == "DICOM" else (free_port(), web)
    code, err = second(tmp_path / "other", *ports)
    taken = dicom if which == "DICOM" else web
    pid = (home / "magickbox.lock").read_text().strip()  # the first box holds the port
    assert code != 0 and f"{which} port {taken} is taken" in err
    assert f"by pid {pid} (" in err and "magickbox.cli serve" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "other" / "magickbox.db").exists()  # refused before anything


def test_a_port_held_by_another_program_is_named_with_its_pid(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, err = second(tmp_path / "home", free_port(), port)
    assert code != 0 and f"web port {port} is taken" in err, err
    # the holder is this test's own process (pytest, or an xdist worker: its command line varies)
    me = Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode()
    assert f"by pid {os.getpid()} ({me}" in err, err


def test_sigterm_runs_box_stop(tmp_path: Path) -> None:
    home, web = tmp_path / "home", free_port()
    proc = serve(home, free_port(), web)
    # Serving: uvicorn installs its signal handlers before it binds the web port, so a
    # SIGTERM now goes through its shutdown (a loaded machine may take seconds migrating a
    # new home first; a fixed sleep was not always enough).
    wait_for("the box to serve", lambda: proc.poll() is None and listening(web))
    proc.terminate()
    _out, err = proc.communicate(timeout=30)
    assert f"MagickBox home {home}: stopped" in err, err


# -- a stop during a job ---------------------------------------------------------------------

# Sleeps a minute on its first runs; once $MB_MEMORY/fast exists it ends at once.
LONG = """#!/bin/sh
echo "start $$" >> "$MB_MEMORY/runs.txt"
[ -e "$MB_MEMORY/fast" ] || sleep 60
echo ok > "$2/done.txt"
"""


def processes_of(folder: Path) -> list[int]:
    """Live processes whose command line or environment mentions ``folder``."""
    mark, found = str(folder).encode(), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if Path(entry.path, "stat").read_text().rsplit(")", 1)[-1].split()[0] in "ZX":
                continue
            seen = (
                Path(entry.path, "cmdline").read_bytes() + Path(entry.path, "environ").read_bytes()
            )
        except (OSError, IndexError):
            continue
        if mark in seen:
            found.append(int(entry.name))
    return found


def ps_group(pgid: int) -> list[str]:
    """``ps``'s lines of the live (not zombie) processes in process group ``pgid``."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,stat=,args="], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    rows = [line.split(None, 3) for line in out.splitlines()]
    return [" ".join(r) for r in rows if len(r) >= 3 and r[1] == str(pgid) and "Z" not in r[2]]


def sigterm(box: BoxServer, within: float) -> float:
    """SIGTERM the box; the seconds it took to exit (it must within ``within``)."""
    assert box.proc is not None
    started = time.monotonic()
    box.proc.send_signal(signal.SIGTERM)
    box.proc.wait(timeout=within)
    return time.monotonic() - started


@pytest.mark.e2e
def test_sigterm_during_a_job_stops_it_and_requeues_it_without_spending_an_attempt(
    box_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Long=LONG)
    runs = home / "memory" / "Long" / "runs.txt"
    box: BoxServer = box_factory(home=home, quiet=0.3)  # a send is a job soon
    study = write_study(tmp_path / "study", n_images=1, rows=16, cols=16)
    assert len(send_files(box.dicom_port, "Long", study.paths).ok) == 1
    (job,) = wait_for("the job", lambda: api_jobs(box))
    folder = home / "scratch" / job["scratchdir"]

    # Stopped twice during the one long job: with max_attempts = 2 a stop that spent an
    # attempt would fail it now.
    for stop in (1, 2):
        wait_for(f"run {stop} of the bucket", lambda n=stop: len(runs.read_text().splitlines()) == n
                 if runs.exists() else False)  # fmt: skip
        assert api_job(box, job["scratchdir"])["attempts"] == 1
        # work.sh leads its own process group: its pid is the group's id.
        group = int(runs.read_text().splitlines()[-1].split()[1])
        assert ps_group(group), "ps should show the running bucket before the stop"
        took = sigterm(box, within=10)
        assert not processes_of(folder), f"stop {stop} left processes of the job ({took:.1f} s)"
        assert not ps_group(group), f"stop {stop} left the bucket's group: {ps_group(group)}"
        if stop == 2:
            (home / "memory" / "Long" / "fast").touch()  # the next run ends at once
        box.start()

    wait_for("run 3", lambda: len(runs.read_text().splitlines()) == 3)
    done = wait_state(box, job["scratchdir"], "done", "failed")
    assert (done["state"], done["attempts"]) == ("done", 1), done
    assert (folder / "OUTPUT" / "done.txt").is_file()
    log = box.get(f"/api/v1/jobs/{job['scratchdir']}/log").text
    assert log.count("the box was stopped during this job") == 2, log
    assert "finished: failed" not in log


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_sigterm_during_a_container_job_stops_and_removes_its_container(
    box_factory,
    tmp_path: Path,
    image: str,  # noqa: F811 (the fixture of test_containers.py)
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install(home, "Slow", image, "slow.sh")  # holds on its first run, then ends at once
    box = start(box_factory, home)
    study = write_study(tmp_path / "study", n_images=1, rows=16, cols=16)
    assert len(send_files(box.dicom_port, "Slow", study.paths).ok) == 1
    first = home / "memory" / "Slow" / "first"
    scratchdir = wait_for("the first run", lambda: first.is_file() and first.read_text()).strip()
    wait_for("its container", lambda: containers(home, scratchdir))

    # The container's sleep is PID 1 and ignores SIGTERM: the engine kills it after the
    # 5 s grace, so this stop may take longer than a native one.
    sigterm(box, within=30)
    assert containers(home) == [], "the stop left the job's container behind"
    assert not processes_of(home / "scratch" / scratchdir)

    again = start(box_factory, home)
    done = wait_state(again, scratchdir, "done", "failed")
    assert (done["state"], done["attempts"]) == ("done", 1), done
    assert (home / "scratch" / scratchdir / "OUTPUT" / "run.txt").read_text().strip() == "second"
