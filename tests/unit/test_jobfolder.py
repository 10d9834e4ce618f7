"""The job folder: the layout users' scripts know, the box's log lines, the verdict, MB_*."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from magickbox.jobfolder import LOG_MARK, JobFolder, RunFacts


@pytest.fixture
def folder(tmp_path: Path) -> JobFolder:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "a.dcm").write_bytes(b"A")
    facts = {"bucket": "ProcBucket", "received_at": 1.5}
    info = {"CallerIP": "10.0.0.9", "AETitleCalled": "ProcBucket"}
    return JobFolder.create(scratch, incoming, facts, info)


def test_create_lays_out_the_originals_folder(folder: JobFolder, tmp_path: Path) -> None:
    assert folder.name.startswith("tmp.")
    assert sorted(p.name for p in folder.path.iterdir()) == [
        ".mb-job.json", "INPUT", "OUTPUT", "info.json", "processing.log"
    ]  # fmt: skip
    assert (folder.input / "a.dcm").read_bytes() == b"A"
    assert not (tmp_path / "incoming").exists()  # moved, not copied
    assert json.loads(folder.info_json.read_text())["CallerIP"] == "10.0.0.9"
    assert folder.read_facts() == {"bucket": "ProcBucket", "received_at": 1.5}
    assert folder.is_complete() and folder.count_input() == 1


def test_log_lines_are_marked_and_read_from_an_offset(folder: JobFolder) -> None:
    folder.log.write_text("bucket says hi\n")
    folder.log_line("finished: done")
    text = folder.log.read_text().splitlines()
    assert text[0] == "bucket says hi"
    assert text[1].startswith(LOG_MARK) and text[1].endswith(": finished: done")
    assert folder.read_log(len("bucket says hi\n")).decode().startswith(LOG_MARK)
    assert folder.log_size() == folder.log.stat().st_size
    assert "finished: done" in (folder.log_tail(20) or "")


def test_a_link_planted_as_the_log_is_never_read(folder: JobFolder, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("password")
    folder.log.unlink()
    folder.log.symlink_to(secret)
    assert not folder.has_log()
    assert folder.read_log() == b""


def test_the_verdict_is_taken_from_proc_json_or_output(folder: JobFolder) -> None:
    assert folder.take_success() is None
    (folder.output / "proc.json").write_text('[{"success": "ok"}]')
    assert folder.take_success() == "ok"
    assert folder.proc_json.is_file() and not (folder.output / "proc.json").exists()
    folder.proc_json.write_text('{"no": "verdict"}')
    assert folder.take_success() is None
    folder.proc_json.write_text("not json")
    assert folder.take_success() is None


def test_a_fresh_output_for_a_rerun(folder: JobFolder) -> None:
    (folder.output / "old.dcm").write_bytes(b"x")
    folder.proc_json.write_text('{"success": "failed"}')
    folder.fresh_output("running again")
    assert list(folder.output.iterdir()) == []
    assert not folder.proc_json.exists()
    assert folder.log.read_text().rstrip().endswith("running again")


def test_the_mb_environment_is_named_once(folder: JobFolder, tmp_path: Path) -> None:
    facts = RunFacts(folder.name, "ProcBucket", "ip44", "10.0.0.9", "1.2.3", "sub-001")
    env = folder.environment(facts, tmp_path / "memory", tmp_path)
    assert env == {
        "MB_SCRATCHDIR": folder.name,
        "MB_JOB_DIR": str(folder.path),
        "MB_AETITLE_CALLED": "ProcBucket",
        "MB_AETITLE_CALLER": "ip44",
        "MB_CALLER_IP": "10.0.0.9",
        "MB_STUDY_UID": "1.2.3",
        "MB_JOBNAME": "sub-001",
        "MB_MEMORY": str(tmp_path / "memory"),
        "MB_PROC_JSON": str(folder.proc_json),
        "MB_MEASURES": str(folder.measures_json),
        "MB_HOME": str(tmp_path),
        "MB_PYTHON": sys.executable,
    }
    elsewhere = folder.environment(facts, tmp_path, tmp_path, proc_json=tmp_path / "p.json",
                                   measures_json=tmp_path / "m.json")  # fmt: skip
    assert elsewhere["MB_PROC_JSON"] == str(tmp_path / "p.json")
    assert elsewhere["MB_MEASURES"] == str(tmp_path / "m.json")


def test_measures_come_from_mb_measures_first_then_output(folder: JobFolder) -> None:
    assert folder.read_measures(100) is None
    (folder.output / "measures.json").write_bytes(b'{"a": 1}')
    assert folder.read_measures(100) == b'{"a": 1}'
    folder.measures_json.write_bytes(b'{"b": 2}')
    assert folder.read_measures(100) == b'{"b": 2}'
    assert folder.read_measures(3) == b'{"b"'  # at most max_bytes + 1: the caller sees "too big"
    folder.fresh_output("again")
    assert not folder.measures_json.exists()


def test_a_measures_link_is_never_followed(folder: JobFolder, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "x"}')
    (folder.output / "measures.json").symlink_to(secret)
    with pytest.raises(OSError, match="not a regular file"):
        folder.read_measures(100)


def test_only_output_and_input_are_parts(folder: JobFolder) -> None:
    assert folder.part("OUTPUT") == folder.output
    with pytest.raises(ValueError):
        folder.part("../etc")
