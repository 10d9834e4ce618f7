"""``magickbox``: run the box (``serve``), prepare a home (``init``), manage ``buckets``."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from magickbox import service
from magickbox.auth import cli as auth_cli
from magickbox.buckets import cli as buckets_cli
from magickbox.config import Settings, load_settings, parse_assignment

if TYPE_CHECKING:
    import uvicorn

    from magickbox.box import Box


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="magickbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="receive DICOM, run buckets, serve the web API")
    init = sub.add_parser("init", help="create a home folder with an example bucket")
    for p in (serve, init):
        add_home_option(p)
    buckets_cli.add_parser(sub, add_home_option)
    service.add_parser(sub, add_home_option)
    auth_cli.add_parsers(sub, add_home_option)
    serve.add_argument("--dicom-port", type=int, help="DICOM port (default 11113)")
    serve.add_argument("--web-port", type=int, help="HTTP port (default 2813)")
    serve.add_argument("--aet", help="the box's own AE title (default MAGICKBOX)")
    serve.add_argument("--host", help="address to listen on (default all)")
    serve.add_argument(
        "--quiet-seconds",
        type=float,
        help="seconds without data after which a send becomes a job (default 3)",
    )
    serve.add_argument(
        "--set",
        dest="assignments",
        metavar="NAME=VALUE",
        action="append",
        type=parse_assignment,
        default=[],
        help="any setting (see magickbox.toml); VALUE is TOML, else a string; repeatable",
    )
    serve.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.home, **command_line_settings(args))
    except ValueError as exc:  # pydantic's ValidationError names the setting and the problem
        print(f"magickbox: bad settings: {exc}", file=sys.stderr)
        return 2
    if args.command == "init":
        from magickbox.home import init_home

        print(f"{settings.home}: {'created' if init_home(settings) else 'already there'}")
        return 0
    if args.command == "buckets":
        return buckets_cli.main(args, settings)
    if args.command == "service":
        return service.main(args, settings)
    if args.command in ("users", "tokens"):
        return auth_cli.main(args, settings)
    return serve_forever(settings, args.log_level)


def command_line_settings(args: argparse.Namespace) -> dict[str, object]:
    """``--set`` assignments, then the named flags (which win when both give a setting)."""
    given: dict[str, object] = dict(getattr(args, "assignments", []))
    for name in ("dicom_port", "web_port", "aet", "host", "quiet_seconds"):
        if getattr(args, name, None) is not None:
            given[name] = getattr(args, name)
    return given


def add_home_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home", type=Path, help="home folder (env MAGICKBOX_HOME, default ~/magickbox)"
    )


def setup_logging(settings: Settings, level: str) -> None:
    settings.logs.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    to_file = logging.handlers.RotatingFileHandler(
        settings.logs / "magickbox.log",
        maxBytes=settings.log_max_bytes,
        backupCount=settings.log_backups,
    )
    to_err = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in (to_file, to_err):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU otherwise


def _hold_home(home: Path) -> IO[str] | None:
    """Take the home's exclusive lock (kept open for the life of the process), or say who has it."""
    import fcntl

    home.mkdir(parents=True, exist_ok=True)
    lock = open(home / "magickbox.lock", "a+")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        pid = lock.read().strip() or "?"
        print(f"magickbox: home {home} is already served by pid {pid}", file=sys.stderr)
        lock.close()
        return None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _busy_port(settings: Settings) -> str | None:
    """Name the first of the DICOM and web ports that cannot be bound; None when both are free."""
    import socket

    ports = [("DICOM", settings.host, settings.dicom_port)]
    if settings.dicom_tls_port:
        ports.append(("DICOM TLS", settings.host, settings.dicom_tls_port))
    ports.append(("web", settings.host, settings.web_port))
    for what, host, port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                return f"{what} port {port} is taken ({exc.strerror}){_listener_of(port)}"
    return None


def _listener_of(port: int) -> str:
    """", by pid N (its command line)" for the process listening on TCP ``port``, read from
    Linux's /proc; "" when it cannot be told (another OS, another user's process)."""
    sockets = _listening_sockets(port)
    pids = (entry.name for entry in os.scandir("/proc") if entry.name.isdigit()) if sockets else ()
    for pid in pids:
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in sockets
                   for fd in os.listdir(f"/proc/{pid}/fd")):  # fmt: skip
                args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace"
                )
                return f", by pid {pid} ({' '.join(args.split())[:200]})"
        except OSError:
            continue  # gone meanwhile, or not ours to look at
    return ""


