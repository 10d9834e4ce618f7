"""Settings precedence: overrides > MAGICKBOX_* environment > magickbox.toml > defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from magickbox.config import CONFIG_FILE, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MAGICKBOX_* variable of the caller's shell may leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("MAGICKBOX_"):
            monkeypatch.delenv(name)


def write_config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / CONFIG_FILE).write_text(text)


def test_defaults_without_a_config_file(tmp_path: Path) -> None:
    s = load_settings(tmp_path)
    assert s.home == tmp_path
    assert (s.aet, s.host, s.dicom_port, s.web_port) == ("MAGICKBOX", "0.0.0.0", 11113, 2813)
    assert s.quiet_seconds == 3.0
    assert s.rerun_interrupted is True
    assert s.max_attempts == 2


def test_db_url_defaults_to_sqlite_in_the_home(tmp_path: Path) -> None:
    s = load_settings(tmp_path)
    assert s.db_url == f"sqlite:///{tmp_path / 'magickbox.db'}"


def test_folders_live_in_the_home(tmp_path: Path) -> None:
    s = load_settings(tmp_path)
    assert s.streams == tmp_path / "streams"
    assert s.scratch == tmp_path / "scratch"
    assert s.archive == tmp_path / "scratch" / "archive"
    assert s.incoming == tmp_path / "scratch" / ".incoming"
    assert s.memory == tmp_path / "memory"


def test_file_beats_defaults(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        'aet = "FILEAET"\ndicom_port = 2000\nquiet_seconds = 7.5\nrerun_interrupted = false\n'
        'database_url = "sqlite:////elsewhere/jobs.db"\n',
    )
    s = load_settings(tmp_path)
    assert s.aet == "FILEAET"
    assert s.dicom_port == 2000
    assert s.quiet_seconds == 7.5
    assert s.rerun_interrupted is False
    assert s.db_url == "sqlite:////elsewhere/jobs.db"
    assert s.web_port == 2813  # not in the file: still the default


def test_file_values_that_look_false_are_kept(tmp_path: Path) -> None:
    write_config(tmp_path, "max_attempts = 0\nrerun_interrupted = false\nconcurrency = 3\n")
    s = load_settings(tmp_path)
    assert s.max_attempts == 0
    assert s.rerun_interrupted is False
    assert s.concurrency == 3


def test_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, 'dicom_port = 2000\nweb_port = 2001\naet = "FILEAET"\n')
    monkeypatch.setenv("MAGICKBOX_DICOM_PORT", "3000")
    monkeypatch.setenv("MAGICKBOX_QUIET_SECONDS", "0.5")
    s = load_settings(tmp_path)
    assert s.dicom_port == 3000
    assert s.quiet_seconds == 0.5
    # Keys the environment does not set still come from the file.
    assert s.web_port == 2001
    assert s.aet == "FILEAET"


def test_overrides_beat_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, 'dicom_port = 2000\nweb_port = 2001\naet = "FILEAET"\n')
    monkeypatch.setenv("MAGICKBOX_DICOM_PORT", "3000")
    monkeypatch.setenv("MAGICKBOX_WEB_PORT", "3001")
    s = load_settings(tmp_path, dicom_port=4000, aet="FLAGAET")
    assert s.dicom_port == 4000  # flag > env > file
    assert s.aet == "FLAGAET"  # flag > file
    assert s.web_port == 3001  # env > file, no flag


def test_none_override_means_not_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """argparse hands in None for flags that were not used: they must not win."""
    write_config(tmp_path, "web_port = 2001\n")
    monkeypatch.setenv("MAGICKBOX_DICOM_PORT", "3000")
    s = load_settings(tmp_path, dicom_port=None, web_port=None, aet=None)
    assert s.dicom_port == 3000
    assert s.web_port == 2001
    assert s.aet == "MAGICKBOX"


def test_overrides_are_validated_and_coerced(tmp_path: Path) -> None:
    s = load_settings(tmp_path, quiet_seconds="1.25", dicom_port="5000")
    assert s.quiet_seconds == 1.25
    assert s.dicom_port == 5000
    with pytest.raises(ValidationError):
        load_settings(tmp_path, dicom_port="not a port")


def test_home_from_environment_and_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "envhome"
    write_config(home, "dicom_port = 2222\n")
    monkeypatch.setenv("MAGICKBOX_HOME", str(home))
    s = load_settings()
    assert s.home == home
    assert s.dicom_port == 2222
    assert s.db_url == f"sqlite:///{home / 'magickbox.db'}"


def test_home_argument_beats_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_home, arg_home = tmp_path / "env", tmp_path / "arg"
    write_config(env_home, "dicom_port = 1111\n")
    write_config(arg_home, "dicom_port = 2222\n")
    monkeypatch.setenv("MAGICKBOX_HOME", str(env_home))
    s = load_settings(arg_home)
    assert s.home == arg_home
    assert s.dicom_port == 2222  # the file of the chosen home, not of the environment's


def test_file_cannot_move_the_home_and_unknown_keys_are_ignored(tmp_path: Path) -> None:
    write_config(tmp_path, 'home = "/somewhere/else"\nno_such_setting = 1\nweb_port = 9\n')
    s = load_settings(tmp_path)
    assert s.home == tmp_path
    assert s.web_port == 9
    assert not hasattr(s, "no_such_setting")


def test_settings_alone_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAGICKBOX_MAX_ATTEMPTS", "5")
    assert Settings().max_attempts == 5
