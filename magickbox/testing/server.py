"""A real ``magickbox serve`` in a child process, on free ports with its own home.

The tests' fixtures and the benchmarks start servers through this one class.
"""

from __future__ import annotations

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


class BoxServer:
    """A ``magickbox serve`` process with its own home and ports."""

    def __init__(
        self,
        home: Path,
        quiet: float = 1.0,
        env: dict[str, str] | None = None,
        web_port: int | None = None,
        dicom_port: int | None = None,
    ) -> None:
        self.home = home
        self.quiet = quiet
        self.web_port = web_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home.parent / f"{home.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, timeout: float = 30.0) -> BoxServer:
        env = {**os.environ, "TCP_NODELAY": "1", **self.extra_env}
        cmd = [
            sys.executable,
            "-m",
            "magickbox.cli",
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
        ]
        logfh = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=logfh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"magickbox exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                        return self
            except (httpx.HTTPError, OSError):
                pass
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
