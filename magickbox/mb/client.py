"""HTTP calls to boxes: the original's ``/code/php`` endpoints, many machines at once.

Every query goes to all active machines in parallel with one timeout; a machine that does
not answer is reported, never waited for longer, and the others' answers are still used.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import tempfile
import urllib.parse
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from magickbox.mb.config import ConfigError, Machine
from magickbox.mb.multipart import FolderScan, MultipartZip

T = TypeVar("T")

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read it back: there is no other way to learn the process's umask
PHP = "/code/php"
ARCHIVE_PAGE = 1000  # the most /api/v1/archive gives at once
# Transfers of gigabytes: connecting is bounded by the user's Timeout, a stalled transfer
# by this many seconds between two chunks (a box unzipping a large upload answers late).
TRANSFER_READ_TIMEOUT = 600.0


class MachineError(Exception):
    """A machine that did not answer, or answered with an error."""

    def __init__(
        self, machine: Machine, reason: str, down: bool = False, refused: bool = False
    ) -> None:
        super().__init__(f"{machine.label}: {reason}")
        self.machine = machine
        self.reason = reason
        self.down = down  # no answer at all (refused, timed out), not an error reply
        self.refused = refused  # not even connected: nothing reached the machine


@dataclass
class Answers(Generic[T]):
    """What ``ask_all`` got: answers in the machines' order, and the machines that failed."""

    ok: list[tuple[Machine, T]]
    failed: list[MachineError]


