"""Tell the local network that this box is here: a zeroconf (mDNS) ``_magickbox._tcp`` service.

``mb queryMachines`` browses for it. The original asked a central server for the list of
boxes; that server is gone, and a box on the LAN can simply announce itself.

Announcing is a courtesy, never a condition: when mDNS cannot start (no multicast, a
port taken, a name clash) the box logs a warning and serves as usual.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
from typing import Any

from magickbox.config import Settings

log = logging.getLogger(__name__)

SERVICE_TYPE = "_magickbox._tcp.local."


class Announcer:
    """Registers the service in a background thread (probing takes ~1-2 s) until :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._zc: Any = None  # zeroconf.Zeroconf once registered
        self._info: Any = None
        self._lock = threading.Lock()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._register, name="mdns-announce", daemon=True)
        self._thread.start()

    def _register(self) -> None:
        try:
            from zeroconf import IPVersion, ServiceInfo, Zeroconf

            interfaces, addresses = _interfaces(self.settings.host)
            zc = Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
            info = ServiceInfo(
                SERVICE_TYPE,
                f"{_instance_name(self.settings)}.{SERVICE_TYPE}",
                port=self.settings.web_port,
                addresses=[socket.inet_aton(a) for a in addresses],
                properties=self._properties(),
                server=_server_name(self.settings),
            )
            zc.register_service(info, allow_name_change=True)
        except Exception as exc:  # mDNS is optional: the box must start without it
            log.warning("could not announce the box on the network (mDNS): %s", exc)
            return
        with self._lock:
            if self._stopped:  # stop() came while we were probing
                _close(zc, info)
                return
            self._zc, self._info = zc, info
        log.info("announced as %s on port %d", info.name, self.settings.web_port)

    def _properties(self) -> dict[str, str]:
        return {
            "aet": self.settings.aet,
            "dicom_port": str(self.settings.dicom_port),
            "version": _version(),
            "software": "magickbox",
        }

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            zc, info, self._zc, self._info = self._zc, self._info, None, None
        if zc is not None:
            _close(zc, info)


def _close(zc: Any, info: Any) -> None:
    try:
        zc.unregister_service(info)
    except Exception as exc:  # leaving: a failed goodbye only delays others' forgetting
        log.warning("mDNS unregister failed: %s", exc)
    zc.close()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("magickbox")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _instance_name(settings: Settings) -> str:
    # Several boxes may run on one host (tests, staging): the web port tells them apart.
    host = socket.gethostname().split(".")[0] or "magickbox"
    return f"MagickBox {settings.aet} on {host}:{settings.web_port}"


def _server_name(settings: Settings) -> str:
    """This box's own host record, ``<hostname>-<web port>.local.``.

    A service's addresses are the A records of its server name. Were it the shared
    ``<hostname>.local.``, two boxes on one host (and the host's own avahi, which answers
    for that name with every interface's address) would pool their addresses, and a
    browser could not tell which one is this box's.
    """
    host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    return f"{host or 'magickbox'}-{settings.web_port}.local."


def _interfaces(host: str) -> tuple[Any, list[str]]:
    """Where to announce, and which addresses to give: the listening address when the box
    listens on one; otherwise every interface and its IPv4 addresses."""
    from zeroconf import InterfaceChoice, get_all_addresses

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and ip.version == 4 and not ip.is_unspecified:
        return [host], [host]
    addresses = get_all_addresses() or ["127.0.0.1"]
    return InterfaceChoice.All, addresses
