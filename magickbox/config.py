"""The one configuration object, and everything generated from it.

Values come, strongest first, from the command line (``magickbox serve --set NAME=VALUE``
and its few named flags), ``MAGICKBOX_<NAME>`` environment variables (upper case only;
lists as JSON), the home's ``magickbox.toml`` and the defaults below. Each field's
description is the only documentation of a setting: the home's config template, the
README table (``python -m magickbox.config --markdown``) and ``/api/v1/setup`` are made
from it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo

CONFIG_FILE = "magickbox.toml"
ENV_PREFIX = "MAGICKBOX_"
DEFAULT_HOME = "~/magickbox"
README_START = "<!-- settings:start -->"
README_END = "<!-- settings:end -->"


# What a webhook can be told about (the notify_events setting).
NOTIFY_EVENTS = ("job_failed", "job_done", "send_failed", "disk_low")


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: str) -> tuple[int, float]:
    """A size setting as (bytes, percent): ``1000``, ``"500M"``, ``"2G"`` or ``"5%"``."""
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 <= percent < 100:
                raise ValueError
            return 0, percent
        unit = text[-1:] if text[-1:] in SIZE_UNITS else ""
        number = float(text[: len(text) - len(unit)])
        if number < 0:
            raise ValueError
        return int(number * SIZE_UNITS[unit]), 0.0
    except (ValueError, IndexError):
        raise ValueError(
            f"not a size: {value!r} (bytes, e.g. 1000000 or \"500M\", or a percentage "
            "below 100, e.g. \"5%\")"
        ) from None


def default_home() -> Path:
    return Path(os.environ.get(f"{ENV_PREFIX}HOME", DEFAULT_HOME)).expanduser()


class Settings(BaseModel):
    """Everything the box can be told. Field names are the keys of ``magickbox.toml``.

    A plain model: only :func:`load_settings` reads the file and the environment, so
    code and tests that build ``Settings(...)`` get exactly what they pass.
    """

    model_config = ConfigDict(extra="ignore")

    home: Path = Field(
        default_factory=default_home,
        description="The home folder (set by --home or MAGICKBOX_HOME, not in its own file).",
    )
    aet: str = Field(
        default="MAGICKBOX",
        description="The box's own AE title (for C-ECHO; buckets answer to their own).",
    )
    host: str = Field(default="0.0.0.0", description="Address to listen on (0.0.0.0: all).")
    dicom_port: int = Field(default=11113, description="DICOM port.")
    web_port: int = Field(default=2813, description="HTTP port of the web page and the API.")
    announce: bool = Field(
        default=True,
        description="Announce the box on the LAN with zeroconf (_magickbox._tcp) "
        "for mb queryMachines.",
    )
    database_url: str = Field(
        default="",
        description="Empty: SQLite in the home; or e.g. postgresql+psycopg://user@host/db "
        "(pip install '.[postgres]').",
    )
    quiet_seconds: float = Field(
        default=3.0,
        description="A send becomes a job once none of its associations is open and it "
        "has been quiet this long (OsiriX sends a series on several associations: they "
        "must merge).",
    )
    max_pdu: int = Field(
        default=0, description="Largest PDU the receiver accepts, in bytes (0: no limit)."
    )
    receiver: Literal["native", "pynetdicom"] = Field(
        default="native",
        description="The DICOM receiver: the box's own upper layer (\"native\": plain "
        "sockets, its data transfer in worker processes, see receiver_processes; 2.5-12x faster "
        "than pynetdicom's in the receive benchmark, against dcmtk storescp 0.7-2.2x on one "
        "association and 0.8-1.7x of storescp --fork with 4, run to run) or pynetdicom's "
        "server.",
    )
    receiver_processes: int = Field(
        default=4,
        ge=0,
        le=64,
        description="Worker processes of the native receiver: the box negotiates each plain "
        "TCP association, then a worker (the least busy) receives its data sets, so "
        "concurrent senders are not held to one core's worth of Python. 0: every "
        "association on a thread of the box. TLS associations always stay on the box's "
        "threads.",
    )
    max_upload_bytes: int = Field(
        default=4 << 30,
        description="Cap of an upload (processZip, POST /api/v1/jobs, mb push), in bytes: "
        "a larger Content-Length is refused with 413 before its body is read, and a body "
        "without one is cut off there. 4 GiB holds a large CT study as a zip; send bigger "
        "ones by DICOM or raise this.",
    )
    upload_timeout: float = Field(
        default=30.0,
        description="An upload whose body brings less than upload_min_rate bytes a second "
        "over this many seconds (or nothing at all for as long) is cut off with 408.",
    )
    upload_min_rate: int = Field(
        default=16384,
        description="Slowest upload body kept, in bytes per second over upload_timeout "
        "(16 KiB/s: a body trickled at 1 KB/s is cut off).",
    )
    disk_reserve: str = Field(
        default="5%",
        description='Free space the box keeps on the scratch filesystem: bytes (1000000, '
        '"500M", "2G") or a percentage of it ("5%"). Below it new associations are refused '
        '(transient, "local limit exceeded"), C-STOREs answered A700 (Out of Resources) and '
        'uploads 507; above it again everything resumes by itself. 0: no reserve.',
    )
    scrub_high: float = Field(
        default=0.0,
        description="Percent of the scratch filesystem in use above which the oldest "
        "finished jobs and unreferenced archived studies are removed, down to scrub_low "
        "(the original's 90 and 80). 0: off.",
    )
    scrub_low: float = Field(
        default=0.0, description="Percent in use the scrub frees down to (below scrub_high)."
    )
    keep_days: float = Field(
        default=0.0,
        description='Days a finished job is kept after it ended (info.json "keep_days" wins '
        "for a bucket's jobs). 0: for ever.",
    )
    keep_failed_days: float = Field(
        default=0.0,
        description='Days a failed job is kept (info.json "keep_failed_days" wins); 0: as '
        "long as keep_days allows (for ever when that is 0).",
    )
    sweep_seconds: float = Field(
        default=60.0,
        description="Seconds between sweeps: retention (keep_days), the scrub, and removal "
        "of stale uploads, partial files and folders without a job (untouched for an hour).",
    )
    series_views: bool = Field(
        default=True,
        description="Keep series views (views/raw/<StudyUID>/<SeriesUID>.json, the series "
        "table, ClassifyType and each job's patient and study facts), read from the "
        "receiver's one pass over each data set.",
    )
    concurrency: int = Field(
        default=1, description='Jobs of one bucket at a time (info.json "concurrency" wins).'
    )
    bucket_timeout: float = Field(
        default=6 * 3600.0,
        description='Seconds before a running job is stopped and failed (info.json "timeout" '
        "wins).",
    )
    rerun_interrupted: bool = Field(
        default=True,
        description="What a restart does with jobs that were running when the box died: "
        "re-run them (true) or mark them failed (false).",
    )
    max_attempts: int = Field(
        default=2, description="Runs of an interrupted job in all, the first one included."
    )
    container_engine: str = Field(
        default="auto",
        description='Engine of container buckets (info.json "image"): "auto" (podman, else '
        "docker, on PATH), podman, docker or a path.",
    )
    engine_args: list[str] = Field(
        default_factory=list,
        description='Extra global arguments of every engine call, e.g. ["--runtime", "runc", '
        '"--cgroup-manager=cgroupfs"].',
    )
    run_args: list[str] = Field(
        default_factory=list,
        description='Extra arguments of each container run, e.g. ["--ulimit", '
        '"nofile=20000:20000"].',
    )
    container_cpus: float = Field(
        default=0.0, description="CPU limit of container buckets that name none (0: no limit)."
    )
    container_memory: str = Field(
        default="",
        description='Memory limit of container buckets that name none, e.g. "8g" '
        "(empty: no limit).",
    )
    routing_retries: int = Field(
        default=5, description="Tries of a failed routing send after the first."
    )
    routing_retry_delay: float = Field(
        default=30.0, description="Seconds before the first retry of a send; doubled each time."
    )
    routing_max_delay: float = Field(
        default=3600.0, description="Cap of the retry delay, in seconds."
    )
    routing_timeout: float = Field(
        default=30.0, description="Seconds to connect and to wait for each answer when sending."
    )
    routing_workers: int = Field(
        default=2, description="Sends at once (each to its own destination and job)."
    )
    routing_me: str = Field(
        default="",
        description="What a routing rule's \"$me\" stands for (the original's PARENTIP); "
        "empty: this box (its host, or 127.0.0.1 when it listens on all).",
    )
    routing_port: int = Field(
        default=0,
        description="What a routing rule's \"$port\" stands for (the original's PARENTPORT); "
        "0: this box's DICOM port.",
    )

    # -- DICOM security (README "DICOM security") --
    dicom_allowed_callers: list[dict[str, str]] = Field(
        default_factory=list,
        description='Who may send to a bucket whose info.json names no "allowed_callers": '
        'a list of {AETitle = "<regex of the whole title>", IP = "<CIDR>"} (a key left out '
        "matches anything); empty: anyone.",
    )
    dicom_tls_port: int = Field(
        default=0,
        description="A second DICOM port, with TLS (2762 by convention); 0: no TLS port.",
    )
    dicom_tls_cert: str = Field(
        default="",
        description="PEM certificate (chain) of the TLS port; a relative path is in the home.",
    )
    dicom_tls_key: str = Field(
        default="", description="PEM private key of dicom_tls_cert (relative: in the home)."
    )
    dicom_tls_ca: str = Field(
        default="",
        description="PEM CA certificates: when set, callers of the TLS port must show a "
        "client certificate signed by one of them (mutual TLS); empty: none is asked for.",
    )

    @field_validator("dicom_allowed_callers")
    @classmethod
    def _check_allowed_callers(cls, value: list[dict[str, str]]) -> list[dict[str, str]]:
        from magickbox.receive.admission import parse_allow_list  # the rule's one home

        parse_allow_list(value, "dicom_allowed_callers")  # BadAllowList is a ValueError
        return value

    @field_validator("dicom_tls_port")
    @classmethod
    def _check_tls_port(cls, value: int) -> int:
        if not 0 <= value < 65536:
            raise ValueError("must be a port number (1-65535), or 0 for no TLS port")
        return value
    # -- Security (README "Security") --
    auth: bool = Field(
        default=True,
        description="Ask HTTP clients who they are (tokens, logins, trusted networks); false: "
        "anyone who reaches the web port may do everything (only on a closed network).",
    )
    trusted_networks: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8=operator"],
        description='"CIDR=role" (viewer or operator): requests from there may use the '
        "original /code/php endpoints and processing.log without credentials.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description='Host header values the web answers to (against DNS rebinding); empty: '
        'the machine\'s names and addresses and localhost; "*": any.',
    )
    session_minutes: float = Field(
        default=480.0, description="A page login ends after this many minutes without use."
    )
    password_hash_cost: Literal["standard", "test"] = Field(
        default="standard",
        description='Cost of new password hashes (argon2id): "standard" is RFC 9106\'s '
        'low-memory profile (64 MiB, 3 passes); "test" is the cheapest one, for test '
        "suites only: never on a real box. A stored hash keeps its own cost either way.",
    )
    login_max_failures: int = Field(
        default=5,
        description="Failed logins (per address, and per user name) before logins wait.",
    )
    login_window_seconds: float = Field(
        default=300.0, description="The window failed logins are counted in, in seconds."
    )
    tls_cert: str = Field(
        default="", description="PEM certificate (chain) of the web port; with tls_key: HTTPS."
    )
    tls_key: str = Field(default="", description="PEM private key of tls_cert.")

    # -- Slurm executor (docs/slurm.md) --
    executor: str = Field(
        default="local", description='Default executor of buckets: "local" or "slurm".'
    )
    slurm_bin: str = Field(
        default="", description="Folder of sbatch/squeue/scancel; empty: on PATH."
    )
    slurm_max_submitted: int = Field(
        default=50,
        description="Most jobs handed to Slurm at once (box-wide); more wait in the box.",
    )
    slurm_partition: str = Field(default="", description="sbatch --partition; empty: the default.")
    slurm_account: str = Field(default="", description="sbatch --account.")
    slurm_qos: str = Field(default="", description="sbatch --qos.")
    slurm_cpus: int = Field(default=0, description="sbatch --cpus-per-task; 0: Slurm's default.")
    slurm_mem: str = Field(default="", description='sbatch --mem, e.g. "4G".')
    slurm_gres: str = Field(default="", description='sbatch --gres, e.g. "gpu:1".')
    slurm_extra: list[str] = Field(
        default_factory=list, description="More sbatch options, one per item."
    )
    slurm_path_map: list[str] = Field(
        default_factory=list,
        description='"BOXPATH=NODEPATH": where the nodes mount folders of the box.',
    )
    slurm_poll_seconds: float = Field(
        default=1.0,
        description="How often the box asks squeue about its jobs (Slurm has no push); "
        "a failed sbatch is retried after 5 of these.",
        gt=0,
    )
    slurm_check_seconds: float = Field(
        default=120.0,
        description="At start, how long a test job may take to show that the nodes see "
        "the scratch folder (0: no check).",
    )

    # -- Monitoring, notifications and logs --
    heartbeat_seconds: float = Field(
        default=60.0,
        description="Seconds between the heartbeat's rounds: a C-ECHO to the box itself and "
        "a look at the queue and the send workers; a part found down or hung is restarted "
        "and logged (0: no heartbeat).",
    )
    heartbeat_timeout: float = Field(
        default=10.0,
        description="Seconds a part may take to answer the heartbeat (the C-ECHO, the "
        "queue's round) before it counts as down.",
    )
    disk_warn_percent: float = Field(
        default=10.0,
        description="Free space of the scratch filesystem, in percent, below which health "
        'says the disk is "low" and a disk_low notification goes out (0: never).',
    )
    notify: list[str] = Field(
        default_factory=list,
        description="Webhook URLs (http or https): each notification is POSTed to each as JSON.",
    )
    notify_events: list[str] = Field(
        default_factory=lambda: list(NOTIFY_EVENTS),
        description="Which events are notified: job_failed, job_done, send_failed, disk_low.",
    )
    notify_phi: bool = Field(
        default=False,
        description="Put patient and study data (patient ID and name, study UID, accession, "
        "job name, description) into notifications; off: only the box's own facts.",
    )
    notify_retries: int = Field(
        default=5, description="Tries of a failed notification after the first."
    )
    notify_retry_delay: float = Field(
        default=10.0,
        description="Seconds before the first retry of a notification; doubled each time.",
    )
    notify_timeout: float = Field(
        default=10.0, description="Seconds to wait for a webhook's answer."
    )

    @field_validator("notify")
    @classmethod
    def _webhook_urls(cls, urls: list[str]) -> list[str]:
        from urllib.parse import urlsplit

        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"notify: {url!r} is not an http:// or https:// URL")
        return urls

    @field_validator("notify_events")
    @classmethod
    def _known_events(cls, events: list[str]) -> list[str]:
        unknown = sorted(set(events) - set(NOTIFY_EVENTS))
        if unknown:
            raise ValueError(f"notify_events: unknown {unknown}; known: {', '.join(NOTIFY_EVENTS)}")
        return events

    log_max_bytes: int = Field(
        default=20 << 20,
        description="logs/magickbox.log is rotated when it reaches this size, in bytes.",
    )
    log_backups: int = Field(
        default=5, description="Rotated logs kept (magickbox.log.1 ... .N); older ones go."
    )

    @field_validator("disk_reserve", mode="before")
    @classmethod
    def _check_reserve(cls, value: object) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"not a size: {value!r}")
        parse_size(str(value))  # a clear message at start, not a failure on the first send
        return str(value)  # a plain number in magickbox.toml is a number of bytes

    @model_validator(mode="after")
    def _check_watermarks(self) -> Settings:
        high, low = self.scrub_high, self.scrub_low
        if high and not 0 < low < high <= 100:
            raise ValueError(f"scrub_low ({low}) must be above 0 and below scrub_high ({high})")
        return self

    @property
    def reserve(self) -> tuple[int, float]:
        """disk_reserve as (bytes, percent of the filesystem): one of them is 0."""
        return parse_size(self.disk_reserve)

    @property
    def streams(self) -> Path:
        return self.home / "streams"

    @property
    def scratch(self) -> Path:
        return self.home / "scratch"

    @property
    def archive(self) -> Path:
        return self.scratch / "archive"

    @property
    def incoming(self) -> Path:
        """Sends being received; each becomes a job's INPUT by a rename."""
        return self.scratch / ".incoming"

    @property
    def uploads(self) -> Path:
        """Upload bodies as they arrive, and their unpacked files until they are a job."""
        return self.scratch / ".uploads"

    @property
    def partial(self) -> Path:
        """Datasets still on the wire (pynetdicom's temporary files)."""
        return self.scratch / ".partial"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def memory(self) -> Path:
        return self.home / "memory"

    @property
    def routing_file(self) -> Path:
        return self.home / "routing.json"

    def home_path(self, value: str) -> Path:
        """A path setting: relative paths are in the home."""
        return self.home / Path(value).expanduser()

    @property
    def classify_rules_file(self) -> Path:
        return self.home / "classifyRules.json"

    @property
    def views(self) -> Path:
        return self.home / "views"

    @property
    def me_host(self) -> str:
        if self.routing_me:
            return self.routing_me
        return "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host

    @property
    def me_port(self) -> int:
        return self.routing_port or self.dicom_port

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'magickbox.db'}"


