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
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any, get_origin

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

CONFIG_FILE = "magickbox.toml"
ENV_PREFIX = "MAGICKBOX_"
DEFAULT_HOME = "~/magickbox"
README_START = "<!-- settings:start -->"
README_END = "<!-- settings:end -->"


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
    max_upload_bytes: int = Field(
        default=64 << 30, description="Cap for processZip and API uploads, in bytes."
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
    "Receiving": ("quiet_seconds", "max_pdu", "max_upload_bytes", "series_views"),
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
    ),
}
# The home is where the file is, so the file cannot move it.
NOT_IN_FILE = frozenset({"home"})


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


# --- generated documents ---------------------------------------------------------------


def default_of(name: str) -> Any:
    field = Settings.model_fields[name]
    if name == "home":  # its factory reads the environment: show the documented one
        return DEFAULT_HOME
    return field.get_default(call_default_factory=True)


def type_name(field: FieldInfo) -> str:
    annotation = field.annotation
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
                type_name(field),
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
        }
        for section, names in SECTIONS.items()
        for name in names
    ]
    return {
        **values,
        "me_host": settings.me_host,  # what $me and $port resolve to on this box
        "me_port": settings.me_port,
        "editable": False,
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
