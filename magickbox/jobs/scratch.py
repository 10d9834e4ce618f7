"""The scratch folder: one ``tmp.XXXXXXXX`` folder per job, and the study archive.

Layout of a job (the original's, which users' scripts know)::

    scratch/tmp.XXXXXXXX/INPUT/          the images of this send (hard links into the archive)
    scratch/tmp.XXXXXXXX/OUTPUT/         what the bucket wrote
    scratch/tmp.XXXXXXXX/info.json       CallerIP, AETitleCalled, AETitleCaller, received
    scratch/tmp.XXXXXXXX/processing.log  the bucket's stdout and stderr
    scratch/tmp.XXXXXXXX/proc.json       the bucket's verdict
    scratch/archive/<study key>/         every image ever received, by study
                                         (magickbox.names.study_key of its UID)

Name checks (job folder names, UIDs) live in :mod:`magickbox.names`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import filecmp
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

# A file name as a path or a plain string: the receiver's per-image path uses strings, as
# a pathlib join costs a dozen Python calls and a receiver names three files per image.
StrPath = str | Path


def received_stamp(when: float | None = None) -> str:
    """The ``received`` value of info.json, in the style of date(1) as the original wrote it."""
    return time.strftime("%a %b %d %H:%M:%S %Z %Y", time.localtime(when))


def new_job_dir(scratch: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix="tmp.", dir=scratch))


def write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def link_into_archive(input_dir: Path, archive_study: Path) -> None:
    """Hard-link every file of a job's INPUT into the study's archive folder.

    A later send of the same image replaces the archive's entry by rename, so an earlier
    job's INPUT keeps the bytes it was given.
    """
    archive_study.mkdir(parents=True, exist_ok=True)
    for src in _files(input_dir):
        dst = archive_study / src.name
        if _same_file(src, dst):  # a job made from the archive: already there (and a
            continue  # rename onto the same file would leave the temporary link behind)
        tmp = archive_study / f".{src.name}.lnk"
        try:
            os.link(src, tmp)
        except FileExistsError:
            tmp.unlink()
            os.link(src, tmp)
        except OSError:  # another filesystem or no hard links: copy instead
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def link_from_archive(archive_study: Path, target: Path) -> int:
    """Hard-link (or copy) the study's archived files into ``target``; how many. Only
    regular files are taken: the archive's own temporary names and any link are left."""
    target.mkdir(parents=True, exist_ok=True)
    n = 0
    for entry in os.scandir(archive_study):
        if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
            continue
        try:
            os.link(entry.path, target / entry.name)
        except OSError:  # no hard links here: copy
            shutil.copy2(entry.path, target / entry.name)
        n += 1
    return n


def _files(root: Path):  # type: ignore[no-untyped-def]
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            yield Path(dirpath) / name


def count_files(root: Path) -> int:
    return sum(1 for _ in _files(root))


def freed_by(root: Path) -> int:
    """Bytes that removing ``root`` gives back: regular files whose every hard link is
    inside it (a job's INPUT shares its files with the archive, which keeps them)."""
    links: dict[tuple[int, int], list[int]] = {}  # inode -> [links seen, nlink, size]
    for path in _files(root):
        try:
            st = path.lstat()
        except OSError:
            continue  # removed while we looked
        if not path.is_symlink():
            seen = links.setdefault((st.st_dev, st.st_ino), [0, st.st_nlink, st.st_size])
            seen[0] += 1
    return sum(size for count, nlink, size in links.values() if count >= nlink)


def remove_tree(path: Path) -> None:
    """Delete a folder without following symlinks out of it (rmtree does not follow them)."""
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def place_file(src: StrPath, folder: StrPath, name: str) -> str:
    """Move ``src`` into ``folder`` as ``name``, never over another acknowledged data set.

    A second data set under a name already taken gets a suffix (``<uid>-2.dcm``); the same
    bytes sent again (a retry) just take the old one's place. Returns the name it got.
    ``src`` may be an unnamed file (:func:`is_unnamed`): it then gets its first name here.
    """
    stem, suffix = os.path.splitext(name)
    for n in itertools.count(1):
        kept = name if n == 1 else f"{stem}-{n}{suffix}"
        target = f"{folder}/{kept}"
        try:
            _move_new(src, target)
        except FileExistsError:
            if filecmp.cmp(src, target, shallow=False):
                _replace(src, target)
                return kept
            continue
        return kept
    raise AssertionError("unreachable")


