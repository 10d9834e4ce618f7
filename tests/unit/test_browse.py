"""What the web page looks into: a job's files, the archive index and its cache, disk use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from magickbox.jobs import browse
from magickbox.names import BadName
from magickbox.testing.dicomgen import write_study


def test_job_files_lists_regular_files_only(tmp_path: Path) -> None:
    out = tmp_path / "job" / "OUTPUT"
    (out / "a" / "b").mkdir(parents=True)
    (out / "a" / "b" / "deep.txt").write_text("deep")
    (out / "top.txt").write_text("top!")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_text("x")
    os.symlink(outside, out / "dirlink")
    os.symlink(outside / "x", out / "filelink")
    listing = browse.job_files(tmp_path / "job", "OUTPUT")
    assert [(f["name"], f["size"]) for f in listing["files"]] == [
        ("top.txt", 4),
        ("a/b/deep.txt", 4),
    ]
    assert listing["total"] == 2


def test_job_files_caps_the_list_but_counts_all(tmp_path: Path) -> None:
    (tmp_path / "INPUT").mkdir()
    for i in range(5):
        (tmp_path / "INPUT" / f"f{i}").write_text("")
    listing = browse.job_files(tmp_path, "INPUT", limit=2)
    assert listing["total"] == 5 and len(listing["files"]) == 2


@pytest.mark.parametrize("part", ["..", "output", "OUTPUT/x", "INPUT/../.."])
def test_job_files_names_the_part_exactly(tmp_path: Path, part: str) -> None:
    with pytest.raises(BadName):
        browse.job_files(tmp_path, part)


def test_job_files_of_a_linked_part_is_empty(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f").write_text("f")
    (tmp_path / "job").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "job" / "OUTPUT")
    assert browse.job_files(tmp_path / "job", "OUTPUT")["files"] == []


def test_tree_size_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1000)
    os.link(tmp_path / "f", tmp_path / "g")
    os.symlink("/etc/passwd", tmp_path / "link")
    assert browse.tree_size(tmp_path) == 1000


def test_archive_index_reads_each_study_once_per_change(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    archive = tmp_path / "archive"
    first = write_study(archive / "x", n_images=2, rows=8, cols=8, patient_id="P1")
    (archive / "x").rename(archive / first.study_uid)
    second = write_study(archive / "y", n_images=1, rows=8, cols=8, patient_id="P2")
    (archive / "y").rename(archive / second.study_uid)
    (archive / "not-a-uid").mkdir()
    reads: list[Path] = []
    real = browse.ArchiveIndex._read
    monkeypatch.setattr(
        browse.ArchiveIndex, "_read", staticmethod(lambda f: reads.append(f) or real(f))
    )
    index = browse.ArchiveIndex(archive)
    page = index.page(10, 0)
    assert page["total"] == 2
    facts = {s["StudyInstanceUID"]: s for s in page["studies"]}
    assert facts[first.study_uid]["PatientID"] == "P1" and facts[first.study_uid]["files"] == 2
    assert facts[second.study_uid]["PatientID"] == "P2"
    assert len(reads) == 2
    index.page(10, 0)
    assert len(reads) == 2  # nothing changed: nothing read
    one = next((archive / first.study_uid).iterdir())
    (archive / second.study_uid / "new.dcm").write_bytes(one.read_bytes())
    os.utime(archive / second.study_uid, (1e9, 2e9))  # a change the mtime shows, surely
    again = {s["StudyInstanceUID"]: s for s in index.page(10, 0)["studies"]}
    assert len(reads) == 3 and again[second.study_uid]["files"] == 2


def test_archive_index_pages_only_read_what_they_show(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    archive = tmp_path / "archive"
    for i in range(3):
        (archive / f"1.2.{i}").mkdir(parents=True)
    reads: list[Path] = []
    monkeypatch.setattr(browse.ArchiveIndex, "_read", staticmethod(lambda f: reads.append(f) or {}))
    page = browse.ArchiveIndex(archive).page(1, 1)
    assert page["total"] == 3 and len(page["studies"]) == 1 and len(reads) == 1


def test_archive_of_non_dicom_files_has_empty_tags(tmp_path: Path) -> None:
    (tmp_path / "1.2.3").mkdir()
    (tmp_path / "1.2.3" / "junk").write_text("not DICOM")
    (study,) = browse.ArchiveIndex(tmp_path).page(10, 0)["studies"]
    assert study["PatientID"] == "" and study["files"] == 1
