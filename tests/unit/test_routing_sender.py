"""The sender's own pieces: reading a file's meta (select.py). The wire codec: test_wire.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from magickbox.routing import select
from magickbox.testing.dicomgen import write_study


@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.5"]
)
def test_the_quick_file_meta_reader_agrees_with_pydicom(tmp_path: Path, syntax: str) -> None:
    study = write_study(tmp_path / "s", n_images=2, rows=16, cols=16, transfer_syntax=syntax)
    (tmp_path / "s" / "notes.txt").write_text("not DICOM")
    found = select.dicom_files(tmp_path / "s")
    assert sorted(f.sop_instance for f in found) == sorted(study.sop_uids)
    for item in found:
        assert select._quick_meta(item.path) == select._pydicom_meta(item.path)
        assert item.syntax == syntax