# -- unnamed files ------------------------------------------------------------------------
# The receiver writes each data set into an unnamed file (O_TMPFILE) where the filesystem
# has them, and names it once, in its arrival, when it is complete: one directory entry
# per image instead of a file made in .partial and renamed (two directory operations, and
# a cross-directory rename takes the filesystem's rename lock). A kill -9 before that leaves
# nothing anywhere. Such a file is known by its descriptor's link, /proc/<pid>/fd/<n>,
# which any process of ours can read while the descriptor is open.
UNNAMED = "/proc/"


def is_unnamed(path: StrPath) -> bool:
    return str(path).startswith(UNNAMED)


def remove_file(path: StrPath) -> None:
    """Remove a file that will never be kept (an unnamed one goes when its descriptor
    closes)."""
    if not is_unnamed(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _replace(src: StrPath, target: StrPath) -> None:
    """Put ``src`` in ``target``'s place (the same bytes sent again)."""
    if not is_unnamed(src):
        os.replace(src, target)
        return
    beside = f"{target}.{os.getpid()}.new"  # a name first: only a named file can be renamed
    name_unnamed(src, beside)
    os.replace(beside, target)


def _libc_call(name: str) -> Any:
    """A libc function with errno kept, or None where this libc lacks it."""
    try:
        call = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return call


def _checked(result: int, target: StrPath) -> None:
    if result:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(target))  # FileExistsError for EEXIST


AT_FDCWD, RENAME_NOREPLACE, AT_SYMLINK_FOLLOW = -100, 1, 0x400
# rename(2) that fails where the target exists (Linux 3.15+, glibc 2.28+); linkat(2), the
# one call that names an unnamed file by its /proc link (os.link calls link(2) there)
_renameat2, _linkat = _libc_call("renameat2"), _libc_call("linkat")


def name_unnamed(src: StrPath, target: StrPath) -> None:
    """Name the unnamed file ``src`` ``target``, which must not exist."""
    if _linkat is None:
        raise OSError(errno.ENOSYS, "linkat is not available", str(target))
    _checked(_linkat(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(target),
                     AT_SYMLINK_FOLLOW), target)  # fmt: skip


def _move_new(src: StrPath, target: StrPath) -> None:
    """Move ``src`` to ``target``, which must not exist (FileExistsError if it does).

    One renameat2 call where the kernel and filesystem have it; else a hard link (atomic,
    never replaces) and an unlink; else, on a filesystem without hard links, a check and a
    rename (not race-free, but nothing better is there). An unnamed file is linked.
    """
    if is_unnamed(src):
        name_unnamed(src, target)
        return
    if _renameat2 is not None:
        try:
            _checked(_renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(target),
                                RENAME_NOREPLACE), target)  # fmt: skip
            return
        except OSError as exc:  # EEXIST included: re-raised as FileExistsError
            if exc.errno not in (errno.EINVAL, errno.ENOSYS):  # not "unsupported here"
                raise
    try:
        os.link(src, target)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "File exists", str(target)) from None
        os.replace(src, target)
        return
    os.unlink(src)


def move_files(src: Path, dest: Path) -> dict[str, str]:
    """Move every file under ``src`` into ``dest`` (same relative names, never over another
    data set: see place_file), then remove ``src``. Returns {old name: name it got} for
    the files that had to be renamed."""
    renamed: dict[str, str] = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(src)
        folder = dest / rel.parent
        folder.mkdir(parents=True, exist_ok=True)
        kept = place_file(path, folder, rel.name)
        if kept != rel.name:
            renamed[rel.as_posix()] = (rel.parent / kept).as_posix()
    remove_tree(src)
    return renamed
