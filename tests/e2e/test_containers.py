"""Container buckets with a real engine: podman with runc on a busybox image built here.

The image holds small scripts (``/root/*.sh``) that report what a bucket can do inside its
container; each test bucket's info.json picks one with ``"command"``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from magickbox.buckets.container import Engine
from magickbox.buckets.image import build_image
from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer
from tests.e2e.peers import api_job, api_jobs, job_dir, send_files, wait_for, wait_jobs

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.long,
    pytest.mark.skipif(
        shutil.which("podman") is None,
        reason="podman is not installed (apt-get install podman runc busybox-static)",
    ),
]

# Each send is one association, each job its own caller or study: a short quiet period
# (the harness's default is 1 s) makes every wait for a job shorter.
QUIET = 0.3

# What these Debian machines need (README, "Container buckets"); users set their own.
ENGINE_ARGS = ["--runtime", "runc", "--cgroup-manager=cgroupfs"]
RUN_ARGS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1000:1000"]
ENV = {
    "MAGICKBOX_CONTAINER_ENGINE": "podman",
    "MAGICKBOX_ENGINE_ARGS": json.dumps(ENGINE_ARGS),
    "MAGICKBOX_RUN_ARGS": json.dumps(RUN_ARGS),
}

WORK_SH = """#!/bin/sh
# Copies INPUT to OUTPUT and says who ran it.
set -eu
echo "work.sh as $(id -u):$(id -g) for $MB_AETITLE_CALLER"
cp -r "$1/." "$2/"
id -u > "$2/uid.txt"
echo "$MB_AETITLE_CALLER" > "$2/caller.txt"
echo '[{"success": "success", "message": "copied"}]' > "$MB_PROC_JSON"
printf '{"caller": "%s", "files": %d}' "$MB_AETITLE_CALLER" "$(ls "$1" | wc -l)" > "$MB_MEASURES"
"""

PROBE_SH = """#!/bin/sh
# Reports: is /input writable, which network interfaces exist, how many runs /memory saw.
if touch /input/written 2>/dev/null; then echo writable; else echo readonly; fi > /output/input.txt
ls /sys/class/net > /output/net.txt
if wget -q -T 2 -O /output/page http://10.0.2.2/ 2>/dev/null; then echo yes; else echo no; fi \
  > /output/wget.txt
