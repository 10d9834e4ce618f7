"""Looking into folders for the web page: a job's files, the archived studies, disk use.

Nothing here follows a symbolic link: a bucket may leave links in OUTPUT, and the page
must never show (or size) what lies outside the job.
"""

from __future__ import annotations

import math
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from magickbox.errors import NotFound
from magickbox.names import BadName, is_study_key, is_uid

PARTS = ("OUTPUT", "INPUT")
IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
DICOM_MAGIC_AT = 128  # Part 10: a 128-byte preamble, then "DICM"

# The study facts the archive list shows, read from one file of each study.
STUDY_TAGS = ("PatientID", "PatientName", "AccessionNumber", "StudyDate", "StudyDescription")
STUDY_UID = "StudyInstanceUID"


def job_files(job_dir: Path, part: str, limit: int = 1000) -> dict[str, Any]:
    """Regular files under ``job_dir/part`` (relative names, sizes), at most ``limit``."""
    if part not in PARTS:
        raise BadName(f"part must be one of {', '.join(PARTS)}")
    root = job_dir / part
    files: list[dict[str, Any]] = []
    total = 0
    if root.is_dir() and not root.is_symlink():
        for dirpath, dirs, names in os.walk(root):  # os.walk never descends into links
            dirs.sort()
            for name in sorted(names):
                path = Path(dirpath) / name
                st = path.lstat()
                if not path.is_file() or path.is_symlink():
                    continue
                total += 1
                if len(files) < limit:
                    rel = path.relative_to(root).as_posix()
                    kind = file_kind(path)
                    files.append(
                        {"name": rel, "size": st.st_size, "mtime": st.st_mtime, "kind": kind}
                    )
    return {"part": part, "total": total, "files": files}


def file_kind(path: Path) -> str:
    """``image`` (PNG/JPEG, by name), ``dicom`` (a Part 10 file, by its first bytes) or empty."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    try:
        with path.open("rb") as fh:
            fh.seek(DICOM_MAGIC_AT)
            return "dicom" if fh.read(4) == b"DICM" else ""
    except OSError:
        return ""


def job_file(job_dir: Path, part: str, name: str) -> Path:
    """The regular file ``name`` (relative, ``/``-separated) under ``job_dir/part``.

    Every component is checked with lstat: a name with ``..``, an absolute name or a
    link anywhere on the way is refused, so nothing outside the job is ever served.
    """
    if part not in PARTS:
        raise BadName(f"part must be one of {', '.join(PARTS)}")
    pieces = name.split("/")
    if not name or any(p in ("", ".", "..") or "\0" in p for p in pieces):
        raise BadName(f"not a file name inside {part}: {name!r}")
    path = job_dir
    for piece in [part, *pieces]:
        path = path / piece
        try:
            mode = path.lstat().st_mode
        except OSError:
            raise NotFound(f"no file {name!r} in {part}") from None
        if stat.S_ISLNK(mode):
            raise NotFound(f"{name!r} in {part} goes through a link: not served")
    if not stat.S_ISREG(mode):
        raise NotFound(f"{name!r} in {part} is not a regular file")
    return path


def tree_size(root: Path) -> int:
    """Bytes of the regular files under ``root``; hard links counted once, links not followed."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue  # removed while we looked
            key = (st.st_dev, st.st_ino)
            if key not in seen and not os.path.islink(os.path.join(dirpath, name)):
                seen.add(key)
                size += st.st_size
    return size


class ScratchSize:
    """The scratch folder's size, summed in the background at most every ``max_age`` seconds.

    Walking a scratch of 10,000 jobs takes seconds, too long for a page that asks every
    visit: a request gets the last sum (None before the first) and starts a new one if
    that is older than ``max_age``.
    """

    def __init__(self, root: Path, max_age: float = 300.0) -> None:
        self.root = root
        self.max_age = max_age
        self._value: tuple[int, float] | None = None  # (bytes, when measured)
        self._busy = False
        self._lock = threading.Lock()

    def get(self) -> tuple[int | None, float | None]:
        with self._lock:
            value = self._value
            stale = value is None or time.time() - value[1] > self.max_age
            if stale and not self._busy:
                self._busy = True
                threading.Thread(target=self._measure, name="scratch-size", daemon=True).start()
        return value if value else (None, None)

    def _measure(self) -> None:
        try:
            size = tree_size(self.root)
            with self._lock:
                self._value = (size, time.time())
        finally:
            with self._lock:
                self._busy = False


