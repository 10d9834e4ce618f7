"""The home folder: the original's layout, a commented config file and an example bucket."""

from __future__ import annotations

import shutil
from pathlib import Path

from magickbox.config import CONFIG_FILE, Settings

EXAMPLES = Path(__file__).parent / "buckets" / "examples"

CONFIG_TEMPLATE = """\
# MagickBox settings. Command-line flags and MAGICKBOX_* environment variables win over
# these. Uncomment a line to change it; see README.md for all of them.
# aet = "MAGICKBOX"          # the box's own AE title (buckets answer to their own)
# dicom_port = 11113
# web_port = 2813
# quiet_seconds = 3.0        # a send becomes a job after this long without data
# concurrency = 1            # jobs of one bucket at a time (info.json "concurrency" wins)
# bucket_timeout = 21600.0   # seconds (info.json "timeout" wins)
# rerun_interrupted = true   # re-run jobs a crash interrupted (else: failed)
# max_attempts = 2
# database_url = ""          # empty: SQLite in this folder; or postgresql+psycopg://...
# container_engine = "auto"  # for buckets whose info.json names an "image": podman/docker
# engine_args = []           # e.g. ["--runtime", "runc", "--cgroup-manager=cgroupfs"]
# run_args = []              # e.g. ["--ulimit", "nofile=20000:20000"]
# container_cpus = 0.0       # default CPU limit of a container bucket (0: none)
# container_memory = ""      # default memory limit, e.g. "8g" (empty: none)
"""


def init_home(settings: Settings) -> bool:
    """Create what is missing of the home; True when the home was new."""
    home = settings.home
    new = not (home / CONFIG_FILE).exists()
    for folder in (
        settings.streams,
        settings.scratch,
        settings.archive,
        settings.incoming,
        settings.partial,
        settings.logs,
        settings.memory,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    if new:
        (home / CONFIG_FILE).write_text(CONFIG_TEMPLATE)
        install_examples(settings.streams)
    return new


def install_examples(streams: Path) -> None:
    for example in sorted(p for p in EXAMPLES.iterdir() if (p / "info.json").is_file()):
        target = streams / f"bucket{example.name}"
        if target.exists():
            continue
        shutil.copytree(example, target, ignore=shutil.ignore_patterns("__pycache__"))
        (target / "work.sh").chmod(0o755)  # wheels do not always keep the run bit