class Client:
    def __init__(
        self,
        timeout: float,
        transport: httpx.BaseTransport | None = None,
        machines: list[Machine] | None = None,
    ) -> None:
        """``machines``: the configured ones, whose token and CA apply to any request to
        the same host and port (a job names only those)."""
        self.timeout = timeout
        self.transport = transport
        self.known = {(m.host, m.port): m for m in machines or []}
        self._clients: dict[str, httpx.Client] = {}
        self.http = self._client("")

    def _client(self, ca_file: str) -> httpx.Client:
        """One connection pool per CA file ("" : the system's CAs)."""
        if ca_file not in self._clients:
            verify: Any = ssl.create_default_context(cafile=ca_file) if ca_file else True
            self._clients[ca_file] = httpx.Client(
                timeout=self.timeout,
                follow_redirects=False,
                transport=self.transport,
                verify=verify,
            )
        return self._clients[ca_file]

    def _reach(self, machine: Machine) -> tuple[Machine, dict[str, str]]:
        """The configured machine (its URL, CA) and the headers that carry its token."""
        full = self.known.get((machine.host, machine.port), machine)
        try:
            token = full.token()
        except ConfigError as exc:
            raise MachineError(machine, str(exc).removeprefix(f"{machine.label}: ")) from exc
        return full, {"Authorization": f"Bearer {token}"} if token else {}

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------
    def _request(self, machine: Machine, method: str, path: str, **kw: Any) -> httpx.Response:
        full, auth = self._reach(machine)
        kw["headers"] = {**auth, **kw.get("headers", {})}
        try:
            reply = self._client(full.ca_file).request(method, full.url + path, **kw)
        except httpx.ConnectError as exc:
            raise MachineError(machine, f"no answer ({_why(exc)})", True, True) from exc
        except (httpx.TransportError, OSError) as exc:
            raise MachineError(machine, f"no answer ({_why(exc)})", down=True) from exc
        if reply.status_code >= 400:
            raise MachineError(machine, _refusal(machine, reply.status_code, _detail(reply)))
        return reply

    def _json(self, machine: Machine, path: str, **kw: Any) -> Any:
        reply = self._request(machine, "GET", path, **kw)
        try:
            return reply.json()
        except ValueError as exc:
            raise MachineError(machine, "answered with something that is not JSON") from exc

    def ask_all(self, machines: list[Machine], ask: Callable[[Machine], T]) -> Answers[T]:
        """Call ``ask(machine)`` for every machine at once; keep the configured order."""
        if not machines:
            return Answers([], [])
        with ThreadPoolExecutor(max_workers=min(16, len(machines))) as pool:
            futures = [(m, pool.submit(ask, m)) for m in machines]
        answers: Answers[T] = Answers([], [])
        for machine, future in futures:
            try:
                answers.ok.append((machine, future.result()))
            except MachineError as exc:
                answers.failed.append(exc)
        return answers

    # -- queries -------------------------------------------------------------------
    def jobs(self, machine: Machine) -> list[dict[str, Any]]:
        """getScratch.php's jobs, each with ``Machine`` and ``Port`` added."""
        rows = self._json(machine, f"{PHP}/getScratch.php")
        if not isinstance(rows, list):
            raise MachineError(machine, "getScratch.php did not answer with a list")
        return [{**row, **machine.as_json()} for row in rows if isinstance(row, dict)]

    def buckets(self, machine: Machine) -> list[dict[str, Any]]:
        rows = self._json(machine, f"{PHP}/getInstalledBuckets.php")
        return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []

    def load(self, machine: Machine) -> int:
        """Jobs queued plus running over all buckets (getStatus.php), as the original summed."""
        rows = self._json(machine, f"{PHP}/getStatus.php")
        return sum(int(r[1]) + int(r[2]) for r in rows if isinstance(r, list) and len(r) >= 3)

    def health(self, machine: Machine) -> dict[str, Any]:
        return self._json(machine, "/api/v1/health")

    def processing_log(self, machine: Machine, scratchdir: str) -> str:
        """The job's processing.log; empty when it has none yet."""
        try:
            reply = self._request(machine, "GET", f"/scratch/{scratchdir}/processing.log")
        except MachineError as exc:
            if exc.down:
                raise
            return ""
        return reply.text

    def failure_reasons(self, machine: Machine, page: int = 1000) -> dict[str, str]:
        """{scratchdir: reason} of the machine's failed jobs (``/api/v1/jobs``, a page at a
        time): getScratch has no reason, and one request per failed job would be thousands."""
        reasons: dict[str, str] = {}
        while True:
            params = {"state": "failed", "limit": page, "offset": len(reasons)}
            answer = self._json(machine, "/api/v1/jobs", params=params)
            rows = answer.get("jobs") if isinstance(answer, dict) else None
            if not isinstance(rows, list):
                raise MachineError(machine, "/api/v1/jobs did not answer with jobs")
            reasons.update(
                {
                    str(r.get("scratchdir")): str(r.get("reason") or "")
                    for r in rows
                    if isinstance(r, dict)
                }
            )
            if len(rows) < page:
                return reasons

    def archive(self, machine: Machine) -> list[dict[str, Any]]:
        """Every study in the machine's archive (``/api/v1/archive``, a page at a time)."""
        studies: list[dict[str, Any]] = []
        while True:
            page = self._json(machine, "/api/v1/archive",
                              params={"limit": ARCHIVE_PAGE, "offset": len(studies)})  # fmt: skip
            rows = page.get("studies") if isinstance(page, dict) else None
            if not isinstance(rows, list):
                raise MachineError(machine, "/api/v1/archive did not answer with studies")
            studies += [row for row in rows if isinstance(row, dict)]
            if not rows or len(studies) >= int(page.get("total", 0)):
                return studies

    def run_studies(self, machine: Machine, request: dict[str, Any]) -> list[dict[str, Any]]:
        """New jobs made of archived studies (``POST /api/v1/studies/run``)."""
        reply = self._request(machine, "POST", "/api/v1/studies/run", json=request)
        try:
            jobs = reply.json()["jobs"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MachineError(machine, "/api/v1/studies/run did not answer with jobs") from exc
        return [job for job in jobs if isinstance(job, dict)]

    def delete(self, machine: Machine, scratchdir: str) -> Any:
        return self._json(machine, f"{PHP}/deleteStudy.php", params={"scratchdir": scratchdir})

    # -- transfers -----------------------------------------------------------------
    def _transfer_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=max(self.timeout, TRANSFER_READ_TIMEOUT))

    def upload(
        self,
        machine: Machine,
        scan: FolderScan,
        fields: dict[str, str],
        on_bytes: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Zip ``scan`` into processZip.php while sending it; the box's answer as a dict."""
        body = MultipartZip(fields, "theFile", fields.get("filename", "upload.zip"), scan, on_bytes)
        reply = self._request(
            machine,
            "POST",
            f"{PHP}/processZip.php",
            content=iter(body),
            headers={"Content-Type": body.content_type},
            timeout=self._transfer_timeout(),
        )
        try:
            return reply.json()
        except ValueError as exc:
            raise MachineError(machine, "processZip.php did not answer with JSON") from exc

    def download(
        self,
        machine: Machine,
        scratchdir: str,
        dest: Path,
        part: str = "output",
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """Save the job's OUTPUT (or INPUT) zip as ``dest``; returns its size.

        The bytes go to a temporary file next to ``dest`` that is renamed only once the
        download is complete and the zip reads back: ``dest`` is never half a file.
        """
        params = {"folder": scratchdir, **({"type": "input"} if part == "input" else {})}
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                size = self._stream_to(machine, params, out, on_bytes)
            if not zip_complete(tmp):
                raise MachineError(machine, f"{scratchdir}: the zip arrived incomplete")
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp made it private; a download is not
            os.replace(tmp, dest)
            return size
        finally:
            tmp.unlink(missing_ok=True)

    def _stream_to(
        self,
        machine: Machine,
        params: dict[str, str],
        out: Any,
        on_bytes: Callable[[int], None] | None,
    ) -> int:
        """The zip's bytes into ``out``. The stdlib's http.client, not httpx: it reads the
        box's 1 MiB chunks in C and pulled 1.5x as fast here (httpx parses in Python)."""
        full, auth = self._reach(machine)
        conn = _connection(full, self.timeout)
        try:
            conn.connect()
            conn.sock.settimeout(max(self.timeout, TRANSFER_READ_TIMEOUT))
            query = urllib.parse.urlencode(params)
            conn.request("GET", f"{PHP}/getOutputZip.php?{query}", headers=auth)
            reply = conn.getresponse()
            if reply.status >= 400:
                raise MachineError(machine, _refusal(machine, reply.status, _text_detail(reply)))
            return _copy(reply, out, on_bytes)
        except ConnectionRefusedError as exc:
            raise MachineError(machine, f"no answer ({_why(exc)})", True, True) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise MachineError(machine, f"download broke off ({_why(exc)})", down=True) from exc
        finally:
            conn.close()


def _connection(machine: Machine, timeout: float) -> http.client.HTTPConnection:
    if machine.scheme == "http":
        return http.client.HTTPConnection(machine.host, machine.port, timeout=timeout)
    context = ssl.create_default_context(cafile=machine.ca_file or None)
    return http.client.HTTPSConnection(machine.host, machine.port, timeout=timeout,
                                       context=context)  # fmt: skip


def _refusal(machine: Machine, status: int, detail: str) -> str:
    """An error reply in words; 401 and 403 say what to do about them."""
    text = f"HTTP {status}: {detail}"
    if status == 401:
        how = f"mb activeMachines add {machine.host} {machine.port} --token-file FILE"
        return f"{text} (this box wants an API token: {how})"
    if status == 403:
        return f"{text} (the token's role may not do this: ask the box's admin)"
    return text


def _copy(reply: http.client.HTTPResponse, out: Any, on_bytes: Callable[[int], None] | None) -> int:
    size, buf = 0, memoryview(bytearray(1 << 20))
    while n := reply.readinto(buf):
        out.write(buf[:n])
        size += n
        if on_bytes is not None:
            on_bytes(n)
    if reply.length:  # readinto() takes a connection closed early for the end of a body
        raise http.client.IncompleteRead(b"", reply.length)
    return size


def _text_detail(reply: http.client.HTTPResponse) -> str:
    body = reply.read(4096)
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail or body[:200].decode(errors="replace") or reply.reason)


def zip_complete(path: Path) -> bool:
    """True when ``path`` is a whole zip: its central directory is there and every member's
    data lies inside the file (a cut download has no central directory at its end)."""
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as zf:
            return all(i.header_offset + i.compress_size <= size for i in zf.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


def _detail(reply: httpx.Response) -> str:
    try:
        detail = reply.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail or reply.text[:200] or reply.reason_phrase)
