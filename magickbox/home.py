"""The home folder: the original's layout, a commented config file and an example bucket."""

from __future__ import annotations

import shutil
from pathlib import Path

from magickbox.config import CONFIG_FILE, Settings, config_template

EXAMPLES = Path(__file__).parent / "buckets" / "examples"


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
        (home / CONFIG_FILE).write_text(config_template())  # every setting, from Settings
        install_examples(settings.streams)
    return new


def install_examples(streams: Path) -> None:
    for example in sorted(p for p in EXAMPLES.iterdir() if (p / "info.json").is_file()):
        target = streams / f"bucket{example.name}"
        if target.exists():
            continue
        shutil.copytree(example, target, ignore=shutil.ignore_patterns("__pycache__"))
        (target / "work.sh").chmod(0o755)  # wheels do not always keep the run bit