n=$(cat /memory/count 2>/dev/null || echo 0)
echo $((n + 1)) > /memory/count
echo $((n + 1)) > /output/count.txt
"""

# Holds on its first run (until killed); later runs finish at once.
SLOW_SH = """#!/bin/sh
if [ -e /memory/first ]; then echo second > /output/run.txt; exit 0; fi
echo "$MB_SCRATCHDIR" > /memory/first
echo holding
exec sleep 600
"""

FOREVER_SH = """#!/bin/sh
echo "$MB_SCRATCHDIR" > /memory/started
exec sleep 600
"""


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *ENGINE_ARGS, *args], capture_output=True, text=True)


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    """A tiny busybox image with the test scripts and an info.json, built for this run."""
    tag = f"localhost/mb-test-{os.getpid()}:1"
    info = {"name": "Imaged", "AETitle": "Imaged", "version": "1", "enabled": 1}
    files: dict[str, Path | bytes] = {
        "/root/work.sh": WORK_SH.encode(),
        "/root/probe.sh": PROBE_SH.encode(),
        "/root/slow.sh": SLOW_SH.encode(),
        "/root/forever.sh": FOREVER_SH.encode(),
        "/root/storage/info.json": json.dumps(info).encode(),
    }
    build_image(Engine(shutil.which("podman") or "podman", tuple(ENGINE_ARGS)), tag, files)
    yield tag
    podman("rmi", "-f", tag)


def install(home: Path, name: str, image: str, script: str = "work.sh", **info: object) -> None:
    folder = home / "streams" / f"bucket{name}"
    folder.mkdir(parents=True, exist_ok=True)
    values = {"name": name, "AETitle": name, "enabled": 1, "image": image, **info}
    values["command"] = [f"/root/{script}", "/input", "/output"]
    (folder / "info.json").write_text(json.dumps(values))


def containers(home: Path, job: str | None = None) -> list[str]:
    label = f"magickbox.job={job}" if job else f"magickbox.home={home}"
    res = podman("ps", "-a", "-q", "--filter", f"label={label}")
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def start(box_factory, home: Path, **env: str) -> BoxServer:  # type: ignore[no-untyped-def]
    return box_factory(quiet=QUIET, home=home, env={**ENV, **env})


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, image: str) -> Iterator[BoxServer]:
    """One box for the tests that send to a bucket of their own and look at its jobs only: a
    start and a stop fewer each. The tests of restarts or other settings start their own."""
    home = tmp_path_factory.mktemp("containers") / "home"
    install(home, "Copy", image)
    install(home, "Probe", image, "probe.sh")
    install(home, "Forever", image, "forever.sh", timeout=3)
    install(home, "Gone", "localhost/mb-no-such-image:1")
    install(home, "Bad", image, cpus="many")
    install(home, "Hold", image, "forever.sh")
    box = BoxServer(home, quiet=QUIET, env=ENV).start()
    yield box
    box.stop()


def send_study(box: BoxServer, tmp_path: Path, name: str, bucket: str, n: int = 2) -> str:
    study = write_study(tmp_path / name, n_images=n, rows=16, cols=16)
    assert len(send_files(box.dicom_port, bucket, study.paths, calling=name).ok) == n
    return study.study_uid


def test_storescu_to_a_container_bucket_output_arrives(
    shared: BoxServer, tmp_path: Path, image: str
) -> None:
    box, home = shared, shared.home
    study = write_study(tmp_path / "study", n_images=3, rows=16, cols=16)
    res = box.storescu(study.paths[0].parent, "Copy", "ip44")
    assert res.returncode == 0, res.stderr
    wait_jobs(box, 1, bucket="Copy")
    (job,) = [j for j in box.jobs() if j["AETitleCalled"] == "Copy"]  # the seed's listing
    assert job["status"] == "done", job
    assert job["measures"] == {"caller": "ip44", "files": 3}  # $MB_MEASURES inside: /output
    zipped = box.get("/code/php/getOutputZip.php", params={"folder": job["scratchdir"]})
    names = zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
    sent = {p.name for p in study.paths}
    assert sent <= {Path(n).name for n in names}, names
    out = job_dir(box, job["scratchdir"]) / "OUTPUT"
    assert (out / "caller.txt").read_text().strip() == "ip44"
    # The bucket ran as the box's user, and everything it wrote is the box's.
    assert (out / "uid.txt").read_text().strip() == str(os.getuid())
    assert {p.stat().st_uid for p in out.rglob("*")} == {os.getuid()}
    log = (job_dir(box, job["scratchdir"]) / "processing.log").read_text()
    assert "work.sh as" in log and f"image {image}" in log
    assert containers(home) == []  # --rm: nothing left behind


def test_input_readonly_memory_kept_no_network(shared: BoxServer, tmp_path: Path) -> None:
    box, home = shared, shared.home
    send_study(box, tmp_path, "first", "Probe")
    wait_jobs(box, 1, bucket="Probe")
    send_study(box, tmp_path, "second", "Probe")
    jobs = wait_jobs(box, 2, bucket="Probe")
    assert [j["state"] for j in jobs] == ["done", "done"], jobs
    outputs = {j["caller_aet"]: job_dir(box, j["scratchdir"]) / "OUTPUT" for j in jobs}
    for out in outputs.values():
        assert (out / "input.txt").read_text().strip() == "readonly"
        assert (out / "net.txt").read_text().split() == ["lo"]
        assert (out / "wget.txt").read_text().strip() == "no"
    assert (outputs["first"] / "count.txt").read_text().strip() == "1"
    assert (outputs["second"] / "count.txt").read_text().strip() == "2"
    assert (home / "memory" / "Probe" / "count").read_text().strip() == "2"


def test_a_job_over_its_time_limit_is_killed_and_failed(shared: BoxServer, tmp_path: Path) -> None:
    box, home = shared, shared.home
    send_study(box, tmp_path, "late", "Forever", n=1)
    (job,) = wait_jobs(box, 1, timeout=90, bucket="Forever")
    assert job["state"] == "failed" and "timed out after 3 s" in job["reason"], job
    assert (home / "memory" / "Forever" / "started").read_text().strip() == job["scratchdir"]
    assert containers(home, job["scratchdir"]) == []


def test_kill9_during_a_container_job_then_restart_reruns_it_and_leaves_no_container(
    box_factory, tmp_path: Path, image: str
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install(home, "Slow", image, "slow.sh")
    box = start(box_factory, home)
    send_study(box, tmp_path, "crash", "Slow", n=1)
    first = home / "memory" / "Slow" / "first"
    scratchdir = wait_for("the first run to start", lambda: first.is_file() and first.read_text())
    scratchdir = scratchdir.strip()
    wait_for("its container", lambda: containers(home, scratchdir))
    log = job_dir(box, scratchdir) / "processing.log"
    wait_for("its output in the log while it runs", lambda: "holding" in log.read_text())
    box.kill9()
    assert containers(home, scratchdir), "the container should outlive the box's kill -9"

    again = start(box_factory, home)
    job = wait_for(
        "the re-run to finish",
        lambda: (j := api_job(again, scratchdir))["state"] in ("done", "failed") and j,
    )
    # Documented: a running job is run again (max_attempts = 2) from a clean OUTPUT; the
    # orphan of the first run is removed first (its name would block the re-run otherwise).
    assert job["state"] == "done", job
    assert (job_dir(again, scratchdir) / "OUTPUT" / "run.txt").read_text().strip() == "second"
    assert containers(home) == []


def test_restart_with_reruns_off_fails_the_job_and_removes_the_container(
    box_factory, tmp_path: Path, image: str
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install(home, "Hold", image, "forever.sh")
    box = start(box_factory, home, MAGICKBOX_RERUN_INTERRUPTED="0")
    send_study(box, tmp_path, "crash", "Hold", n=1)
    started = home / "memory" / "Hold" / "started"
    scratchdir = wait_for("the run", lambda: started.is_file() and started.read_text()).strip()
    wait_for("its container", lambda: containers(home, scratchdir))
    box.kill9()
    again = start(box_factory, home, MAGICKBOX_RERUN_INTERRUPTED="0")
    (job,) = api_jobs(again)
    assert job["state"] == "failed" and "restart" in job["reason"], job
    assert containers(home) == []


def test_missing_image_and_bad_info_fail_jobs_with_a_clear_reason(
    shared: BoxServer, tmp_path: Path
) -> None:
    box = shared
    send_study(box, tmp_path, "gone", "Gone", n=1)
    send_study(box, tmp_path, "bad", "Bad", n=1)
    jobs = {j["bucket"]: j for b in ("Gone", "Bad") for j in wait_jobs(box, 1, bucket=b)}
    assert jobs["Gone"]["state"] == "failed"
    assert "mb-no-such-image:1" in jobs["Gone"]["reason"]
    assert "is not installed" in jobs["Gone"]["reason"], jobs["Gone"]
    assert jobs["Bad"]["state"] == "failed" and '"cpus"' in jobs["Bad"]["reason"], jobs["Bad"]


def test_no_engine_fails_the_job_saying_so(box_factory, tmp_path: Path, image: str) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install(home, "Copy", image)
    box = start(box_factory, home, MAGICKBOX_CONTAINER_ENGINE="no-such-engine")
    send_study(box, tmp_path, "x", "Copy", n=1)
    (job,) = wait_jobs(box, 1)
    assert job["state"] == "failed" and "no-such-engine is not installed" in job["reason"], job


# -- the buckets command -------------------------------------------------------------------


def mb(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "magickbox.cli", "buckets", *args, "--home", str(home)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **ENV, **env}
    )


def test_buckets_create_run_build_install_remove_round_trip(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.dcm").write_bytes(b"x")
    assert mb(home, "create", "Starter").returncode == 0
    clash = mb(home, "create", "Starter")
    assert clash.returncode == 3 and "taken" in clash.stderr

    native = mb(home, "run", "Starter", str(data), str(tmp_path / "out1"), "arg1")
    assert native.returncode == 0, native.stderr
    assert "1 files" in native.stdout and "arg1" in native.stdout
    assert (tmp_path / "out1" / "files.txt").read_text().strip().endswith("a.dcm")

    tag = f"localhost/mb-starter-{os.getpid()}:1"
    try:
        built = mb(home, "build", "Starter", "--tag", tag)
        assert built.returncode == 0, built.stderr
        assert mb(home, "install", tag).returncode == 3  # the native bucket has its AE title
        assert mb(home, "remove", "Starter").returncode == 0
        installed = mb(home, "install", tag)
        assert installed.returncode == 0, installed.stderr
        info = json.loads((home / "streams" / "bucketStarter" / "info.json").read_text())
        assert info["image"] == tag and info["AETitle"] == "Starter"
        listing = mb(home, "list", "--json")
        assert [(r["aetitle"], r["image"]) for r in json.loads(listing.stdout)] == [
            ("Starter", tag)
        ]

        out2 = tmp_path / "out2"
        boxed = mb(home, "run", "Starter", str(data), str(out2))
        assert boxed.returncode == 0, boxed.stdout + boxed.stderr
        assert (out2 / "files.txt").read_text().strip() == "/input/a.dcm"
        assert (home / "memory" / "Starter" / "runs").read_text().strip() == "2"
        assert mb(home, "disable", "Starter").returncode == 0
        assert json.loads(mb(home, "list", "--json").stdout)[0]["enabled"] is False
        assert mb(home, "enable", "Starter").returncode == 0
        assert mb(home, "remove", "Starter").returncode == 0
        assert mb(home, "remove", "Starter").returncode == 4
    finally:
        podman("rmi", "-f", tag)
    assert containers(home) == []


def test_buckets_install_reads_the_image_and_refuses_clashes(tmp_path: Path, image: str) -> None:
    home = tmp_path / "home"
    first = mb(home, "install", image)
    assert first.returncode == 0, first.stderr
    assert json.loads((home / "streams" / "bucketImaged" / "info.json").read_text())["image"]
    clash = mb(home, "install", image)
    assert clash.returncode == 3 and "'Imaged' is taken" in clash.stderr
    other = mb(home, "install", image, "--aetitle", "Other")
    assert other.returncode == 0, other.stderr
    missing = mb(home, "install", "localhost/mb-no-such-image:1")
    assert missing.returncode == 4 and "not installed" in missing.stderr
    no_engine = mb(home, "install", image, MAGICKBOX_CONTAINER_ENGINE="no-such-engine")
    assert no_engine.returncode == 5 and "no-such-engine is not installed" in no_engine.stderr


def test_deleting_a_running_container_job_removes_its_container(
    shared: BoxServer, tmp_path: Path
) -> None:
    box, home = shared, shared.home
    send_study(box, tmp_path, "gone", "Hold", n=1)
    started = home / "memory" / "Hold" / "started"
    scratchdir = wait_for("the run", lambda: started.is_file() and started.read_text()).strip()
    wait_for("its container", lambda: containers(home, scratchdir))
    res = box.delete(f"/api/v1/jobs/{scratchdir}", timeout=60)
    assert res.status_code in (200, 204), res.text
    assert containers(home) == []
    assert api_jobs(box, bucket="Hold") == []
