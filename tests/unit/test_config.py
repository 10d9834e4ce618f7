"""Settings: one documented model, and the file, environment and command line that fill it.

Precedence: command line > MAGICKBOX_* environment > magickbox.toml > defaults.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from magickbox import cli
from magickbox.config import (
    CONFIG_FILE,
    SECTIONS,
    Settings,
    config_template,
    load_settings,
    parse_assignment,
    readme_block,
    replace_readme_block,
    settings_markdown,
    setup_view,
    type_name,
)
from magickbox.home import init_home

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MAGICKBOX_* variable of the caller's shell may leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("MAGICKBOX_"):
            monkeypatch.delenv(name)


def write_config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / CONFIG_FILE).write_text(text)


def serve_settings(monkeypatch: pytest.MonkeyPatch, *argv: str) -> Settings:
    """The settings ``magickbox serve ARGV`` would run with (the server is not started)."""
    seen: list[Settings] = []

    def serve_forever(settings: Settings, log_level: str = "INFO") -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(cli, "serve_forever", serve_forever)
    assert cli.main(["serve", *argv]) == 0
    return seen[0]


def uncommented(template: str) -> str:
    """Every ``# name = value`` line of the template, uncommented."""
    return "\n".join(
        line.removeprefix("# ") for line in template.splitlines() if re.match(r"# [a-z_]+ = ", line)
    )


# --- the documentation is complete and generated ----------------------------------------


def test_every_setting_has_a_description() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description and field.description.endswith("."), name


def test_every_setting_is_in_exactly_one_section() -> None:
    listed = [name for names in SECTIONS.values() for name in names]
    assert sorted(listed) == sorted(Settings.model_fields)


def test_the_template_is_all_comments_until_uncommented() -> None:
    assert tomllib.loads(config_template()) == {}


def test_template_round_trip_gives_the_defaults(tmp_path: Path) -> None:
    """Uncommenting every line of the template changes nothing: each shown default is
    the real one, in valid TOML."""
    text = uncommented(config_template())
    assert set(tomllib.loads(text)) == set(Settings.model_fields) - {"home"}
    write_config(tmp_path, text)
    assert load_settings(tmp_path) == Settings(home=tmp_path)


