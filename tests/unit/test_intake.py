"""What intake makes of a walked data set: its arrival key, file name and view header."""

from __future__ import annotations

from pathlib import Path

import pydicom

from magickbox.events import EventBus
from magickbox.receive.intake import SOP_UID_TAG, Intake, Peer
from magickbox.receive.structure import walk_stored_file
from magickbox.testing.dicomgen import write_study

PEER = Peer(calling="SCANNER", called="Keep", address="10.0.0.7")
EXPLICIT = "1.2.840.10008.1.2.1"


def test_the_view_header_leaves_the_sop_instance_uid_out_and_is_alike_across_a_series(
    tmp_path: Path,
) -> None:
    """The SOP Instance UID names the file; the header a worker compares with its series'
    last one holds only series elements, so the files of one series give equal headers."""
    study = write_study(tmp_path / "s", n_images=2, rows=8, cols=8)
    intake = Intake("MB", None, EventBus(), views=True)  # type: ignore[arg-type]
    checked = [
        intake.examine(walk_stored_file(p, EXPLICIT, intake.capture), "1.2.3", PEER, 1)
        for p in study.paths
    ]
    for path, one in zip(study.paths, checked, strict=True):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert one.sop_uid == ds.SOPInstanceUID  # from the data set, not the request's
        assert one.key.study_uid == ds.StudyInstanceUID
        assert one.header is not None and SOP_UID_TAG not in one.header.values
        assert SOP_UID_TAG not in one.header.vrs
        assert one.header.series_uid == ds.SeriesInstanceUID
    first, second = (c.header for c in checked)
    assert first is not None and second is not None
    assert first.values == second.values and first.vrs == second.vrs
