"""A real ``magickbox serve`` in a child process, on free ports with its own home.

The tests' fixtures and the benchmarks start servers through this one class.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

# pip's pynetdicom installs its own "storescu"/"storescp" scripts, which may come first on
# PATH: the real dcmtk tools are looked up in the system folders only.
DCMTK_DIRS = ("/usr/bin", "/usr/local/bin", "/bin")


def dcmtk_tool(tool: str) -> str:
    for folder in DCMTK_DIRS:
        path = Path(folder) / tool
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise FileNotFoundError(f"dcmtk's {tool} is not installed (apt-get install dcmtk)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something listens on ``port``, asked of the kernel: a probing connection to
    a pynetdicom server would start an association whose threads poll until it times out."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def wait_listening(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    """Wait until ``port`` listens; fail early when ``proc`` (the server) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        if listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


class BoxServer:
    """A ``magickbox serve`` process with its own home and ports."""

    def __init__(
        self,
        home: Path,
        quiet: float = 1.0,
        env: dict[str, str] | None = None,
        web_port: int | None = None,
        dicom_port: int | None = None,
        program: list[str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.home = home
        self.program = program or ["-m", "magickbox.cli"]  # or a patched variant's argv
        self.extra_args = extra_args or []
        self.quiet = quiet
        self.web_port = web_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home.parent / f"{home.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, timeout: float = 90.0) -> BoxServer:  # generous: CI machines are shared
        env = {**os.environ, "TCP_NODELAY": "1", **self.extra_env}
        cmd = [
            sys.executable,
            *self.program,
            "serve",
            "--home",
            str(self.home),
            "--dicom-port",
            str(self.dicom_port),
            "--web-port",
            str(self.web_port),
            "--host",
            "127.0.0.1",
            "--quiet-seconds",
            str(self.quiet),
            *self.extra_args,
        ]
        logfh = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=logfh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"magickbox exited: {self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    wait_listening(self.dicom_port, self.proc)
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"magickbox did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    # -- conveniences for tests ------------------------------------------------------
    def get(self, path: str, **kw: object) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=30, **kw)  # type: ignore[arg-type]

    def jobs(self) -> list[dict]:
        return self.get("/code/php/getScratch.php").json()

    def wait_jobs(self, n: int, *, finished: bool = True, timeout: float = 60.0) -> list[dict]:
        """Wait until at least ``n`` jobs exist (and are finished, by default)."""
        deadline = time.monotonic() + timeout
        jobs: list[dict] = []
        while time.monotonic() < deadline:
            jobs = self.jobs()
            done = [j for j in jobs if j["processingTime"] != "0"] if finished else jobs
            if len(done) >= n:
                return jobs
            time.sleep(0.2)
        raise AssertionError(f"expected {n} jobs, have {jobs}")

    def storescu(
        self, folder: Path, called: str = "ProcBucket", calling: str = "ip44", *extra: str
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            dcmtk_tool("storescu"),
            "+sd",
            "+r",
            "-nh",
            "-aet",
            calling,
            "-aec",
            called,
            *extra,
            "127.0.0.1",
            str(self.dicom_port),
            str(folder),
        ]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "TCP_NODELAY": "1"}
        )
