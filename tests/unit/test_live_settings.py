"""Live settings: which may change while the box runs, how a change is checked, and how
it is written into magickbox.toml without disturbing the rest of the file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from magickbox.config import (
    LIVE_SETTINGS,
    Settings,
    config_template,
    live_change,
    load_settings,
    write_setting,
)


def test_every_live_setting_is_a_setting() -> None:
    assert set(LIVE_SETTINGS) <= set(Settings.model_fields)


def test_a_change_is_checked_as_the_setting_s_type(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert live_change(s, "quiet_seconds", "1.5") == 1.5
    assert live_change(s, "routing_me", "10.0.0.5") == "10.0.0.5"
    with pytest.raises(ValueError, match="cannot change while the box runs"):
        live_change(s, "web_port", 80)
    with pytest.raises(ValueError, match="at least 1"):
        live_change(s, "concurrency", 0)
    with pytest.raises(ValueError, match="at least 0"):
        live_change(s, "container_cpus", -1)
    with pytest.raises(ValueError):
        live_change(s, "bucket_timeout", "soon")


def test_the_line_naming_a_setting_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "magickbox.toml"
    path.write_text(config_template())
    before = path.read_text().splitlines()
    write_setting(path, "concurrency", 3)
    write_setting(path, "routing_me", 'host "a"')
    after = path.read_text().splitlines()
    assert len(after) == len(before)
    changed = [(b, a) for b, a in zip(before, after, strict=True) if a != b]
    assert changed == [("# concurrency = 1", "concurrency = 3"),
                       ('# routing_me = ""', 'routing_me = "host \\"a\\""')]  # fmt: skip
    write_setting(path, "concurrency", 4)  # an uncommented line is replaced too
    assert tomllib.loads(path.read_text()) == {"concurrency": 4, "routing_me": 'host "a"'}
    loaded = load_settings(tmp_path)
    assert (loaded.concurrency, loaded.routing_me) == (4, 'host "a"')


def test_a_setting_missing_from_the_file_is_added(tmp_path: Path) -> None:
    path = tmp_path / "magickbox.toml"
    path.write_text("# my own notes\naet = \"BOX\"\n")
    write_setting(path, "quiet_seconds", 0.5)
    assert path.read_text() == '# my own notes\naet = "BOX"\nquiet_seconds = 0.5\n'
