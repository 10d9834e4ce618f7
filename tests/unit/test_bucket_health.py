"""buckets/health.py: every bucket folder with what is wrong with it, and the CLI's remove
of a bucket whose info.json is broken."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from magickbox.buckets import cli, health
from magickbox.config import Settings, load_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings(tmp_path / "home", announce=False)
    s.streams.mkdir(parents=True)
    return s


def bucket(settings: Settings, folder: str, info: object, work: str | None = "#!/bin/sh\n",
           mode: int = 0o755) -> Path:  # fmt: skip
    path = settings.streams / folder
    path.mkdir()
    text = info if isinstance(info, str) else json.dumps(info)
    (path / "info.json").write_text(text)
    if work is not None:
        (path / "work.sh").write_text(work)
        (path / "work.sh").chmod(mode)
    return path


def problems(settings: Settings) -> dict[str, list[str]]:
    return {h.folder.name: h.problems for h in health.survey(settings)}


def test_a_good_bucket_is_ready(settings: Settings) -> None:
    bucket(settings, "bucketA", {"AETitle": "A", "enabled": 1})
    (found,) = health.survey(settings)
    assert found.ready and found.problems == [] and found.aetitle == "A"


@pytest.mark.parametrize(
    ("info", "work", "mode", "expected"),
    [
        ({"AETitle": "A", "enabled": 1}, "#!/bin/sh\n", 0o644, "work.sh is not executable"),
        ({"AETitle": "A", "enabled": 1}, "echo hi\n", 0o755, "work.sh has no #! line"),
        ({"AETitle": "A", "enabled": 1}, None, 0, "work.sh is missing"),
        ({"AETitle": "A", "enabled": 0}, "#!/bin/sh\n", 0o755, "disabled"),
        ("{broken", "#!/bin/sh\n", 0o755, "unreadable info.json"),
        ("[1]", "#!/bin/sh\n", 0o755, "unreadable info.json: not a JSON object"),
        ({"enabled": 1}, "#!/bin/sh\n", 0o755, "info.json has no AETitle"),
        ({"AETitle": "A", "enabled": 1, "image": "-x"}, None, 0, 'info.json: "image" must be'),
    ],
)
def test_each_problem_is_named(
    settings: Settings, info: object, work: str | None, mode: int, expected: str
) -> None:
    bucket(settings, "bucketA", info, work, mode)
    (found,) = health.survey(settings)
    assert not found.ready
    assert any(p.startswith(expected) for p in found.problems), found.problems


def test_no_exec_bit_and_no_hashbang_are_both_said(settings: Settings) -> None:
    bucket(settings, "bucketA", {"AETitle": "A", "enabled": 1}, "echo hi\n", 0o644)
    assert len(problems(settings)["bucketA"]) == 2


def test_a_second_folder_with_a_taken_ae_title_is_named(settings: Settings) -> None:
    bucket(settings, "bucketA", {"AETitle": "A", "enabled": 1})
    bucket(settings, "bucketB", {"AETitle": "A", "enabled": 1})
    found = problems(settings)
    assert found["bucketA"] == []
    assert found["bucketB"] == ["AE title 'A' is taken by bucketA: ignored"]


def test_a_broken_bucket_is_named_after_its_folder(settings: Settings) -> None:
    bucket(settings, "bucketJunk", "nope")
    (found,) = health.survey(settings)
    view = health.view(found)
    assert (view["aetitle"], view["folder"], view["enabled"]) == ("Junk", "bucketJunk", False)


@pytest.mark.parametrize("name", ["Junk", "bucketJunk"])
def test_remove_takes_a_broken_bucket_by_its_folder(settings: Settings, name: str) -> None:
    folder = bucket(settings, "bucketJunk", "nope")
    args = argparse.Namespace(bucket_command="remove", name=name)
    assert cli.main(args, settings) == 0
    assert not folder.exists()


def test_remove_of_nothing_says_so(settings: Settings, capsys: pytest.CaptureFixture) -> None:
    args = argparse.Namespace(bucket_command="remove", name="../../etc")
    assert cli.main(args, settings) == cli.EXIT_MISSING
    assert "no bucket" in capsys.readouterr().err
