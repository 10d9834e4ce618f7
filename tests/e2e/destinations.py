"""DICOM destinations for the routing tests: dcmtk's storescp, Orthanc, and a picky
pynetdicom SCP that refuses chosen files. Each tells what it has received.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from magickbox.testing.server import wait_listening
from tests.conftest import dcmtk, free_port


class StoreSCP:
    """dcmtk ``storescp``; ``+uf`` gives every received file its own name, so a file
    received twice shows up twice."""

    def __init__(
        self,
        folder: Path,
        aet: str = "STORE",
        port: int | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.folder, self.aet = folder, aet
        self.port = port or free_port()
        self.args = args or []  # more options, e.g. +tls KEY CERT +cf CA
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [dcmtk("storescp"), "-aet", self.aet, "+xa", "+uf", "-od", str(self.folder),
               *self.args, str(self.port)]  # fmt: skip
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        wait_listening(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def sop_uids(self) -> list[str]:
        """SOP Instance UIDs of every file received, one per file (duplicates kept)."""
        return sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                      for p in self.files())  # fmt: skip


class Orthanc:
    """An Orthanc of its own (ports, storage) for one test; its REST API says what arrived."""

    def __init__(
        self, folder: Path, aet: str = "ORTHANC", modalities: dict[str, list] | None = None
    ) -> None:
        self.folder, self.aet = folder, aet
        self.port, self.http_port = free_port(), free_port()
        self.modalities = modalities or {}  # name: [AE title, host, port], to send to
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Orthanc:
        exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "routing-test", "DicomAet": self.aet, "DicomPort": self.port,
            "HttpPort": self.http_port, "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": True, "Plugins": [],
            "HttpServerEnabled": True, "StableAge": 1, "DicomModalities": self.modalities,
        }  # fmt: skip
        (self.folder / "config.json").write_text(json.dumps(config))
        log = (self.folder / "orthanc.log").open("ab")
        self.proc = subprocess.Popen([exe, str(self.folder / "config.json")], stdout=log,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        wait_listening(self.http_port, self.proc, timeout=30)
        wait_listening(self.port, self.proc, timeout=30)
        return self

    def stop(self) -> None:
        """SIGKILL: this Orthanc and its storage are the test's own and thrown away, and a
        SIGTERM makes it take some 3.5 s to stop its HTTP and DICOM servers one by one."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def upload(self, path: Path) -> str:
        """Put a file into Orthanc over its REST API; its instance ID."""
        answer = httpx.post(f"http://127.0.0.1:{self.http_port}/instances",
                            content=path.read_bytes(), timeout=30)  # fmt: skip
        answer.raise_for_status()
        return str(answer.json()["ID"])

    def store_to(self, modality: str, ids: list[str]) -> dict:
        """C-STORE instances to one of the DicomModalities (Orthanc as the sender)."""
        answer = httpx.post(f"http://127.0.0.1:{self.http_port}/modalities/{modality}/store",
                            json={"Resources": ids, "Synchronous": True}, timeout=120)  # fmt: skip
        answer.raise_for_status()
        return dict(answer.json())

    def instances(self) -> list[dict]:
        base = f"http://127.0.0.1:{self.http_port}"
        ids = httpx.get(f"{base}/instances", timeout=10).json()
        return [httpx.get(f"{base}/instances/{i}/simplified-tags", timeout=10).json()
                for i in ids]  # fmt: skip


class PickySCP:
    """A pynetdicom storage SCP that refuses (0xA700) the files ``refuse`` picks."""

    def __init__(self, refuse: Callable[[object], bool], aet: str = "PICKY") -> None:
        self.refuse = refuse
        self.aet, self.port = aet, free_port()
        self.received: list[str] = []  # SOP Instance UIDs accepted, in order
        self.refused: list[str] = []
        self._lock = threading.Lock()
        self._server = None

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        with self._lock:
            if self.refuse(ds):
                self.refused.append(str(ds.SOPInstanceUID))
                return 0xA700
            self.received.append(str(ds.SOPInstanceUID))
        return 0x0000

    def start(self) -> PickySCP:
        ae = AE(ae_title=self.aet)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store)]
        address = ("127.0.0.1", self.port)
        self._server = ae.start_server(address, block=False, evt_handlers=handlers)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