# How the generated documents group the settings; every field is in exactly one section.
SECTIONS: dict[str, tuple[str, ...]] = {
    "Box": ("home", "aet", "host", "dicom_port", "web_port", "announce", "database_url"),
    "Receiving": (
        "quiet_seconds",
        "max_pdu",
        "receiver",
        "receiver_processes",
        "series_views",
        "max_upload_bytes",
        "upload_timeout",
        "upload_min_rate",
    ),
    "Disk": (
        "disk_reserve",
        "scrub_high",
        "scrub_low",
        "keep_days",
        "keep_failed_days",
        "sweep_seconds",
    ),
    "Jobs": ("concurrency", "bucket_timeout", "rerun_interrupted", "max_attempts"),
    "Container buckets": (
        "container_engine",
        "engine_args",
        "run_args",
        "container_cpus",
        "container_memory",
    ),
    "Routing": (
        "routing_retries",
        "routing_retry_delay",
        "routing_max_delay",
        "routing_timeout",
        "routing_workers",
        "routing_me",
        "routing_port",
    ),
    "DICOM security": (
        "dicom_allowed_callers",
        "dicom_tls_port",
        "dicom_tls_cert",
        "dicom_tls_key",
        "dicom_tls_ca",
    ),
    "Security": (
        "auth",
        "trusted_networks",
        "allowed_hosts",
        "session_minutes",
        "password_hash_cost",
        "login_max_failures",
        "login_window_seconds",
        "tls_cert",
        "tls_key",
    ),
    "Slurm executor": (
        "executor",
        "slurm_bin",
        "slurm_max_submitted",
        "slurm_partition",
        "slurm_account",
        "slurm_qos",
        "slurm_cpus",
        "slurm_mem",
        "slurm_gres",
        "slurm_extra",
        "slurm_path_map",
        "slurm_poll_seconds",
        "slurm_check_seconds",
    ),
    "Monitoring, notifications and logs": (
        "heartbeat_seconds",
        "heartbeat_timeout",
        "disk_warn_percent",
        "notify",
        "notify_events",
        "notify_phi",
        "notify_retries",
        "notify_retry_delay",
        "notify_timeout",
        "log_max_bytes",
        "log_backups",
    ),
}
# The home is where the file is, so the file cannot move it.
NOT_IN_FILE = frozenset({"home"})
# What setup.php's "set" may change in a running box: each of these is read where it is
# used (the grouper's quiet window is handed over by the Box). The rest need a restart.
LIVE_SETTINGS: tuple[str, ...] = (
    "quiet_seconds",
    "max_upload_bytes",
    "concurrency",
    "bucket_timeout",
    "container_cpus",
    "container_memory",
    "routing_retries",
    "routing_retry_delay",
    "routing_max_delay",
    "routing_timeout",
    "routing_me",
    "routing_port",
)
AT_LEAST_ONE = frozenset({"concurrency", "bucket_timeout", "routing_timeout"})


