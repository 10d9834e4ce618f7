"""Where ``mb`` keeps its machines and settings: two small JSON files people can read and edit.

The original kept the machines in ``~/.magickbox`` and its settings in ``~/.mb``; ours live
in the user's config folder (``$MB_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/magickbox``, else
``~/.config/magickbox``) as ``machines.json`` (``[{"Machine": ..., "Port": ...}]``, the
original's shape) and ``settings.json`` (``{"Sender": ..., "Timeout": ...}``).

A machine may name a ``TokenFile`` (an API token of the box, in a file only its owner may
read: mode 0600) and a ``CaFile`` (the CA that signed the box's HTTPS certificate; then
``mb`` talks HTTPS and verifies it), so no secret is in ``machines.json`` itself.
"""

from __future__ import annotations

import getpass
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MACHINES_FILE = "machines.json"
SETTINGS_FILE = "settings.json"
DEFAULT_PORT = 2813


class ConfigError(ValueError):
    """A config file that cannot be read, or a value that cannot be stored."""


@dataclass(frozen=True, order=True)
class Machine:
    host: str
    port: int = DEFAULT_PORT
    # How to reach it; not part of which machine it is (a job names only host and port).
    token_file: str = field(default="", compare=False)
    ca_file: str = field(default="", compare=False)
    https: bool = field(default=False, compare=False)

    @property
    def scheme(self) -> str:
        return "https" if self.https or self.ca_file else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        return f"{self.scheme}://{host}:{self.port}"

    def token(self) -> str:
        """The token in ``token_file`` ("" without one); refused when others may read it."""
        if not self.token_file:
            return ""
        path = Path(self.token_file).expanduser()
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{self.label}: cannot read its token file: {exc}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{self.label}: token file {path} may be read by others: "
                              f"chmod 600 {path}")  # fmt: skip
        return text

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    def as_json(self) -> dict[str, str]:
        # Strings, as in the original's file: its users' jq filters compare them as such.
        return {"Machine": self.host, "Port": str(self.port)}

    def as_stored(self) -> dict[str, str]:
        """The entry of machines.json: the original's keys, plus how to reach it if set."""
        extra = {"TokenFile": self.token_file, "CaFile": self.ca_file,
                 "Https": "1" if self.https else ""}  # fmt: skip
        return {**self.as_json(), **{k: v for k, v in extra.items() if v}}


def config_dir() -> Path:
    if explicit := os.environ.get("MB_CONFIG_DIR"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(base).expanduser() / "magickbox"


def parse_port(value: object) -> int:
    try:
        port = int(str(value))
    except ValueError:
        raise ConfigError(f"port must be a number, not {value!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(f"port {port} is out of range 1-65535")
    return port


def load_machines(folder: Path | None = None) -> list[Machine]:
    data = _read_json(_path(folder, MACHINES_FILE), default=[])
    if not isinstance(data, list):
        raise ConfigError(f"{_path(folder, MACHINES_FILE)}: expected a JSON list")
    machines: list[Machine] = []
    for row in data:
        if not isinstance(row, dict) or not row.get("Machine"):
            raise ConfigError(f"{_path(folder, MACHINES_FILE)}: bad entry {row!r}")
        machine = Machine(
            str(row["Machine"]),
            parse_port(row.get("Port", DEFAULT_PORT)),
            token_file=str(row.get("TokenFile", "")),
            ca_file=str(row.get("CaFile", "")),
            https=str(row.get("Https", "")) not in ("", "0"),
        )
        if machine not in machines:
            machines.append(machine)
    return machines


def save_machines(machines: list[Machine], folder: Path | None = None) -> None:
    _write_json(_path(folder, MACHINES_FILE), [m.as_stored() for m in machines])


def add_machine(machine: Machine, folder: Path | None = None) -> str:
    """Add ``machine``: "added", "updated" (it was there; its token or CA file are new) or
    "unchanged". A machine given bare (``queryMachines --add``) keeps how it is reached."""
    machines = load_machines(folder)
    old = next((m for m in machines if m == machine), None)
    if old is None:
        save_machines([*machines, machine], folder)
        return "added"
    bare = machine.as_stored() == machine.as_json()
    if bare or old.as_stored() == machine.as_stored():
        return "unchanged"
    save_machines([machine if m == machine else m for m in machines], folder)
    return "updated"


def remove_machines(host: str, port: int | None, folder: Path | None = None) -> list[Machine]:
    """Remove ``host`` (all its ports, or just ``port``); returns what was removed."""
    machines = load_machines(folder)
    gone = [m for m in machines if m.host == host and port in (None, m.port)]
    if gone:
        save_machines([m for m in machines if m not in gone], folder)
    return gone


# -- settings --------------------------------------------------------------------------
def default_settings() -> dict[str, Any]:
    try:
        sender = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (containers)
        sender = "mb"
    return {"Sender": sender, "Timeout": 10.0}


def load_settings(folder: Path | None = None) -> dict[str, Any]:
    stored = _read_json(_path(folder, SETTINGS_FILE), default={})
    if not isinstance(stored, dict):
        raise ConfigError(f"{_path(folder, SETTINGS_FILE)}: expected a JSON object")
    settings = {**default_settings(), **stored}
    settings["Timeout"] = _timeout(settings["Timeout"])
    return settings


def set_setting(name: str, value: str, folder: Path | None = None) -> dict[str, Any]:
    """Store one setting (``Timeout`` must be a positive number) and return all settings."""
    stored = _read_json(_path(folder, SETTINGS_FILE), default={})
    stored[name] = _timeout(value) if name == "Timeout" else value
    _write_json(_path(folder, SETTINGS_FILE), stored)
    return load_settings(folder)


def _timeout(value: object) -> float:
    try:
        seconds = float(str(value))
    except ValueError:
        raise ConfigError(f"Timeout must be a number of seconds, not {value!r}") from None
    if seconds <= 0:
        raise ConfigError("Timeout must be more than 0 seconds")
    return seconds


# -- files -----------------------------------------------------------------------------
def _path(folder: Path | None, name: str) -> Path:
    return (folder or config_dir()) / name


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _write_json(path: Path, data: Any) -> None:
    """Write atomically: a crash or a second mb never leaves half a config file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
