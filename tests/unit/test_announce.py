"""The box's zeroconf announcement: found on loopback, and harmless when mDNS fails."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from pathlib import Path

import pytest
import zeroconf

from magickbox import announce as announce_mod
from magickbox.announce import Announcer
from magickbox.config import Settings
from magickbox.mb.discover import browse, pick_address


def test_mdns_failure_is_a_warning_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_multicast(*_a: object, **_k: object) -> None:
        raise OSError("no multicast on this network")

    monkeypatch.setattr(zeroconf, "Zeroconf", no_multicast)
    announcer = Announcer(Settings(home=tmp_path, host="127.0.0.1"))
    with caplog.at_level(logging.WARNING, logger="magickbox.announce"):
        announcer.start()
        assert announcer._thread is not None
        announcer._thread.join(10)
    announcer.stop()
    assert "could not announce" in caplog.text and "no multicast" in caplog.text


def announce(settings: Settings) -> Announcer:
    announcer = Announcer(settings)
    announcer.start()
    assert announcer._thread is not None
    announcer._thread.join(20)
    assert announcer._info is not None, "the box did not get announced"
    return announcer


TWO = ["127.0.0.1", "192.0.2.7"]


def free_ports(n: int) -> list[int]:
    """Ports no other test run on this host uses now, so its boxes never pass for ours."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def test_two_boxes_on_one_host_are_each_found_with_their_own_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each box's address comes from its own host record: a second box on the host (here
    one that also has an address on another network) must not lend it its addresses."""
    port_a, port_b = free_ports(2)
    tag = uuid.uuid4().hex[:6].upper()
    plain = Settings(home=tmp_path / "a", host="127.0.0.1", web_port=port_a, aet=f"A{tag}")
    other = Settings(home=tmp_path / "b", host="127.0.0.1", web_port=port_b, aet=f"B{tag}")
    box_a = announce(plain)
    # Box B listens on loopback but also announces a second address, as a box on every
    # interface of a host with a LAN card does (192.0.2.7: TEST-NET-1, reaches nothing).
    monkeypatch.setattr(announce_mod, "_interfaces", lambda _host: (["127.0.0.1"], TWO))
    try:
        box_b = announce(other)
    except BaseException:
        box_a.stop()
        raise
    try:
        # Browsed again until both answered (or 20 s): on a loaded machine, with other
        # tests' boxes announcing too, one 2 s look does not always hear both.
        deadline = time.monotonic() + 20
        rows: dict[str, dict] = {}
        while not {str(port_a), str(port_b)} <= set(rows) and time.monotonic() < deadline:
            rows.update({r["Port"]: r for r in browse(2.0, ["127.0.0.1"])})
    finally:
        box_a.stop()
        box_b.stop()
    a, b = rows.get(str(port_a)), rows.get(str(port_b))
    assert a is not None and b is not None, f"not both found: {sorted(rows)}"
    assert (a["AETitle"], a["Machine"], a["Addresses"]) == (plain.aet, "127.0.0.1", ["127.0.0.1"])
    assert b["AETitle"] == other.aet and sorted(b["Addresses"]) == sorted(TWO)
    assert b["Machine"] == "127.0.0.1"  # found on loopback: reached on loopback


@pytest.mark.parametrize(
    ("addresses", "interfaces", "machine"),
    [
        (["127.0.0.1", "10.1.2.3"], None, "10.1.2.3"),  # another host cannot use 127.0.0.1
        (["127.0.0.1", "10.1.2.3"], ["10.0.0.5"], "10.1.2.3"),
        (["10.1.2.3", "127.0.0.1"], ["127.0.0.1"], "127.0.0.1"),  # browsing on loopback
        (["127.0.0.1"], None, "127.0.0.1"),  # the only one there is
        (["10.1.2.3"], ["127.0.0.1"], "10.1.2.3"),
    ],
)
def test_the_machine_is_an_address_the_browser_can_reach(
    addresses: list[str], interfaces: list[str] | None, machine: str
) -> None:
    assert pick_address(addresses, interfaces) == machine
