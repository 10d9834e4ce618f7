"""The box's own AE title, as a PACS admin meets it: the echo test is green, and a study
sent to that title fails in dcmtk's storescu (exit code and message), so nobody takes a
silent loss for a success. Nothing of it is kept, no job is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from magickbox.testing.dicomgen import write_study
from magickbox.testing.server import BoxServer
from tests.e2e.peers import api_jobs, echoscu

pytestmark = pytest.mark.e2e


def test_echo_to_the_own_title_is_green_and_storescu_to_it_fails_loudly(
    box: BoxServer, tmp_path: Path
) -> None:
    own = "MAGICKBOX"
    assert echoscu(box, own).returncode == 0  # the admin's echo test
    study = write_study(tmp_path / "s", n_images=3, rows=16, cols=16)
    sent = box.storescu(study.paths[0].parent, own, "PACS1")
    assert sent.returncode != 0, sent.stderr
    said = sent.stdout + sent.stderr
    assert "Association Rejected" in said and "Called AE Title Not Recognized" in said, said
    assert api_jobs(box) == []
    assert not any((box.home / "scratch" / ".incoming").rglob("*"))  # nothing was kept
    # The same study to a bucket's title goes through: the refusal was about the title.
    assert box.storescu(study.paths[0].parent, "ProcBucket", "PACS1").returncode == 0
