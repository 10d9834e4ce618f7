"""Find boxes on the local network: browse zeroconf for ``_magickbox._tcp`` for a while."""

from __future__ import annotations

import ipaddress
import threading
import time
from typing import Any

SERVICE_TYPE = "_magickbox._tcp.local."


def browse(seconds: float, interfaces: list[str] | None = None) -> list[dict[str, Any]]:
    """Announced boxes as ``{"Machine", "Port", "Name", "AETitle", "DicomPort", "Version",
    "Addresses"}``: ``Addresses`` are all the box announced, ``Machine`` the one to use.

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
        return [row for name in found if (row := _resolve(zc, name, interfaces))]
    finally:
        zc.close()


def _resolve(zc: Any, name: str, interfaces: list[str] | None) -> dict[str, Any] | None:
    from zeroconf import IPVersion

    info = zc.get_service_info(SERVICE_TYPE, name, timeout=1500)
    # The service's own addresses: the A records of its server name, which a box makes
    # unique (<hostname>-<port>.local.), so no other box's or the host's addresses mix in.
    addresses = info.parsed_addresses(IPVersion.V4Only) if info is not None else []
    if not addresses:
        return None
    props = {
        k.decode(errors="replace"): (v or b"").decode(errors="replace")
        for k, v in info.properties.items()
    }
    return {
        "Machine": pick_address(addresses, interfaces),
        "Port": str(info.port),
        "Name": name.removesuffix("." + SERVICE_TYPE),
        "AETitle": props.get("aet", ""),
        "DicomPort": props.get("dicom_port", ""),
        "Version": props.get("version", ""),
        "Addresses": addresses,
    }


def pick_address(addresses: list[str], interfaces: list[str] | None) -> str:
    """The address to reach a box at: a loopback one only when browsing on loopback alone.

    A box listening on every interface announces 127.0.0.1 too, which is no way to reach
    it from another host; a box found on loopback is on this host.
    """
    on_loopback = bool(interfaces) and all(_is_loopback(i) for i in interfaces or ())
    return next((a for a in addresses if _is_loopback(a) == on_loopback), addresses[0])


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
