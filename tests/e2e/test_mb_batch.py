"""``mb`` at scale against one real box (``magickbox serve``): job names, field filters,
remove's dry run and question, pull's names, manifest, --failed, --timeout, Ctrl-C and the
batch bars. ``mb`` runs in this process where only its JSON and messages matter, and as a
subprocess in a pseudo-terminal where a person's terminal (a question, ^C, bars) is the
point."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from magickbox.mb.cli import main
from magickbox.testing.dicomgen import write_study
from magickbox.testing.server import BoxServer
from tests.conftest import copy_bucket

pytestmark = pytest.mark.e2e

MB = [sys.executable, "-m", "magickbox.mb.cli"]
# Never opened in this module: its job stays running, a job to wait for.
GATE_SH = '#!/bin/sh\nwhile [ ! -f "$MB_HOME/never" ]; do sleep 0.1; done\n'
FAIL_SH = "#!/bin/sh\necho 'no brain found' >&2\nexit 3\n"
QUICK_SH = "#!/bin/sh\ntrue\n"
DONE_SH = '#!/bin/sh\necho "result of $MB_JOBNAME" > "$2/result.txt"\n'


@dataclass
class Terminal:
    """What ``mb`` did in a pseudo-terminal: its exit code, its stdout (a file, as in
    ``mb pull > out.json``) and everything the terminal showed (stderr, the bars)."""

    returncode: int
    stdout: str
    screen: str


@dataclass
class MbRun:
    returncode: int
    stdout: str
    stderr: str


def _restore(config: str | None, cwd: str, stdin: object) -> None:
    if config is None:
        os.environ.pop("MB_CONFIG_DIR", None)
    else:
        os.environ["MB_CONFIG_DIR"] = config
    os.chdir(cwd)
    sys.stdin = stdin  # type: ignore[assignment]


@dataclass
class Farm:
    box: BoxServer
    env: dict[str, str]
    root: Path

    def mb(self, *args: str, code: int = 0) -> MbRun:
        """``mb`` called in this process (no interpreter to start), stdin not a terminal;
        a real subprocess where a terminal or a signal is the point (:meth:`terminal`)."""
        out, err = io.StringIO(), io.StringIO()
        saved = os.environ.get("MB_CONFIG_DIR"), os.getcwd(), sys.stdin
        os.environ["MB_CONFIG_DIR"] = self.env["MB_CONFIG_DIR"]
        os.chdir(self.root)
        sys.stdin = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    returncode = main(list(args))
                except SystemExit as exc:  # argparse's errors
                    returncode = int(exc.code or 0)
        finally:
            _restore(*saved)
        done = MbRun(returncode, out.getvalue(), err.getvalue())
        assert done.returncode == code, f"mb {args}: {done.returncode}\n{done.stderr}"
        return done

    def json(self, *args: str, code: int = 0) -> list[dict]:
        return json.loads(self.mb(*args, code=code).stdout)

    def terminal(self, *args: str, when: str = "", send: bytes = b"") -> Terminal:
        """Run ``mb`` with the terminal as its stdin and stderr (and controlling terminal,
        so ^C is a real SIGINT); once ``when`` shows on it, type ``send``."""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        out = self.root / f"stdout-{time.monotonic_ns()}.json"
        with out.open("w") as fh:
            # setsid -c: a session of its own with the pty as controlling terminal.
            proc = subprocess.Popen(
                ["setsid", "-c", *MB, *args], stdin=slave, stdout=fh, stderr=slave,
                env={**self.env, "TERM": "xterm"}, cwd=self.root,
            )  # fmt: skip
        os.close(slave)
        try:
            screen = _watch(master, proc, when, send)
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
        return Terminal(proc.wait(timeout=10), out.read_text(), screen)

    def wait_finished(self, n: int) -> None:
        self.box.wait_jobs(n, finished=True, timeout=90)


def _watch(master: int, proc: subprocess.Popen[bytes], when: str, send: bytes) -> str:
    """Read the terminal until ``proc`` ends, typing ``send`` once ``when`` appeared."""
    seen, sent = b"", not send
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal closed it
                break
            seen += chunk
        if not sent and when.encode() in seen:
            os.write(master, send)
            sent = True
        if not ready and proc.poll() is not None:
            break
    assert sent, f"never saw {when!r}:\n{seen.decode(errors='replace')}"
    return seen.decode(errors="replace")


def subject(root: Path, name: str, i: int) -> Path:
    folder = root / name
    write_study(folder, n_images=2, patient_id=f"P{i}", rows=32, cols=32, seed=i)
    return folder


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """One box with four done jobs (sub-001..004), a failed one (sub-005) and one that
    never ends (sub-006), all pushed by ``mb``."""
    root = tmp_path_factory.mktemp("mbbatch")
    box = BoxServer(root / "home", quiet=0.2).start()
    try:
        buckets = (("Done", DONE_SH), ("Gate", GATE_SH), ("Fail", FAIL_SH), ("Quick", QUICK_SH))
        for name, script in buckets:
            copy_bucket(box.home, name, script)
        env = {**os.environ, "MB_CONFIG_DIR": str(root / "mbconfig")}
        farm = Farm(box, env, root)
        farm.mb("activeMachines", "add", "127.0.0.1", str(box.web_port),
                "--token-file", token_file(box, root))  # fmt: skip
        subjects = [subject(root / "subjects", f"sub-00{i}", i) for i in range(1, 7)]
        farm.mb("push", "Done", *map(str, subjects[:4]))
        farm.mb("push", "Fail", str(subjects[4]))
        farm.mb("push", "Gate", str(subjects[5]))
        farm.wait_finished(5)
        yield farm
    finally:
        box.stop()


def names(rows: list[dict]) -> list[str]:
    return sorted(r["jobname"] for r in rows)


def test_jobs_are_found_by_their_name_and_by_field_filters(farm: Farm) -> None:
    rows = farm.box.jobs()
    assert names(rows) == [f"sub-00{i}" for i in range(1, 7)]  # getScratch's new field
    assert all(isinstance(r["pid"], str) and r["pid"] for r in rows)  # the old ones stay
    assert names(farm.json("list", "sub-001")) == ["sub-001"]
    # The regex no longer matches every row through CallerIP or the dates (anchored or
    # spaced: a random scratchdir or a UID may hold the digits).
    by_ip = farm.mb("list", r"^127\.0\.0\.1$")
    assert json.loads(by_ip.stdout) == [] and "--sender" in by_ip.stderr  # with a hint
    assert farm.json("list", " UTC ") == []
    assert len(farm.json("list", "--sender", "127.0.0.1")) == 6
    two = farm.json("list", "--bucket", "Done", "--jobname", "sub-00[12]")
    assert names(two) == ["sub-001", "sub-002"]
    assert names(farm.json("list", "--state", "failed")) == ["sub-005"]
    assert names(farm.json("list", "--state", "running", "--state", "failed")) == [
        "sub-005",
        "sub-006",
    ]
    assert farm.json("list", "--machine", "127.0.0.1:1") == []
    assert len(farm.json("list", "--machine", f"*:{farm.box.web_port}")) == 6
    assert names(farm.json("log", "--bucket", "Fail", "no brain")) == ["sub-005"]
    bad = farm.mb("list", "--state", "lost", code=2)
    assert "invalid choice" in bad.stderr


def test_patient_filter(farm: Farm) -> None:
    done = farm.mb("list", "--patient", "P3")
    found = json.loads(done.stdout)
    if any("PatientID" in r for r in farm.box.jobs()):  # a box that reports patients
        assert names(found) == ["sub-003"]
    else:
        assert found == [] and "does not report patients" in done.stderr


def test_pull_names_zips_skips_failed_jobs_and_writes_a_manifest(farm: Farm) -> None:
    rows = farm.json("pull", "-d", "out", "--bucket", "Done", "--bucket", "Fail")
    by_name = {r["jobname"]: r for r in rows}
    assert sorted(by_name) == [f"sub-00{i}" for i in range(1, 6)]
    for i in range(1, 5):
        row = by_name[f"sub-00{i}"]
        assert row["status"] == "downloaded" and row["state"] == "done"
        assert Path(row["file"]).name == f"sub-00{i}_{row['scratchdir']}.zip"
        assert (farm.root / row["file"]).is_file()
    failed = by_name["sub-005"]
    assert failed["status"] == "job-failed" and failed["file"] == ""
    api = farm.box.get(f"/api/v1/jobs/{failed['scratchdir']}").json()
    assert failed["reason"] == api["reason"] and failed["reason"]
    assert sorted(p.name for p in (farm.root / "out").iterdir()) == sorted(
        [Path(by_name[f"sub-00{i}"]["file"]).name for i in range(1, 5)] + ["manifest.csv"]
    )
    with (farm.root / "out" / "manifest.csv").open(newline="") as fh:
        manifest = list(csv.DictReader(fh))
    assert list(manifest[0])[:5] == ["jobname", "study", "state", "reason", "file"]
    assert {(m["jobname"], m["state"], m["reason"], m["file"]) for m in manifest} == {
        (r["jobname"], r["state"], r["reason"], r["file"]) for r in rows
    }
    # --failed pulls the failed job too; --names pid names zips as the original did.
    again = farm.json("pull", "-d", "out", "--failed", "--names", "pid", "sub-005")
    job = next(j for j in farm.box.jobs() if j["jobname"] == "sub-005")
    assert [(r["status"], Path(r["file"]).name) for r in again] == [
        ("downloaded", f"{job['pid']}_{job['scratchdir']}.zip")
    ]


def test_pull_wait_says_what_it_waits_for_and_gives_up(farm: Farm) -> None:
    done = farm.mb(
        "pull", "-d", "late", "--wait", "--timeout", "0.5", "--poll", "0.2", "--jobname",
        "sub-006", code=6,
    )  # fmt: skip
    assert "waiting for 1 job (1 running): sub-006" in done.stderr
    assert "--timeout 0.5 s passed; 1 job not finished: sub-006" in done.stderr
    rows = json.loads(done.stdout)
    assert [(r["jobname"], r["status"], r["file"]) for r in rows] == [
        ("sub-006", "not-finished", "")
    ]
    manifest = (farm.root / "late" / "manifest.csv").read_text()
    assert "sub-006" in manifest and "running" in manifest
    assert farm.mb("pull", "--timeout", "0", code=2).stderr  # bad input is a clear error


def test_ctrl_c_in_a_terminal_still_prints_and_writes_what_was_done(farm: Farm) -> None:
    shown = farm.terminal(
        "pull", "-d", "cut", "--wait", "--poll", "0.2", "--bucket", "Done",
        "--bucket", "Gate", when="waiting for 1 job", send=b"\x03",
    )  # fmt: skip
    assert shown.returncode == 130, shown.screen
    assert "interrupted: 4 of 5 jobs pulled" in shown.screen
    assert "4/5 jobs" in shown.screen  # the batch bar, drawn on the terminal
    rows = json.loads(shown.stdout)
    assert sorted((r["jobname"], r["status"]) for r in rows) == [
        *[(f"sub-00{i}", "downloaded") for i in range(1, 5)],
        ("sub-006", "not-finished"),
    ]
    with (farm.root / "cut" / "manifest.csv").open(newline="") as fh:
        assert names(list(csv.DictReader(fh))) == names(rows)


def test_remove_shows_asks_and_refuses_without_a_terminal(farm: Farm) -> None:
    folders = [subject(farm.root / "rm", f"rm-{i}", 10 + i) for i in range(6)]
    pushed = farm.terminal("push", "Quick", *map(str, folders))
    assert pushed.returncode == 0, pushed.screen
    assert "6/6 folders" in pushed.screen  # the push's batch bar
    farm.wait_finished(11)  # 5 + 6 (the Gate job never ends)
    quick = ["--bucket", "Quick"]
    listed = farm.mb("remove", *quick, "--dry-run")
    assert names(json.loads(listed.stdout)) == [f"rm-{i}" for i in range(6)]
    assert "6 jobs would be removed" in listed.stderr
    assert len(farm.json("list", *quick)) == 6  # a dry run removes nothing
    refused = farm.mb("remove", *quick, code=2)
    assert "pass -y" in refused.stderr and len(farm.json("list", *quick)) == 6
    # A few jobs go without a question.
    assert len(farm.json("remove", "--jobname", "rm-0", "--jobname", "rm-1")) == 2
    no = farm.terminal("remove", *quick, when="[y/N]", send=b"n\n")
    assert no.returncode == 1 and "nothing removed" in no.screen
    assert all(f"rm-{i}" in no.screen for i in range(2, 6))  # shown before the question
    assert no.stdout == ""  # nothing removed, nothing printed
    assert len(farm.json("list", *quick)) == 4
    yes = farm.terminal("remove", *quick, when="[y/N]", send=b"y\n")
    assert yes.returncode == 0, yes.screen
    assert len(json.loads(yes.stdout)) == 4 and farm.json("list", *quick) == []


def token_file(box: BoxServer, folder: Path) -> str:
    """The harness's admin token in a file only its owner may read, for mb --token-file."""
    path = folder / "box.token"
    path.write_text(box.token + "\n")
    path.chmod(0o600)
    return str(path)
