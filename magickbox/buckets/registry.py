"""Buckets on disk: ``streams/bucket<AETitle>/`` with ``info.json`` and an executable ``work.sh``.

The folder is read on every lookup (a handful of small files), so buckets added or
edited on disk are live at once, without a restart or a cache to invalidate.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magickbox.errors import NotFound

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bucket:
    aetitle: str
    path: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return str(self.info.get("enabled", 0)).strip().lower() in ("1", "true", "yes", "t")

    @property
    def work_sh(self) -> Path:
        return self.path / "work.sh"

    def concurrency(self, default: int) -> int:
        return _positive_int(self.info.get("concurrency"), default)

    def timeout(self, default: float) -> float:
        value = self.info.get("timeout")
        try:
            return float(value) if value is not None and float(value) > 0 else default
        except (TypeError, ValueError):
            return default


    def keep_days(self, failed: bool, default: float) -> float:
        """Days its finished jobs are kept: info.json "keep_failed_days" (failed jobs) or
        "keep_days", else ``default``; 0 is for ever, a bad value is the default."""
        key = "keep_failed_days" if failed else "keep_days"
        return nonnegative(self.aetitle, self.info, key, default, "days")


def nonnegative(
    aetitle: str, info: dict[str, Any], key: str, default: float | None, unit: str
) -> Any:
    """A number >= 0 of info.json ``key``, else ``default`` (None there: the default;
    anything else, NaN or below 0: a warning naming the bucket, and the default)."""
    value = info.get(key)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not number >= 0:  # negative, or NaN (which compares false with everything)
        log.warning("bucket %s: info.json %r must be %s >= 0, not %r", aetitle, key, unit,
                    value)  # fmt: skip
        return default
    return number


def _positive_int(value: object, default: int) -> int:
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


def read_bucket(folder: Path) -> Bucket | None:
    """The bucket in ``folder``, or None (with a log line) when its info.json is unusable."""
    try:
        info = json.loads((folder / "info.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("bucket %s: unreadable info.json: %s", folder.name, exc)
        return None
    if not isinstance(info, dict) or not str(info.get("AETitle", "")).strip():
        log.warning("bucket %s: info.json has no AETitle", folder.name)
        return None
    return Bucket(aetitle=str(info["AETitle"]).strip(), path=folder, info=info)


def all_buckets(streams: Path) -> dict[str, Bucket]:
    """Every bucket in ``streams`` by AE title, enabled or not."""
    found: dict[str, Bucket] = {}
    try:
        entries = sorted(os.scandir(streams), key=lambda e: e.name)
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.is_dir() and entry.name.startswith("bucket"):
            bucket = read_bucket(Path(entry.path))
            if bucket and bucket.aetitle not in found:
                found[bucket.aetitle] = bucket
    return found


def enabled_bucket(streams: Path, aetitle: str) -> Bucket | None:
    """The enabled bucket that answers to ``aetitle`` (AE titles are matched exactly)."""
    aetitle = aetitle.strip()
    direct = read_bucket(streams / f"bucket{aetitle}") if _plain_name(aetitle) else None
    bucket = direct if direct and direct.aetitle == aetitle else all_buckets(streams).get(aetitle)
    return bucket if bucket and bucket.enabled else None


def write_info(folder: Path, info: dict[str, Any]) -> None:
    """Replace info.json in one step: the box reads it on every lookup."""
    tmp = folder / ".info.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, folder / "info.json")


def set_enabled(streams: Path, aetitle: str, enabled: bool) -> Bucket:
    """Enable or disable the bucket ``aetitle`` (its info.json "enabled"); the bucket as it
    is now. The one way both the box (over HTTP) and ``magickbox buckets`` do it."""
    bucket = all_buckets(streams).get(aetitle)
    if bucket is None:
        raise NotFound(f"no bucket {aetitle!r} in {streams}")
    info = dict(bucket.info, enabled=1 if enabled else 0)
    write_info(bucket.path, info)
    return Bucket(aetitle=bucket.aetitle, path=bucket.path, info=info)


def _plain_name(aetitle: str) -> bool:
    return (
        bool(aetitle) and "/" not in aetitle and "\0" not in aetitle and aetitle not in (".", "..")
    )
