"""What is wrong with the buckets on disk, said so a person can fix it.

The registry only hands out usable buckets (a broken info.json is no bucket at all, so no
job can reach it). People need the opposite view: every ``streams/bucket*`` folder, the
broken ones included, each with its problems, so that the page, ``/api/v1/buckets`` and
``magickbox buckets list`` never show a misconfigured bucket as ready.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magickbox.buckets import container, registry
from magickbox.buckets.container import ContainerError
from magickbox.config import Settings

FOLDER_PREFIX = "bucket"


@dataclass
class BucketHealth:
    """One bucket folder: its bucket (None when info.json is unusable) and its problems."""

    folder: Path
    bucket: registry.Bucket | None
    problems: list[str] = field(default_factory=list)

    @property
    def aetitle(self) -> str:
        """The AE title, or the folder's name after ``bucket`` when info.json has none."""
        return self.bucket.aetitle if self.bucket else self.folder.name[len(FOLDER_PREFIX) :]

    @property
    def enabled(self) -> bool:
        return bool(self.bucket and self.bucket.enabled)

    @property
    def ready(self) -> bool:
        """Enabled and nothing wrong: a send to it becomes a job that can run."""
        return self.enabled and not self.problems


def survey(settings: Settings) -> list[BucketHealth]:
    """Every bucket folder in the streams folder, by folder name, with its problems."""
    try:
        entries = sorted(os.scandir(settings.streams), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    seen: dict[str, Path] = {}
    found = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and entry.name.startswith(FOLDER_PREFIX):
            health = check_folder(Path(entry.path), settings)
            if health.bucket is not None:
                _note_clash(health, seen)
            found.append(health)
    return found


def _note_clash(health: BucketHealth, seen: dict[str, Path]) -> None:
    # The registry keeps the first folder of an AE title (by name); later ones get no jobs.
    first = seen.setdefault(health.aetitle, health.folder)
    if first != health.folder:
        health.problems.append(f"AE title {health.aetitle!r} is taken by {first.name}: ignored")


def check_folder(folder: Path, settings: Settings) -> BucketHealth:
    bucket, problem = _read(folder)
    if bucket is None:
        return BucketHealth(folder, None, [problem])
    return BucketHealth(folder, bucket, bucket_problems(bucket, settings))


def _read(folder: Path) -> tuple[registry.Bucket | None, str]:
    """The bucket, or None with what is wrong with info.json (the registry's rules)."""
    path = folder / "info.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "no info.json"
    except (OSError, ValueError) as exc:
        return None, f"unreadable info.json: {exc}"
    if not isinstance(info, dict):
        return None, "unreadable info.json: not a JSON object"
    bucket = registry.read_bucket(folder)
    if bucket is None:
        return None, "info.json has no AETitle"
    return bucket, ""


def bucket_problems(bucket: registry.Bucket, settings: Settings) -> list[str]:
    """Why jobs of ``bucket`` would be refused or could not start (empty: none found)."""
    problems = [] if bucket.enabled else ["disabled: sends to its AE title are refused"]
    try:
        image = container.image_of(bucket.info)
        if image:
            container.make_spec(bucket.info, settings, "check", settings.memory)
            return problems
    except ContainerError as exc:
        return [*problems, str(exc)]
    return problems + work_sh_problems(bucket.work_sh)


def work_sh_problems(work_sh: Path) -> list[str]:
    """What stops work.sh from being run directly (no shell runs it for us)."""
    if work_sh.is_symlink() and not work_sh.exists():
        return ["work.sh is a broken link"]
    if not work_sh.is_file():
        return ["work.sh is missing"]
    problems = []
    if not os.access(work_sh, os.X_OK):
        problems.append("work.sh is not executable (chmod +x work.sh)")
    try:
        with work_sh.open("rb") as fh:
            head = fh.read(2)
    except OSError as exc:
        return [*problems, f"work.sh cannot be read: {exc.strerror}"]
    if head != b"#!":
        problems.append("work.sh has no #! line (e.g. #!/bin/sh): it cannot start")
    return problems


def view(health: BucketHealth) -> dict[str, Any]:
    """A bucket as /api/v1/buckets and ``buckets list --json`` show it."""
    bucket = health.bucket
    return {
        "aetitle": health.aetitle,
        "enabled": health.enabled,
        "ready": health.ready,
        "folder": health.folder.name,
        "info": bucket.info if bucket else {},
        "image": container.image_of(bucket.info) if bucket and _image_ok(bucket) else "",
        "problems": list(health.problems),
    }


def _image_ok(bucket: registry.Bucket) -> bool:
    try:
        container.image_of(bucket.info)
    except ContainerError:
        return False
    return True