# --- loading ---------------------------------------------------------------------------


def load_settings(home: Path | None = None, **overrides: object) -> Settings:
    """The settings of ``home``: overrides > environment > its magickbox.toml > defaults.

    ``None`` overrides mean "not given" (argparse's value for an unused flag).
    """
    home = home or default_home()
    values: dict[str, Any] = read_config_file(home / CONFIG_FILE)
    values.update(read_environment())
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["home"] = home
    return Settings.model_validate(values)


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's known keys (unknown ones are ignored: an old file keeps working)."""
    if not path.is_file():
        return {}
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    return {k: v for k, v in data.items() if k in Settings.model_fields and k not in NOT_IN_FILE}


def env_name(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


def read_environment(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``MAGICKBOX_<NAME>`` variables (upper case only); list values are JSON."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        raw = environ.get(env_name(name))
        if raw is None or name == "home":  # the home is resolved first, by default_home()
            continue
        values[name] = env_list(name, raw) if is_list(field) else raw
    return values


def env_list(name: str, raw: str) -> list[Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{env_name(name)} must be a JSON list: {exc}") from exc
    if not isinstance(value, list):
        raise ValueError(f"{env_name(name)} must be a JSON list, not {raw!r}")
    return value


def is_list(field: FieldInfo) -> bool:
    return get_origin(field.annotation) is list


def parse_assignment(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` of the command line's ``--set``; the value is TOML, else a string.

    A str setting keeps the text as it is unless it is a quoted TOML string, so
    ``--set aet=123`` is the title "123", not a number. Raises argparse's error type so
    that argparse shows the message.
    """
    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in Settings.model_fields:
        raise argparse.ArgumentTypeError(f"not NAME=VALUE with a known setting name: {text!r}")
    if name in NOT_IN_FILE:
        raise argparse.ArgumentTypeError(f"{name} is given by --home, not --set")
    try:
        value: object = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if Settings.model_fields[name].annotation is str and not isinstance(value, str):
        value = raw
    return name, value


def live_change(settings: Settings, name: str, value: object) -> object:
    """``value`` checked as the new value of the live setting ``name`` (ValueError says why)."""
    if name not in LIVE_SETTINGS:
        live = ", ".join(LIVE_SETTINGS)
        raise ValueError(f"{name} cannot change while the box runs (these can: {live})")
    checked = Settings.model_validate({**settings.model_dump(), name: value})
    new = getattr(checked, name)
    if isinstance(new, int | float) and (new < 0 or (name in AT_LEAST_ONE and new < 1)):
        raise ValueError(f"{name} must be at least {1 if name in AT_LEAST_ONE else 0}")
    if name == "routing_port" and not 0 <= int(new) <= 65535:  # type: ignore[call-overload]
        raise ValueError("routing_port must be a port (0: this box's DICOM port)")
    return new


def write_setting(path: Path, name: str, value: object) -> None:
    """Set ``name = value`` in a magickbox.toml: the line that names it (commented out or
    not) is replaced, else the line is added; every other line stays as it was."""
    line = f"{name} = {toml_value(value)}"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    pattern = re.compile(rf"^\s*#?\s*{re.escape(name)}\s*=")
    for i, old in enumerate(lines):
        if pattern.match(old):
            lines[i] = line
            break
    else:
        lines.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --- generated documents ---------------------------------------------------------------


def default_of(name: str) -> Any:
    field = Settings.model_fields[name]
    if name == "home":  # its factory reads the environment: show the documented one
        return DEFAULT_HOME
    return field.get_default(call_default_factory=True)


def type_name(field: FieldInfo) -> str:
    annotation = field.annotation
    if get_origin(annotation) is Literal:  # a choice: its values, as the file writes them
        return " | ".join(f'"{value}"' for value in get_args(annotation))
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON's escapes are TOML's for basic strings
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, e.g. an allow-list entry
        pairs = (f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def config_template() -> str:
    """The home's magickbox.toml: every setting commented out, with its default."""
    lines = [
        "# MagickBox settings, generated from magickbox.config.Settings.",
        "# Strongest first: the command line (magickbox serve --set NAME=VALUE),",
        "# MAGICKBOX_<NAME> environment variables (upper case; lists as JSON), this file,",
        "# the defaults shown here. Uncomment a line to change it, then restart the box.",
        "# This file's folder is the home: --home or MAGICKBOX_HOME choose it.",
    ]
    for section, names in SECTIONS.items():
        lines += ["", f"# --- {section} ---"]
        for name in names:
            if name in NOT_IN_FILE:
                continue
            description = Settings.model_fields[name].description or ""
            lines += textwrap.wrap(description, 88, initial_indent="# ", subsequent_indent="# ")
            lines.append(f"# {name} = {toml_value(default_of(name))}")
    return "\n".join(lines) + "\n"


def settings_markdown() -> str:
    """The README's settings reference: one table per section."""
    parts: list[str] = []
    for section, names in SECTIONS.items():
        rows = [
            f"**{section}**",
            "",
            "| name | type | default | environment | description |",
            "|---|---|---|---|---|",
        ]
        for name in names:
            field = Settings.model_fields[name]
            cells = (
                f"`{name}`",
                type_name(field).replace("|", "\\|"),
                f"`{toml_value(default_of(name))}`",
                f"`{env_name(name)}`",
                (field.description or "").replace("|", "\\|"),
            )
            rows.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts) + "\n"


def replace_readme_block(readme: str, block: str) -> str:
    """``readme`` with the text between the settings markers replaced by ``block``."""
    head, start, rest = readme.partition(README_START)
    _, end, tail = rest.partition(README_END)
    if not start or not end:
        raise ValueError(f"markers {README_START} / {README_END} not found")
    return f"{head}{README_START}\n{block}{README_END}{tail}"


def readme_block(readme: str) -> str:
    """The text between the settings markers (without the newline after the start one)."""
    _, _, rest = readme.partition(README_START)
    return rest.partition(README_END)[0].removeprefix("\n")


def redacted_url(url: str) -> str:
    """``url`` without its password: the setup page must not show it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True) if url else url
    except ArgumentError:
        return "(not a database URL)"


def setup_view(settings: Settings) -> dict[str, Any]:
    """What /api/v1/setup serves: each setting's value by name (as before), plus a list
    of every setting with its value, default, description, section and variable."""
    values = settings.model_dump(mode="json")
    values["database_url"] = redacted_url(settings.database_url)
    items = [
        {
            "name": name,
            "section": section,
            "type": type_name(Settings.model_fields[name]),
            "value": values[name],
            "default": default_of(name),
            "env": env_name(name),
            "description": Settings.model_fields[name].description,
            "live": name in LIVE_SETTINGS,
        }
        for section, names in SECTIONS.items()
        for name in names
    ]
    return {
        **values,
        "me_host": settings.me_host,  # what $me and $port resolve to on this box
        "me_port": settings.me_port,
        "editable": False,  # the file is edited by hand; setup.php's set changes "live" ones
        "live": list(LIVE_SETTINGS),
        "settings": items,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m magickbox.config", description="Print documents made from Settings."
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--markdown", action="store_true", help="the README settings tables")
    what.add_argument("--toml", action="store_true", help="the home's magickbox.toml template")
    what.add_argument("--readme", type=Path, help="rewrite the settings block of this README")
    args = parser.parse_args(argv)
    if args.readme:
        text = args.readme.read_text(encoding="utf-8")
        args.readme.write_text(replace_readme_block(text, settings_markdown()), encoding="utf-8")
    else:
        sys.stdout.write(settings_markdown() if args.markdown else config_template())
    return 0


if __name__ == "__main__":
    sys.exit(main())
