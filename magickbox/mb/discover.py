"""Find boxes on the local network: browse zeroconf for ``_magickbox._tcp`` for a while."""

from __future__ import annotations

import threading
import time
from typing import Any

SERVICE_TYPE = "_magickbox._tcp.local."


def browse(seconds: float, interfaces: list[str] | None = None) -> list[dict[str, Any]]:
    """Announced boxes as ``{"Machine", "Port", "Name", "AETitle", "DicomPort", "Version"}``.

    ``interfaces`` are IPv4 addresses to listen on (all interfaces when empty).
    """
    from zeroconf import InterfaceChoice, IPVersion, ServiceBrowser, ServiceListener, Zeroconf

    names: list[str] = []
    lock = threading.Lock()

    class Listener(ServiceListener):
        def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            with lock:
                if name not in names:
                    names.append(name)

        def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            self.add_service(zc, type_, name)

        def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            """A box that says goodbye while we browse is simply not listed."""

    zc = Zeroconf(interfaces=interfaces or InterfaceChoice.All, ip_version=IPVersion.V4Only)
    try:
        browser = ServiceBrowser(zc, SERVICE_TYPE, Listener())
        time.sleep(seconds)
        browser.cancel()
        with lock:
            found = list(names)
        return [row for name in found if (row := _resolve(zc, name))]
    finally:
        zc.close()


def _resolve(zc: Any, name: str) -> dict[str, Any] | None:
    info = zc.get_service_info(SERVICE_TYPE, name, timeout=1500)
    if info is None or not info.parsed_addresses():
        return None
    props = {
        k.decode(errors="replace"): (v or b"").decode(errors="replace")
        for k, v in info.properties.items()
    }
    return {
        "Machine": info.parsed_addresses()[0],
        "Port": str(info.port),
        "Name": name.removesuffix("." + SERVICE_TYPE),
        "AETitle": props.get("aet", ""),
        "DicomPort": props.get("dicom_port", ""),
        "Version": props.get("version", ""),
    }
