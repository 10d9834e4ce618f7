"""Running under systemd: the sd_notify datagram (readiness, watchdog, stopping) and
``magickbox service install``, which writes the unit.

The notify protocol is one datagram of ``KEY=VALUE`` lines to the socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for Linux's abstract namespace); outside systemd
that variable is unset and nothing is sent. The watchdog is fed only while the box's own
heartbeat goes round, so a box whose heartbeat hangs is restarted by systemd.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from magickbox.config import Settings

log = logging.getLogger(__name__)

DEFAULT_UNIT = Path("/etc/systemd/system/magickbox.service")
WATCHDOG_SEC = 120  # systemd restarts the box when the heartbeat is silent this long


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. "READY=1") to systemd; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("sd_notify %r to %s failed: %s", state, address, exc)
        return False
    return True


def watchdog_seconds() -> float | None:
    """The watchdog interval systemd asks for (``WatchdogSec=``), if it asks this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6


class Watchdog:
    """Sends WATCHDOG=1 every half interval while ``healthy()`` says so."""

    def __init__(self, interval: float, healthy: Callable[[], bool]) -> None:
        self.interval, self.healthy = interval, healthy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval / 2):
            if self.healthy():
                sd_notify("WATCHDOG=1")
            else:
                log.error("watchdog: the heartbeat is silent; systemd will restart the box")


# -- the unit --------------------------------------------------------------------------


def _quoted(word: str) -> str:
    """A word of ExecStart=: systemd expands % and $, and splits on blanks."""
    word = word.replace("%", "%%").replace("$", "$$")
    if any(c.isspace() or c in "\"'\\" for c in word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def unit_text(settings: Settings, user: str, python: str = sys.executable) -> str:
    """The systemd unit that runs ``magickbox serve`` on this home."""
    home = str(Path(settings.home).resolve())
    argv = (python, "-m", "magickbox.cli", "serve", "--home", home)
    exec_start = " ".join(_quoted(word) for word in argv)
    after = "network-online.target"
    if settings.database_url.startswith("postgresql"):
        after += " postgresql.service"
    return f"""\
# Written by `magickbox service install`. Settings live in {home}/magickbox.toml.
[Unit]
Description=MagickBox DICOM processing appliance ({home})
After={after}
Wants=network-online.target

[Service]
# The box says READY=1 once DICOM and the web listen, and feeds the watchdog while
# its heartbeat goes round.
Type=notify
NotifyAccess=main
WatchdogSec={WATCHDOG_SEC}
ExecStart={exec_start}
WorkingDirectory={home.replace("%", "%%")}
User={user}
Restart=on-failure
RestartSec=5
# Migrations and crash recovery come before READY=1; a stop ends running buckets
# (SIGTERM, SIGKILL after 5 s; containers through their engine).
TimeoutStartSec=300
TimeoutStopSec=90
# SIGTERM to the box alone: it stops its buckets' process groups itself.
KillMode=mixed
LimitNOFILE=65536
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=multi-user.target
"""


def add_parser(sub: argparse._SubParsersAction, home_option: Callable[..., None]) -> None:
    group = sub.add_parser("service", help="run the box as a systemd service")
    cmds = group.add_subparsers(dest="service_command", required=True)
    p = cmds.add_parser("install", help="write the systemd unit of this home")
    home_option(p)
    p.add_argument("--user", default=getpass.getuser(), help="run as (default: you)")
    p.add_argument("--output", type=Path, default=DEFAULT_UNIT,
                   help=f"where to write the unit (default {DEFAULT_UNIT})")  # fmt: skip
    p = cmds.add_parser("unit", help="print the unit instead of writing it")
    home_option(p)
    p.add_argument("--user", default=getpass.getuser(), help="run as (default: you)")


def main(args: argparse.Namespace, settings: Settings) -> int:
    text = unit_text(settings, args.user)
    if args.service_command == "unit":
        sys.stdout.write(text)
        return 0
    output: Path = args.output
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    except OSError as exc:
        print(f"magickbox: cannot write {output}: {exc.strerror}", file=sys.stderr)
        return 1
    name = output.name
    print(f"wrote {output}; now: systemctl daemon-reload && systemctl enable --now {name}")
    return 0
