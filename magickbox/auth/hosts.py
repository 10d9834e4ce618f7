"""The names and addresses this machine answers to: the default of ``allowed_hosts``."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import socket
from pathlib import Path

from magickbox.config import Settings

WILDCARDS = ("", "0.0.0.0", "::")


def machine_hosts(settings: Settings) -> frozenset[str]:
    """localhost, the host name(s), every local address, and what the settings name."""
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
    names |= _local_ipv4() | _local_ipv6()
    for name in (settings.host, settings.routing_me):
        if name not in WILDCARDS:
            names.add(name)
    for name in list(names):
        with contextlib.suppress(OSError):
            names |= {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
    return frozenset(n.lower() for n in names if n)


def _local_ipv4() -> set[str]:
    """Addresses of this machine's interfaces (Linux: the kernel's routing trie)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for previous, line in itertools.pairwise(lines):
            if "/32 host LOCAL" in line:
                found.add(previous.split()[-1])
    return found


def _local_ipv6() -> set[str]:
    found: set[str] = set()
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    return found


def host_of(header: str) -> str:
    """The host of a Host header, without its port: ``[::1]:2813`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        return header.partition(":")[0]
    return header
