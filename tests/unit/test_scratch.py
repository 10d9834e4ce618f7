"""The scratch folder: job folders, and an archive that never rewrites old jobs' bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from magickbox.jobs import scratch
from magickbox.jobs.scratch import link_into_archive
from magickbox.names import check_scratchdir


def test_check_scratchdir_accepts_what_new_job_dir_makes(tmp_path: Path) -> None:
    for _ in range(20):
        job_dir = scratch.new_job_dir(tmp_path)
        assert job_dir.parent == tmp_path
        assert check_scratchdir(job_dir.name) == job_dir.name


def make_input(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def test_link_into_archive_hard_links(tmp_path: Path) -> None:
    inp = make_input(tmp_path / "job1" / "INPUT", {"a.dcm": b"A1", "b.dcm": b"B1"})
    study = tmp_path / "archive" / "1.2.3"
    link_into_archive(inp, study)
    assert sorted(p.name for p in study.iterdir()) == ["a.dcm", "b.dcm"]
    assert os.path.samefile(study / "a.dcm", inp / "a.dcm")  # a link, not a copy


def test_a_later_send_replaces_the_archive_entry_but_not_the_old_job(tmp_path: Path) -> None:
    study = tmp_path / "archive" / "1.2.3"
    job1 = make_input(tmp_path / "job1" / "INPUT", {"a.dcm": b"old bytes", "keep.dcm": b"K"})
    link_into_archive(job1, study)
    job2 = make_input(tmp_path / "job2" / "INPUT", {"a.dcm": b"new bytes"})
    link_into_archive(job2, study)

    assert (study / "a.dcm").read_bytes() == b"new bytes"
    assert os.path.samefile(study / "a.dcm", job2 / "a.dcm")
    # The earlier job's hard link still has the bytes that job was given.
    assert (job1 / "a.dcm").read_bytes() == b"old bytes"
    assert not os.path.samefile(study / "a.dcm", job1 / "a.dcm")
    assert (study / "keep.dcm").read_bytes() == b"K"  # untouched by the later send
    assert sorted(p.name for p in study.iterdir()) == ["a.dcm", "keep.dcm"]  # no temp files


def test_link_into_archive_survives_a_stale_temp_link(tmp_path: Path) -> None:
    """A crash between link and rename leaves ``.<name>.lnk``; the next send must not fail."""
    study = tmp_path / "archive" / "1.2.3"
    study.mkdir(parents=True)
    stale = study / ".a.dcm.lnk"
    stale.write_bytes(b"stale")
    inp = make_input(tmp_path / "job" / "INPUT", {"a.dcm": b"fresh"})
    link_into_archive(inp, study)
    assert (study / "a.dcm").read_bytes() == b"fresh"
    assert not stale.exists()


def test_link_into_archive_takes_files_from_subfolders(tmp_path: Path) -> None:
    inp = make_input(tmp_path / "job" / "INPUT", {"top.dcm": b"T"})
    (inp / "series1").mkdir()
    (inp / "series1" / "deep.dcm").write_bytes(b"D")
    study = tmp_path / "archive" / "9.9"
    link_into_archive(inp, study)
    assert (study / "deep.dcm").read_bytes() == b"D"
    assert (study / "top.dcm").read_bytes() == b"T"


def test_count_files_and_remove_tree(tmp_path: Path) -> None:
    inp = make_input(tmp_path / "job" / "INPUT", {"a": b"", "b": b""})
    (inp / "sub").mkdir()
    (inp / "sub" / "c").write_bytes(b"")
    assert scratch.count_files(inp) == 3

    outside = make_input(tmp_path / "outside", {"precious": b"P"})
    (tmp_path / "job" / "escape").symlink_to(outside, target_is_directory=True)
    scratch.remove_tree(tmp_path / "job")
    assert not (tmp_path / "job").exists()
    assert (outside / "precious").read_bytes() == b"P"  # a symlink is not followed


def test_remove_tree_of_a_symlink_removes_only_the_link(tmp_path: Path) -> None:
    outside = make_input(tmp_path / "outside", {"precious": b"P"})
    link = tmp_path / "tmp.abcdef12"
    link.symlink_to(outside, target_is_directory=True)
    scratch.remove_tree(link)
    assert not link.is_symlink()
    assert (outside / "precious").read_bytes() == b"P"


def test_write_json_atomic_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "info.json"
    scratch.write_json_atomic(target, {"a": 1})
    scratch.write_json_atomic(target, {"a": 2})
    assert target.read_text().replace(" ", "").replace("\n", "") == '{"a":2}'
    assert [p.name for p in tmp_path.iterdir()] == ["info.json"]


def test_a_job_made_from_the_archive_goes_back_without_leftovers(tmp_path: Path) -> None:
    archive = tmp_path / "archive" / "1.2.3"
    archive.mkdir(parents=True)
    (archive / "a.dcm").write_bytes(b"A")
    (archive / ".b.dcm.lnk").write_bytes(b"half")  # a temporary name: not a study file
    (archive / "link.dcm").symlink_to(tmp_path)  # never taken
    staged = tmp_path / "staging"
    assert scratch.link_from_archive(archive, staged) == 1
    assert [p.name for p in staged.iterdir()] == ["a.dcm"]
    assert (staged / "a.dcm").stat().st_ino == (archive / "a.dcm").stat().st_ino
    link_into_archive(staged, archive)  # the new job's INPUT is archived again
    assert sorted(p.name for p in archive.iterdir()) == [".b.dcm.lnk", "a.dcm", "link.dcm"]


@pytest.mark.parametrize("way", ["renameat2", "link+unlink"])
def test_place_file_never_replaces_another_data_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    if way == "renameat2":
        assert scratch._renameat2 is not None  # Linux with glibc 2.28+: the usual path
    else:  # an older libc: the hard-link fallback keeps the same promise
        monkeypatch.setattr(scratch, "_renameat2", None)
    folder = tmp_path / "arrival"
    folder.mkdir()

    def incoming(data: bytes) -> Path:
        src = tmp_path / f"{len(list(tmp_path.iterdir()))}.part"
        src.write_bytes(data)
        return src

    first, retry, other = incoming(b"one"), incoming(b"one"), incoming(b"two")
    assert scratch.place_file(first, folder, "1.2.3.dcm") == "1.2.3.dcm"
    assert scratch.place_file(retry, folder, "1.2.3.dcm") == "1.2.3.dcm"  # the same bytes
    assert scratch.place_file(other, folder, "1.2.3.dcm") == "1.2.3-2.dcm"  # kept apart
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {
        "1.2.3.dcm": b"one",
        "1.2.3-2.dcm": b"two",
    }
    assert not first.exists() and not retry.exists() and not other.exists()


def test_place_file_names_an_unnamed_file_and_never_replaces_another(tmp_path: Path) -> None:
    """A data set in an unnamed file (O_TMPFILE) gets its one name in its arrival, under
    the same rule: the same bytes again take the old one's place, others are kept apart."""
    folder = tmp_path / "arrival"
    folder.mkdir()
    fds = []

    def unnamed(data: bytes) -> str:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_TMPFILE, 0o600)
        os.write(fd, data)
        fds.append(fd)
        return f"/proc/{os.getpid()}/fd/{fd}"

    first, retry, other = unnamed(b"one"), unnamed(b"one"), unnamed(b"two")
    assert scratch.is_unnamed(first) and not scratch.is_unnamed(folder)
    assert scratch.place_file(first, folder, "1.2.3.dcm") == "1.2.3.dcm"
    assert scratch.place_file(retry, folder, "1.2.3.dcm") == "1.2.3.dcm"  # the same bytes
    assert scratch.place_file(other, folder, "1.2.3.dcm") == "1.2.3-2.dcm"  # kept apart
    for fd in fds:
        os.close(fd)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {
        "1.2.3.dcm": b"one",
        "1.2.3-2.dcm": b"two",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrival"]