def test_init_writes_the_template_once(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert init_home(settings) is True
    assert (tmp_path / CONFIG_FILE).read_text() == config_template()
    (tmp_path / CONFIG_FILE).write_text("aet = 'MINE'\n")
    assert init_home(settings) is False
    assert (tmp_path / CONFIG_FILE).read_text() == "aet = 'MINE'\n"  # a user's file is kept


def test_readme_settings_block_is_generated() -> None:
    assert readme_block(README.read_text(encoding="utf-8")) == settings_markdown(), (
        "README.md's settings tables differ from magickbox.config.Settings: "
        "run `python -m magickbox.config --readme README.md`"
    )


def test_markdown_lists_every_setting_with_its_variable() -> None:
    text = settings_markdown()
    for name in Settings.model_fields:
        assert f"| `{name}` |" in text
        assert f"`MAGICKBOX_{name.upper()}`" in text


def test_readme_block_is_replaced_between_the_markers() -> None:
    readme = "intro\n<!-- settings:start -->\nold\n<!-- settings:end -->\nrest\n"
    new = replace_readme_block(readme, "new\n")
    assert new == "intro\n<!-- settings:start -->\nnew\n<!-- settings:end -->\nrest\n"
    assert readme_block(new) == "new\n"
    with pytest.raises(ValueError, match="markers"):
        replace_readme_block("no markers", "new\n")


def test_config_entry_point_prints_the_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    from magickbox.config import main

    assert main(["--markdown"]) == 0
    assert capsys.readouterr().out == settings_markdown()


# --- every type through the file, the environment and the command line ------------------

# (setting, as TOML in the file, as an environment variable, as --set VALUE, expected)
TYPE_CASES: dict[str, tuple[str, str, str, str, Any]] = {
    "str": ("aet", '"OTHER"', "OTHER", "OTHER", "OTHER"),
    "int": ("dicom_port", "2000", "2000", "2000", 2000),
    "float": ("quiet_seconds", "7.5", "7.5", "7.5", 7.5),
    "bool": ("rerun_interrupted", "false", "false", "false", False),
    "list[str]": (
        "engine_args",
        '["--runtime", "runc"]',
        '["--runtime", "runc"]',
        '["--runtime", "runc"]',
        ["--runtime", "runc"],
    ),
    "list[dict[str, str]]": (
        "dicom_allowed_callers",
        '[{AETitle = "CT.*", IP = "10.0.0.0/8"}]',
        '[{"AETitle": "CT.*", "IP": "10.0.0.0/8"}]',
        '[{AETitle = "CT.*", IP = "10.0.0.0/8"}]',
        [{"AETitle": "CT.*", "IP": "10.0.0.0/8"}],
    ),
    '"native" | "pynetdicom"': (
        "receiver",
        '"pynetdicom"',
        "pynetdicom",
        "pynetdicom",
        "pynetdicom",
    ),
    '"standard" | "test"': ("password_hash_cost", '"test"', "test", "test", "test"),
}


def test_the_type_cases_cover_every_type_of_setting() -> None:
    """A setting of a new type needs a case below (Path, only the home's, has its own)."""
    types = {type_name(field) for field in Settings.model_fields.values()}
    assert types == set(TYPE_CASES) | {"Path"}


@pytest.mark.parametrize("kind", TYPE_CASES)
def test_each_type_from_the_file(kind: str, tmp_path: Path) -> None:
    name, in_file, _, _, expected = TYPE_CASES[kind]
    write_config(tmp_path, f"{name} = {in_file}\n")
    assert getattr(load_settings(tmp_path), name) == expected


@pytest.mark.parametrize("kind", TYPE_CASES)
def test_each_type_from_the_environment(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, _, in_env, _, expected = TYPE_CASES[kind]
    monkeypatch.setenv(f"MAGICKBOX_{name.upper()}", in_env)
    assert getattr(load_settings(tmp_path), name) == expected


@pytest.mark.parametrize("kind", TYPE_CASES)
def test_each_type_from_the_command_line(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, _, _, on_cli, expected = TYPE_CASES[kind]
    settings = serve_settings(monkeypatch, "--home", str(tmp_path), "--set", f"{name}={on_cli}")
    assert getattr(settings, name) == expected


def test_path_from_the_environment_and_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAGICKBOX_HOME", str(tmp_path / "env"))
    assert load_settings().home == tmp_path / "env"
    assert serve_settings(monkeypatch).home == tmp_path / "env"
    assert serve_settings(monkeypatch, "--home", str(tmp_path / "arg")).home == tmp_path / "arg"


def test_a_list_in_the_file_is_kept_with_the_other_keys(tmp_path: Path) -> None:
    """The bug: list values of magickbox.toml came out as []."""
    write_config(
        tmp_path,
        'engine_args = ["--runtime", "runc", "--cgroup-manager=cgroupfs"]\n'
        'run_args = ["--ulimit", "nofile=20000:20000"]\ncontainer_cpus = 2.5\n',
    )
    s = load_settings(tmp_path)
    assert s.engine_args == ["--runtime", "runc", "--cgroup-manager=cgroupfs"]
    assert s.run_args == ["--ulimit", "nofile=20000:20000"]
    assert s.container_cpus == 2.5


def test_command_line_beats_environment_beats_file_for_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, 'engine_args = ["file"]\nrun_args = ["file"]\n')
    monkeypatch.setenv("MAGICKBOX_ENGINE_ARGS", '["env"]')
    monkeypatch.setenv("MAGICKBOX_RUN_ARGS", '["env"]')
    s = serve_settings(monkeypatch, "--home", str(tmp_path), "--set", 'run_args=["cli"]')
    assert s.engine_args == ["env"]
    assert s.run_args == ["cli"]


def test_a_list_variable_must_be_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAGICKBOX_RUN_ARGS", "--ulimit nofile=1")
    with pytest.raises(ValueError, match="MAGICKBOX_RUN_ARGS must be a JSON list"):
        load_settings(tmp_path)
    monkeypatch.setenv("MAGICKBOX_RUN_ARGS", '"--ulimit"')
    with pytest.raises(ValueError, match="MAGICKBOX_RUN_ARGS must be a JSON list"):
        load_settings(tmp_path)


def test_only_upper_case_variables_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("magickbox_dicom_port", "3000")
    monkeypatch.setenv("MAGICKBOX_web_port", "3001")
    s = load_settings(tmp_path)
    assert (s.dicom_port, s.web_port) == (11113, 2813)


# --- --set NAME=VALUE ------------------------------------------------------------------


def test_set_values_are_toml_else_text() -> None:
    assert parse_assignment("max_pdu=65536") == ("max_pdu", 65536)
    assert parse_assignment("container_memory=8g") == ("container_memory", "8g")
    assert parse_assignment("routing_me=10.0.0.7") == ("routing_me", "10.0.0.7")
    assert parse_assignment('container_memory="8g"') == ("container_memory", "8g")
    assert parse_assignment("aet=123") == ("aet", "123")  # a str setting keeps the text
    assert parse_assignment("routing-retries=3") == ("routing_retries", 3)


@pytest.mark.parametrize("text", ["no_such_setting=1", "aet", "home=/elsewhere"])
def test_set_refuses_unknown_names_and_the_home(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_assignment(text)


def test_set_with_a_bad_name_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        serve_settings(monkeypatch, "--home", str(tmp_path), "--set", "no_such=1")
    assert exit_info.value.code == 2
    assert "known setting name" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("assignment", "named"),
    [
        ("dicom_port=many", "dicom_port"),
        ('dicom_allowed_callers=[{AETitle = "CT[1"}]', "dicom_allowed_callers[0]"),
        ('dicom_allowed_callers=[{IP = "10.0.0.999/8"}]', "dicom_allowed_callers[0]"),
        ("dicom_tls_port=70000", "dicom_tls_port"),
    ],
)
def test_set_values_are_validated(
    assignment: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value is a message naming the setting and exit status 2, not a traceback."""
    assert cli.main(["serve", "--home", str(tmp_path), "--set", assignment]) == 2
    err = capsys.readouterr().err
    assert err.startswith("magickbox: bad settings:") and named in err
    with pytest.raises(ValidationError):
        load_settings(tmp_path, **dict([parse_assignment(assignment)]))


def test_named_flags_beat_set_and_set_beats_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAGICKBOX_WEB_PORT", "3001")
    s = serve_settings(
        monkeypatch,
        "--home",
        str(tmp_path),
        "--set",
        "dicom_port=4000",
        "--dicom-port",
        "5000",
        "--set",
        "web_port=4001",
    )
    assert (s.dicom_port, s.web_port) == (5000, 4001)


# --- precedence and the home -------------------------------------------------------------


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


def test_a_settings_object_is_only_what_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only load_settings reads the environment: Settings(...) in code and tests is exact."""
    monkeypatch.setenv("MAGICKBOX_MAX_ATTEMPTS", "5")
    assert Settings(home=tmp_path).max_attempts == Settings.model_fields["max_attempts"].default
    assert load_settings(tmp_path).max_attempts == 5


# --- /api/v1/setup -----------------------------------------------------------------------


def test_setup_view_has_every_value_default_and_description(tmp_path: Path) -> None:
    s = load_settings(tmp_path, routing_port=104, engine_args=["-v"])
    view = setup_view(s)
    # The keys the page reads, as before.
    assert view["aet"] == "MAGICKBOX" and view["home"] == str(tmp_path)
    assert (view["dicom_port"], view["routing_port"], view["routing_me"]) == (11113, 104, "")
    assert (view["me_host"], view["me_port"]) == ("127.0.0.1", 104)
    assert view["editable"] is False
    by_name = {item["name"]: item for item in view["settings"]}
    assert set(by_name) == set(Settings.model_fields)
    assert by_name["engine_args"]["value"] == ["-v"]
    assert by_name["engine_args"]["default"] == []
    assert by_name["routing_port"]["default"] == 0
    assert by_name["routing_port"]["env"] == "MAGICKBOX_ROUTING_PORT"
    described = Settings.model_fields["routing_port"].description
    assert by_name["routing_port"]["description"] == described


def test_setup_view_hides_the_database_password(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, database_url="postgresql+psycopg://mb:secret@db/mb")
    view = setup_view(s)
    assert "secret" not in repr(view)
    assert view["database_url"] == "postgresql+psycopg://mb:***@db/mb"


def test_readme_roles_block_is_generated() -> None:
    from magickbox.web.rolesdoc import current_block, roles_markdown

    assert current_block(README.read_text(encoding="utf-8")) == roles_markdown(), (
        "run: python -m magickbox.web.rolesdoc --readme README.md"
    )
