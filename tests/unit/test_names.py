"""Names taken from outside never become paths; any StudyInstanceUID gets a safe archive key."""

from __future__ import annotations

import hashlib
import string

import pytest

from magickbox.errors import Invalid
from magickbox.names import (
    BadName,
    check_scratchdir,
    check_study_uid,
    check_uid,
    is_study_key,
    study_key,
)

HEX64 = hashlib.sha256(b"a study").hexdigest()  # 64 hex characters, as seen in the wild


@pytest.mark.parametrize(
    "name",
    [
        "",
        "tmp.",
        "tmp.abc",  # too short to be one of ours
        "tmp." + "a" * 33,  # too long
        "../tmp.abcdef12",
        "tmp.abcdef12/..",
        "tmp.abcdef12/../../etc",
        "..",
        ".",
        "/tmp.abcdef12",
        "/etc/passwd",
        "tmp.abc/def12",
        "tmp.abc.def12",
        "tmp.abcdef12\n",
        "tmp.abcdef12\0",
        "TMP.abcdef12",
        "xtmp.abcdef12",
        "tmp.abc def12",
        "archive",
        ".incoming",
    ],
)
def test_check_scratchdir_rejects(name: str) -> None:
    with pytest.raises(BadName):
        check_scratchdir(name)


def test_check_scratchdir_rejects_none() -> None:
    with pytest.raises(BadName):
        check_scratchdir(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["tmp.abcdef", "tmp.AbC123_x", "tmp." + "z" * 32])
def test_check_scratchdir_accepts_our_names(name: str) -> None:
    assert check_scratchdir(name) == name


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "..",
        "1..2",
        "1.2..",
        "../1.2.3",
        "1.2/../3",
        "1.2.3/4",
        "/1.2.3",
        "/etc",
        ".1.2.3",
        "1.2.abc",
        "1.2.3a",
        "abc",
        "1.2.3 ",
        " 1.2.3",
        "1.2.3\n",
        "1.2.3\0",
        "1" * 65,
    ],
)
def test_check_uid_rejects(uid: str) -> None:
    with pytest.raises(BadName):
        check_uid(uid)


@pytest.mark.parametrize("uid", ["1", "1.2.840.10008.1.2", "2.25.1234567890", "1" * 64])
def test_check_uid_accepts_uids(uid: str) -> None:
    assert check_uid(uid) == uid


def test_bad_name_is_a_400_for_every_front() -> None:
    assert issubclass(BadName, Invalid) and BadName("x").http_status == 400


# ---------------------------------------------------------------- study UIDs and their keys


@pytest.mark.parametrize("uid", ["1", "1.2.840.10008.1.2", "2.25.1234567890", "1" * 64])
def test_a_proper_uid_is_its_own_key(uid: str) -> None:
    assert check_study_uid(uid) == uid
    assert study_key(uid) == uid
    assert is_study_key(uid)


@pytest.mark.parametrize(
    "uid",
    [
        HEX64,
        HEX64.upper(),
        "1..2",
        "...",
        "..x",
        "1.2.3 with spaces",
        "x-" + "0" * 40,  # looks like a key: still hashed, so it cannot pose as another study
        "a" * 64,
        "~root",
        "$(reboot)",
    ],
)
def test_any_other_value_is_kept_and_mapped_to_a_safe_key(uid: str) -> None:
    assert check_study_uid(uid) == uid
    key = study_key(uid)
    assert key == "x-" + hashlib.sha1(uid.encode()).hexdigest()
    assert is_study_key(key)
    assert set(key) <= set(string.ascii_lowercase + string.digits + "-")
    assert key not in (".", "..") and len(key) == 42


def test_keys_are_deterministic_and_distinct() -> None:
    assert study_key(HEX64) == study_key(HEX64)
    values = [HEX64, HEX64.upper(), HEX64[:-1], "..", "1..2", "1" * 65]
    assert len({study_key(v) for v in values}) == len(values)
    assert study_key(HEX64) != HEX64


@pytest.mark.parametrize(
    "uid",
    [
        "",
        ".",
        "..",
        "../../etc",
        "1.2/../3",
        "/etc/passwd",
        "1.2.3/",
        "C:\\Windows",
        "..\\..\\x",
        "1.2.3\n",
        "1.2.3\r\nforged log line",
        "1.2\x003",
        "1.2.3\x1b[31m",
        "\t1.2.3",
        "1.2.3\x7f",
        "1.2.3\ufffd",  # a non-ASCII byte, already lost when decoded: the value cannot be kept
        "ü",
        "1" * 65,  # longer than a UI value holds
        "a" * 65,
    ],
)
def test_values_unsafe_as_folder_names_or_not_keepable_are_refused(uid: str) -> None:
    with pytest.raises(BadName):
        check_study_uid(uid)


def test_study_key_is_safe_even_for_values_check_refuses() -> None:
    for uid in ["", "\0", "a/\n/b", "\ud800", "é" * 500]:
        key = study_key(uid)
        assert is_study_key(key) and "/" not in key and "\0" not in key


@pytest.mark.parametrize(
    "name", ["", ".", "..", "x-", "x-" + "0" * 39, "x-" + "A" * 40, "x-" + "0" * 41, "tmp.abcdef",
             "1.2/3", "archive", "x-" + "0" * 40 + "/.."]
)  # fmt: skip
def test_is_study_key_knows_only_the_keys_it_makes(name: str) -> None:
    assert not is_study_key(name)