def _listening_sockets(port: int) -> set[str]:
    """The "socket:[inode]" names of TCP sockets listening on ``port`` (IPv4 and IPv6)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # local address "HEX:PORT", state (0A: LISTEN), ..., inode
            if len(fields) > 9 and fields[3] == "0A" and fields[1].endswith(f":{port:04X}"):
                found.add(f"socket:[{fields[9]}]")
    return found


def _tls_problem(settings: Settings) -> str | None:
    """Why the DICOM TLS port cannot start (a missing or bad certificate), else None."""
    from magickbox.errors import Invalid
    from magickbox.receive.tlsserver import tls_context

    if not settings.dicom_tls_port:
        return None
    if settings.dicom_tls_port in (settings.dicom_port, settings.web_port):
        return f"dicom_tls_port {settings.dicom_tls_port} is also the DICOM or the web port"
    try:
        tls_context(settings)
    except Invalid as exc:
        return str(exc)
    return None


def _print_first_admin(box: object) -> None:
    """A new home's admin password: shown once on the console, never in the log file."""
    from magickbox.auth.store import FIRST_ADMIN, PASSWORD_FILE

    password = box.first_admin()  # type: ignore[attr-defined]
    if password:
        home = box.settings.home  # type: ignore[attr-defined]
        print(f"magickbox: first start: user {FIRST_ADMIN!r}, password {password} "
              f"(also in {home / PASSWORD_FILE}, mode 0600; change it with "
              f"'magickbox users passwd {FIRST_ADMIN}')", file=sys.stderr, flush=True)  # fmt: skip


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def serve_forever(settings: Settings, log_level: str = "INFO") -> int:
    import uvicorn

    from magickbox.box import Box
    from magickbox.errors import MagickBoxError
    from magickbox.web.app import create_app

    # Before anything touches the home (crash recovery kills "orphaned" buckets): one box per home,
    # and both ports free, so a second serve or a busy port fails cleanly instead.
    lock = _hold_home(Path(settings.home))
    if lock is None:
        return 1
    busy = _tls_problem(settings) or _busy_port(settings)
    if busy:
        print(f"magickbox: {busy}", file=sys.stderr)
        return 1
    setup_logging(settings, log_level)
    try:
        box = Box(settings)  # the app's lifespan starts it once uvicorn runs
    except MagickBoxError as exc:  # e.g. a trusted_networks entry that is no network
        print(f"magickbox: {exc}", file=sys.stderr)
        return 2
    _print_first_admin(box)
    tls = bool(settings.tls_cert and settings.tls_key)
    logging.getLogger("magickbox").info(
        "MagickBox home %s: DICOM on %d (AE %s), web on %s://%s:%d/",
        settings.home,
        settings.dicom_port,
        settings.aet,
        "https" if tls else "http",
        settings.host,
        settings.web_port,
    )
    # uvicorn restores this handler and re-raises SIGTERM after its own shutdown: make that an
    # exit through the finally below (Box.stop()) instead of the default instant death.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    config = uvicorn.Config(
        create_app(box),
        host=settings.host,
        port=settings.web_port,
        log_level="warning",
        access_log=False,  # never a log of URLs (nor of what they carry)
        ssl_certfile=settings.tls_cert or None,
        ssl_keyfile=settings.tls_key or None,
    )
    server = uvicorn.Server(config)
    threading.Thread(
        target=_tell_systemd, args=(server, box), name="sd-ready", daemon=True
    ).start()
    try:
        server.run()
    finally:
        service.sd_notify("STOPPING=1")
        box.stop()  # already stopped by the lifespan, unless uvicorn failed before it ran
        logging.getLogger("magickbox").info("MagickBox home %s: stopped", settings.home)
    return 0 if server.started else 3  # 3: uvicorn's "startup failed"


def _tell_systemd(server: uvicorn.Server, box: Box) -> None:
    """READY=1 once the web port listens (the lifespan started the Box before), then feed
    systemd's watchdog while the heartbeat goes round. Nothing is sent outside systemd."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    s = box.settings
    service.sd_notify(f"READY=1\nSTATUS=DICOM on {s.dicom_port} (AE {s.aet}), web on {s.web_port}")
    interval = service.watchdog_seconds()
    if interval:
        service.Watchdog(interval, box.heartbeat.alive).start()


if __name__ == "__main__":
    sys.exit(main())
