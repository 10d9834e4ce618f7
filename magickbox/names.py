"""Safe names: what a name taken from outside must look like before it touches a path.

The bottom of the package (stdlib and :mod:`magickbox.errors` only): the receiver, the job
store, the archive and the fronts all check names here, so they agree on one rule.

Two kinds of outside names:

- Names MagickBox made itself (a job's ``tmp.XXXXXXXX`` folder): anything else is refused.
- A StudyInstanceUID, which the sender chose. Proper UIDs are digits and dots, but hashes
  (64 hex characters) are seen in the wild and storescp and Orthanc store them; so only a
  value that is unsafe as a folder name or cannot be kept as it is gets refused
  (:func:`check_study_uid`), and the archive folder is :func:`study_key`: the UID itself
  when it is a proper one, else a name derived from it. The real value stays in the job
  row, info.json and MB_STUDY_UID.
"""

from __future__ import annotations

import hashlib
import re

from magickbox.errors import Invalid

SCRATCHDIR_RE = re.compile(r"^tmp\.[A-Za-z0-9_]{6,32}$")
# Proper UIDs are digits and dots, at most 64 characters (PS3.5 9.1).
UID_RE = re.compile(r"^[0-9][0-9.]{0,63}$")
# The archive folder of a study whose UID is not a proper one: "x-" and the SHA-1 of the value.
HASHED_KEY_RE = re.compile(r"^x-[0-9a-f]{40}$")
# The UI value representation holds at most 64 characters; a 64-hex hash just fits.
MAX_STUDY_UID = 64
# Printable ASCII without path separators. Control characters (NUL, CR, LF, ESC) would forge
# log lines and terminal output; non-ASCII bytes were already replaced when decoding, so
# the real value could not be kept; "/" and "\" make a path of a name.
_FOLDER_SAFE_RE = re.compile(r"^[\x20-\x2e\x30-\x5b\x5d-\x7e]+$")


# An AE title (PS3.5 6.2, VR AE): at most 16 characters of printable ASCII, no backslash.
AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def aet_problem(value: str) -> str:
    """Why ``value`` cannot be an AE title on the wire ("" when it can); blanks around it
    do not count, as in DICOM."""
    title = value.strip()
    if not title:
        return "must not be empty"
    if not AE_TITLE_RE.match(title):
        return (f"{title[:40]!r} is no AE title (at most 16 characters of printable ASCII, "
                "no backslash)")  # fmt: skip
    return ""


class BadName(Invalid):
    """A job or study name that is not one MagickBox made or accepts: never used as a path."""


def check_scratchdir(name: str) -> str:
    if not SCRATCHDIR_RE.fullmatch(name or ""):
        raise BadName(f"not a job folder name: {name!r}")
    return name


def check_uid(uid: str) -> str:
    """A proper DICOM UID (digits and dots, no empty component at the start or ``..``)."""
    if not is_uid(uid):
        raise BadName(f"not a DICOM UID: {uid!r}")
    return uid


def is_uid(uid: str) -> bool:
    return bool(UID_RE.fullmatch(uid or "")) and ".." not in uid


def check_study_uid(uid: str) -> str:
    """A StudyInstanceUID the box keeps: 1 to 64 printable ASCII characters, not a path.

    Refused: what would be unsafe as a folder name ("/", "\\", "." or "..", control
    characters) or could not be kept as it is. Anything else need not be a proper UID:
    :func:`study_key` makes it a safe folder name all the same.
    """
    bad = not uid or len(uid) > MAX_STUDY_UID or uid in (".", "..")
    if bad or not _FOLDER_SAFE_RE.fullmatch(uid):
        raise BadName(f"not a StudyInstanceUID the box can keep: {uid!r}")
    return uid


def study_key(uid: str) -> str:
    """The archive folder name of a study: its UID when proper, else ``x-<sha1 of the UID>``.

    Deterministic (every send of a study lands in one folder) and always a single safe path
    component, whatever ``uid`` holds; the two forms never collide (a UID has no ``x``).
    """
    if is_uid(uid):
        return uid
    return "x-" + hashlib.sha1(uid.encode("utf-8", "surrogatepass")).hexdigest()


def is_study_key(name: str) -> bool:
    """Whether an archive folder name is one :func:`study_key` makes."""
    return is_uid(name) or bool(HASHED_KEY_RE.fullmatch(name))
