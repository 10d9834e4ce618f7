"""The one configuration object.

Values come, strongest first, from command-line flags, ``MAGICKBOX_*`` environment
variables, the home's ``magickbox.toml`` and the defaults below.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

CONFIG_FILE = "magickbox.toml"


def default_home() -> Path:
    return Path(os.environ.get("MAGICKBOX_HOME", "~/magickbox")).expanduser()


class Settings(BaseSettings):
    """Everything the box can be told. Field names are the keys of ``magickbox.toml``."""

    model_config = SettingsConfigDict(env_prefix="MAGICKBOX_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    aet: str = "MAGICKBOX"
    host: str = "0.0.0.0"
    dicom_port: int = 11113
    web_port: int = 2813
    # A send becomes a job once none of its associations is open and it has been quiet
    # this long. OsiriX sends series on several associations: they must merge.
    quiet_seconds: float = 3.0
    database_url: str = ""  # empty: SQLite in the home
    concurrency: int = 1  # jobs of one bucket at a time, unless its info.json says otherwise
    bucket_timeout: float = 6 * 3600.0
    # What a restart does with jobs that were running when the box died: re-run them
    # (up to max_attempts runs in all) or mark them failed.
    rerun_interrupted: bool = True
    max_attempts: int = 2
    max_upload_bytes: int = 64 << 30
    max_pdu: int = 0  # 0: no limit; peers may send as large PDUs as they like
    # Routing (results sent on by rule): a failed send is tried again routing_retries times,
    # after routing_retry_delay seconds, doubling up to routing_max_delay.
    routing_retries: int = 5
    routing_retry_delay: float = 30.0
    routing_max_delay: float = 3600.0
    routing_timeout: float = 30.0  # seconds to connect and to wait for each answer
    routing_workers: int = 2  # sends at once (each to its own destination and job)
    # What a rule's "$me" and "$port" stand for (the original's PARENTIP/PARENTPORT):
    # empty / 0 mean this box itself (its host, or 127.0.0.1 when it listens on all).
    routing_me: str = ""
    routing_port: int = 0
    announce: bool = True  # announce the box on the LAN with zeroconf (mb queryMachines)
    # Container buckets (info.json "image"): the engine ("auto": podman, else docker, on
    # PATH), extra global arguments for every engine call (e.g. ["--runtime", "runc"]),
    # extra arguments of each run (e.g. ulimits), and limits for buckets that name none.
    container_engine: str = "auto"
    engine_args: list[str] = Field(default_factory=list)
    run_args: list[str] = Field(default_factory=list)
    container_cpus: float = 0.0  # 0: no limit
    container_memory: str = ""  # e.g. "8g"; empty: no limit

    # -- Slurm executor (docs/slurm.md) --
    executor: str = Field(
        default="local", description='Default executor of buckets: "local" or "slurm"'
    )
    slurm_bin: str = Field(
        default="", description="Folder of sbatch/squeue/scancel; empty: on PATH"
    )
    slurm_max_submitted: int = Field(
        default=50, description="Most jobs handed to Slurm at once (box-wide); more wait in the box"
    )
    slurm_partition: str = Field(default="", description="sbatch --partition; empty: the default")
    slurm_account: str = Field(default="", description="sbatch --account")
    slurm_qos: str = Field(default="", description="sbatch --qos")
    slurm_cpus: int = Field(default=0, description="sbatch --cpus-per-task; 0: Slurm's default")
    slurm_mem: str = Field(default="", description='sbatch --mem, e.g. "4G"')
    slurm_gres: str = Field(default="", description='sbatch --gres, e.g. "gpu:1"')
    slurm_extra: list[str] = Field(
        default_factory=list, description="More sbatch options, one per item"
    )
    slurm_path_map: list[str] = Field(
        default_factory=list,
        description='"BOXPATH=NODEPATH": where the nodes mount folders of the box',
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


def load_settings(home: Path | None = None, **overrides: object) -> Settings:
    """Build the settings for ``home``: file values under environment and explicit overrides."""
    base = Settings(**({"home": home} if home else {}))
    file_values = read_config_file(base.home / CONFIG_FILE)
    env_set = {k for k in Settings.model_fields if f"MAGICKBOX_{k.upper()}" in os.environ}
    merged = {k: v for k, v in file_values.items() if k not in env_set and k != "home"}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return base.model_copy(update=Settings(home=base.home, **merged).model_dump(include=merged))


def read_config_file(path: Path) -> dict[str, object]:
    if not path.is_file():
        return {}
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    return {k: v for k, v in data.items() if k in Settings.model_fields}
