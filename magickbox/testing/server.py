"""A real ``magickbox serve`` in a child process, on free ports with its own home.

The tests' fixtures and the benchmarks start servers through this one class.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path

import httpx

from magickbox.auth.roles import Role
from magickbox.config import Settings, parse_assignment, read_config_file, read_environment

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


def settings_of(home: Path, env: dict[str, str], args: list[str]) -> Settings:
    """The settings a ``magickbox serve --home home *args`` with ``env`` added would have."""
    values = read_config_file(home / "magickbox.toml")
    values.update(read_environment({**os.environ, **env}))
    values.update(parse_assignment(a) for flag, a in itertools.pairwise(args)
                  if flag == "--set")  # fmt: skip
    return Settings.model_validate({**values, "home": home})


def make_token(settings: Settings, role: Role = Role.admin, name: str = "tests") -> str:
    """A new API token in the home's database (created, with its schema, when missing)."""
    from magickbox.auth.store import AuthStore
    from magickbox.home import init_home
    from magickbox.jobs.db import open_database

    init_home(settings)
    db = open_database(settings.db_url)
    try:
        return AuthStore(db).create_token(name, role)[0]
    finally:
        db.kw["bind"].dispose()


class BoxServer:
    """A ``magickbox serve`` process with its own home and ports. It gets an admin token at
    each start, which :meth:`get` (and ``headers`` for other clients) sends."""

    def __init__(
        self,
        home: Path,
        quiet: float = 1.0,
        env: dict[str, str] | None = None,
        web_port: int | None = None,
        dicom_port: int | None = None,
        program: list[str] | None = None,
        extra_args: list[str] | None = None,
        admin_token: bool = True,
        ca_file: Path | None = None,
    ) -> None:
        """``ca_file``: the box serves HTTPS (tls_cert/tls_key in ``extra_args``) with a
        certificate this CA signed; the conveniences below verify it."""
        self.home = home
        self.program = program or ["-m", "magickbox.cli"]  # or a patched variant's argv
        self.extra_args = extra_args or []
        self.quiet = quiet
        self.web_port = web_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home.parent / f"{home.name}-server.log"
        self.token = ""
        self.admin_token = admin_token  # False: a home with no credentials (first start)
        self.ca_file = ca_file
        self._asked = False  # SIGTERM sent to this start's process
        self._http: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.web_port}"

    @property
    def headers(self) -> dict[str, str]:
        """The admin's Authorization header, for clients other than :meth:`get`."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True

    @property
    def http(self) -> httpx.Client:
        """The client of :meth:`request` and of the health polls at start, one per box: a new
        one per request (``httpx.get``) costs some 20 ms of CPU (its SSL context), paid again
        at every poll of every waiting test on a loaded machine. Without keep-alive each
        request has a connection of its own, and it keeps no cookies, as with ``httpx.get``."""
        if self._http is None:
            self._http = httpx.Client(
                verify=self.verify,
                limits=httpx.Limits(max_keepalive_connections=0),
                cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
            )
        return self._http

    def make_token(self, role: Role = Role.admin, name: str = "tests") -> str:
        return make_token(settings_of(self.home, self.extra_env, self.extra_args), role, name)

    def add_user(self, name: str, role: Role, password: str) -> None:
        from magickbox.auth.store import AuthStore
        from magickbox.jobs.db import open_database

        settings = settings_of(self.home, self.extra_env, self.extra_args)
        db = open_database(settings.db_url)
        try:
            AuthStore(db, settings.password_hash_cost).add_user(name, role, password)
        finally:
            db.kw["bind"].dispose()

    def login_cookie(self, name: str, password: str) -> dict[str, str]:
        """Log in as the page does; the session cookie as Playwright's add_cookies takes it."""
        from magickbox.auth.sessions import COOKIE

        res = self.http.post(
            f"{self.url}/api/v1/login", data={"name": name, "password": password}, timeout=30
        )
        res.raise_for_status()
        return {"name": COOKIE, "value": res.cookies[COOKIE], "url": self.url}

    def start(self, timeout: float = 90.0) -> BoxServer:  # generous: CI machines are shared
        env = {**os.environ, "TCP_NODELAY": "1", **self.extra_env}
        if self.admin_token:
            self.token = self.make_token()
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
        self._asked = False
        self.proc = subprocess.Popen(cmd, env=env, stdout=logfh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"magickbox exited: {self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                health = self.http.get(f"{self.url}/api/v1/health", timeout=1)
                # public: no token needed; 503 is a box that serves with a part down (e.g.
                # a disk below its reserve), which some tests start on purpose
                if health.status_code in (200, 503):
                    wait_listening(self.dicom_port, self.proc)
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"magickbox did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        self.ask_to_stop()
        self.wait_stopped()

    def ask_to_stop(self) -> None:
        """SIGTERM, once (a second one would make uvicorn skip its graceful shutdown):
        several boxes asked first, then waited for, stop at the same time."""
        if self.proc and self.proc.poll() is None and not self._asked:
            self._asked = True
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> None:
        if self.proc and self._asked:
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
    def request(self, method: str, path: str, **kw: object) -> httpx.Response:
        """``method`` on ``path`` with the admin's token (``headers=`` add to it)."""
        headers = {**self.headers, **kw.pop("headers", {})}  # type: ignore[dict-item]
        kw.setdefault("timeout", 30)
        return self.http.request(method, f"{self.url}{path}", headers=headers, **kw)  # type: ignore[arg-type]

    def get(self, path: str, **kw: object) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: object) -> httpx.Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: object) -> httpx.Response:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw: object) -> httpx.Response:
        return self.request("DELETE", path, **kw)

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