def disk_usage(scratch_dir: Path, sizer: ScratchSize | None) -> dict[str, Any]:
    """The scratch folder's file system in ``df``'s terms (``df -B1 <scratch>``).

    ``total`` is df's Size, ``used`` its Used, ``free`` its Avail (what the box may still
    write: blocks reserved for root are not in it, so used + free can be less than total),
    ``reserved`` the difference, and ``use_percent`` df's Use%: used / (used + free),
    rounded up, as df does.
    """
    st = os.statvfs(scratch_dir)
    total = st.f_blocks * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    free = st.f_bavail * st.f_frsize
    size, measured = sizer.get() if sizer else (None, None)
    return {
        "path": str(scratch_dir),
        "total": total,
        "used": used,
        "free": free,
        "reserved": max(0, total - used - free),
        "use_percent": math.ceil(100 * used / (used + free)) if used + free else 0,
        "scratch_bytes": size,
        "scratch_measured_at": measured,
    }


@dataclass
class _Study:
    mtime: float
    facts: dict[str, Any]


class ArchiveIndex:
    """The archived studies, newest first; each study's tags are read once per folder mtime.

    A folder's mtime changes when a file is added or replaced (new sends of the study),
    so a cached entry is good until then. Only the page asked for is read.
    """

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self._cache: dict[str, _Study] = {}
        self._lock = threading.Lock()

    def page(self, limit: int, offset: int) -> dict[str, Any]:
        folders = self._folders()
        chosen = folders[offset : offset + limit]
        studies = [self._study(uid, mtime) for uid, mtime in chosen]
        with self._lock:  # forget studies deleted since
            alive = {uid for uid, _ in folders}
            for uid in list(self._cache):
                if uid not in alive:
                    del self._cache[uid]
        return {"total": len(folders), "limit": limit, "offset": offset, "studies": studies}

    def _folders(self) -> list[tuple[str, float]]:
        if not self.archive.is_dir():
            return []
        found = []
        for entry in os.scandir(self.archive):
            if entry.is_dir(follow_symlinks=False) and is_study_key(entry.name):
                found.append((entry.name, entry.stat(follow_symlinks=False).st_mtime))
        found.sort(key=lambda item: item[1], reverse=True)
        return found

    def _study(self, uid: str, mtime: float) -> dict[str, Any]:
        with self._lock:
            hit = self._cache.get(uid)
        if hit is None or hit.mtime != mtime:
            hit = _Study(mtime, self._read(self.archive / uid))
            with self._lock:
                self._cache[uid] = hit
        return {"StudyInstanceUID": uid, "modified": mtime, **hit.facts}

    @staticmethod
    def _read(folder: Path) -> dict[str, Any]:
        return study_facts(folder)


def study_facts(folder: Path) -> dict[str, Any]:
    """Patient and study tags of the first DICOM file in ``folder``, and its file count."""
    files = 0
    facts: dict[str, Any] = dict.fromkeys(STUDY_TAGS, "")
    read = False
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file(follow_symlinks=False) or entry.name.startswith("."):
            continue
        files += 1
        if read:
            continue
        try:
            ds = pydicom.dcmread(
                entry.path, stop_before_pixels=True, specific_tags=[*STUDY_TAGS, STUDY_UID]
            )
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # not DICOM; another file of the study will tell
        facts = {tag: str(ds.get(tag, "") or "") for tag in STUDY_TAGS}
        if not is_uid(folder.name) and ds.get(STUDY_UID):
            facts[STUDY_UID] = str(ds.get(STUDY_UID))  # a hashed key: show the real UID
        read = True
    return {**facts, "files": files}
