"""``mb`` end to end: two real boxes on free ports, ``mb`` run as a subprocess as users run it,
its JSON read by the real ``jq``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer, copy_bucket, free_port

pytestmark = pytest.mark.e2e

# Holds each job until the test creates $MB_HOME/go, so a box has a known load.
GATE_SH = """#!/bin/sh
while [ ! -f "$MB_HOME/go" ]; do sleep 0.1; done
echo "gate opened for $MB_JOBNAME"
"""


class Mb:
    """Runs ``mb`` with its own config folder, like a user in a shell."""

    def __init__(self, config: Path, cwd: Path) -> None:
        self.env = {**os.environ, "MB_CONFIG_DIR": str(config)}
        self.cwd = cwd

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "magickbox.mb.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            timeout=240,
        )
        if ok:
            assert done.returncode == 0, f"mb {args}: {done.returncode}\n{done.stderr}"
        return done

    def json(self, *args: str) -> list[dict]:
        return json.loads(self(*args).stdout)

    def shell(self, script: str) -> str:
        """A pipeline as a user types it (``mb`` being this interpreter's module)."""
        mb = f"{sys.executable} -m magickbox.mb.cli"
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", f'mb() {{ {mb} "$@"; }}; {script}'],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture
def mb(tmp_path: Path) -> Mb:
    work = tmp_path / "work"
    work.mkdir()
    return Mb(tmp_path / "mbconfig", work)


def subjects(root: Path, n: int) -> list[Path]:
    folders = []
    for i in range(n):
        folder = root / f"subj{i:02d}"
        write_study(folder, n_images=2, patient_id=f"P{i}", rows=64, cols=64, seed=i)
        folders.append(folder)
    return folders


def load(box: BoxServer) -> int:
    rows = box.get("/code/php/getStatus.php").json()
    return sum(r[1] + r[2] for r in rows)


def wait_load(box: BoxServer, n: int) -> None:
    deadline = time.monotonic() + 60
    while load(box) != n:
        assert time.monotonic() < deadline, f"load of {box.url} is {load(box)}, not {n}"
        time.sleep(0.1)


def test_a_project_on_two_boxes(box_factory, mb: Mb, tmp_path: Path) -> None:
    a, b = box_factory(), box_factory()
    copy_bucket(a.home, "Gate", GATE_SH)  # only box a offers it
    mb("setSender", "me")
    assert mb.json("activeMachines", "add", "127.0.0.1", str(a.web_port)) == [
        {"Machine": "127.0.0.1", "Port": str(a.web_port)}
    ]
    assert len(mb.json("a", "add", "127.0.0.1", str(b.web_port))) == 2
    folders = subjects(tmp_path / "subjects", 6)

    # Two Gate jobs make box a busy (one running, one queued): load 2 against 0.
    pushed = mb.json("push", "Gate", str(folders[0]), str(folders[1]))
    assert {p["Port"] for p in pushed} == {str(a.web_port)}
    wait_load(a, 2)

    # Least loaded first, ties to the first machine: b, b, a, b.
    plan = mb.json("push", "--dry-run", "ProcBucket", *map(str, folders[2:]))
    ports = [p["Port"] for p in plan]
    assert ports == [str(b.web_port), str(b.web_port), str(a.web_port), str(b.web_port)]
    assert a.jobs() and not b.jobs()  # a dry run sends nothing
    pushed = mb.json("p", "ProcBucket", *map(str, folders[2:]))
    assert [p["Port"] for p in pushed] == ports
    assert [p["jobname"] for p in pushed] == ["subj02", "subj03", "subj04", "subj05"]
    assert all(p["scratchdir"].startswith("tmp.") for p in pushed)
    (a.home / "go").touch()

    # The seed's users' jq filters work on mb's JSON.
    mine = mb.shell("mb list | jq -c '.[] | select(.AETitleCaller==\"me\")'").splitlines()
    assert len(mine) == 6
    rows = [json.loads(line) for line in mine]
    assert {(r["Machine"], r["Port"]) for r in rows} == {
        ("127.0.0.1", str(a.web_port)),
        ("127.0.0.1", str(b.web_port)),
    }
    assert {r["scratchdir"] for r in rows} == {p["scratchdir"] for p in pushed} | {
        j["scratchdir"] for j in a.jobs() if j["AETitleCalled"] == "Gate"
    }
    # A bare regex no longer searches the port: --machine selects by place.
    on_b = mb.shell(f"mb l --machine '*:{b.web_port}' | jq -r '.[].scratchdir' | sort").split()
    assert on_b == sorted(j["scratchdir"] for j in b.jobs())

    # pull --wait: every ProcBucket output, complete; a second run skips them all.
    pulled = mb.json("pull", "--wait", "--poll", "0.3", "ProcBucket")
    assert sorted(p["scratchdir"] for p in pulled) == sorted(p["scratchdir"] for p in pushed)
    assert {p["status"] for p in pulled} == {"downloaded"}
    for row in pulled:
        path = mb.cwd / row["file"]
        job = next(j for j in [*a.jobs(), *b.jobs()] if j["scratchdir"] == row["scratchdir"])
        assert path.name == f"{job['jobname']}_{job['scratchdir']}.zip"  # subj02_tmp...
        with zipfile.ZipFile(path) as zf:
            assert zf.testzip() is None
            names = zf.namelist()
        assert any(n.startswith(f"{job['scratchdir']}/OUTPUT/") for n in names)
    # No temporary left: the zips and the manifest.
    assert [p.name for p in mb.cwd.iterdir() if p.suffix != ".zip"] == ["manifest.csv"]
    mtimes = {p: p.stat().st_mtime_ns for p in mb.cwd.glob("*.zip")}
    again = mb.json("pull", "ProcBucket")
    assert {p["status"] for p in again} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in mb.cwd.glob("*.zip")} == mtimes

    # A cut file under the final name is not "complete": it is downloaded again.
    victim = mb.cwd / pulled[0]["file"]
    victim.write_bytes(victim.read_bytes()[:-30])
    again = mb.json("pull", "ProcBucket")
    assert sorted(p["status"] for p in again) == ["downloaded"] + ["skipped"] * 3
    assert zipfile.ZipFile(victim).testzip() is None

    # log: the processing log is fetched and searched too.
    gate_jobs = mb.json("log", "gate opened for subj0[01]")
    assert len(gate_jobs) == 2
    assert all("gate opened" in j["log"] for j in gate_jobs)

    # pull-input gives the INPUT as <pid>_<scratchdir>_input.zip.
    inputs = mb.json("pull-input", "-d", "inputs", pushed[0]["scratchdir"])
    assert len(inputs) == 1
    with zipfile.ZipFile(mb.cwd / inputs[0]["file"]) as zf:
        assert len([n for n in zf.namelist() if "/INPUT/" in n]) == 2

    # remove: the Gate jobs go, the others stay.
    removed = mb.json("r", "Gate")
    assert len(removed) == 2
    left = mb.json("list")
    assert len(left) == 4 and all(j["AETitleCalled"] == "ProcBucket" for j in left)


def test_one_machine_down(box_factory, mb: Mb, tmp_path: Path) -> None:
    a, b = box_factory(), box_factory()
    for box in (a, b):
        mb("activeMachines", "add", "127.0.0.1", str(box.web_port))
    folders = subjects(tmp_path / "subjects", 3)
    first = mb.json("push", "ProcBucket", str(folders[0]), str(folders[1]))
    assert sorted(p["Port"] for p in first) == sorted([str(a.web_port), str(b.web_port)])
    b.stop()

    listed = mb("list", ok=False)
    assert listed.returncode == 4
    jobs = json.loads(listed.stdout)
    assert [j["Port"] for j in jobs] == [str(a.web_port)]
    assert f"127.0.0.1:{b.web_port}" in listed.stderr and "did not answer" in listed.stderr

    pushed = mb("push", "ProcBucket", str(folders[2]))
    assert [p["Port"] for p in json.loads(pushed.stdout)] == [str(a.web_port)]
    assert f"127.0.0.1:{b.web_port}" in pushed.stderr

    mb("activeMachines", "remove", "127.0.0.1", str(a.web_port))
    down = mb("list", ok=False)
    assert down.returncode == 4 and "no machine answered" in down.stderr


def test_clear_errors(box, mb: Mb, tmp_path: Path) -> None:
    none = mb("list", ok=False)
    assert none.returncode == 3 and "no machines configured" in none.stderr
    mb("a", "add", "127.0.0.1", str(box.web_port))
    bad = mb("list", "(", ok=False)
    assert bad.returncode == 2 and "invalid regular expression" in bad.stderr
    missing = mb("push", "ProcBucket", str(tmp_path / "nowhere"), ok=False)
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    empty = mb("push", "ProcBucket", str(tmp_path / "empty"), ok=False)
    assert empty.returncode == 2 and "no files" in empty.stderr
    subjects(tmp_path / "s", 1)
    nobucket = mb("push", "NoSuchBucket", str(tmp_path / "s" / "subj00"), ok=False)
    assert nobucket.returncode == 5 and "no machine offers the bucket" in nobucket.stderr
    assert not box.jobs()
    port = free_port()
    mb("a", "add", "127.0.0.1", str(port))
    modules = mb("computeModules", ok=False)
    assert modules.returncode == 4 and f"127.0.0.1:{port}" in modules.stderr
    assert "ProcBucket" in {m["AETitle"] for m in json.loads(modules.stdout)}


def test_query_machines_finds_a_box_by_zeroconf(box, mb: Mb) -> None:
    want = {"Machine": "127.0.0.1", "Port": str(box.web_port)}
    deadline = time.monotonic() + 60  # the box announces a second or two after it serves
    while True:
        rows = mb.json("queryMachines", "--interface", "127.0.0.1", "--seconds", "1.5", "--add")
        found = [r for r in rows if {k: r[k] for k in want} == want]
        if found or time.monotonic() > deadline:
            break
    assert found, rows
    assert found[0]["Online"] and found[0]["Active"]
    assert found[0]["DicomPort"] == str(box.dicom_port)
    assert want in mb.json("activeMachines")  # --add made it active (others may answer too)


COMMANDS = ["setSender", "setSetting", "activeMachines", "queryMachines", "computeModules",
            "push", "list", "log", "pull", "pull-input", "remove"]  # fmt: skip


def test_the_console_script_and_help_of_every_command(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "mb"  # installed by pip with the package
    assert script.is_file(), "pip install -e . installs the mb console script"
    env = {**os.environ, "MB_CONFIG_DIR": str(tmp_path)}
    for command in COMMANDS:
        done = subprocess.run([str(script), command, "--help"], capture_output=True, text=True,
                              env=env, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: mb {command}")
