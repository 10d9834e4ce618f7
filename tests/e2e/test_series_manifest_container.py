"""$MB_SERIES_JSON in a container bucket (podman, the busybox image of test_containers):
the manifest is mounted read-only at /series.json and names what storescu sent."""

from __future__ import annotations

import json
from pathlib import Path

from pydicom import dcmread

from magickbox.testing.dicomgen import write_study
from tests.e2e.peers import job_dir
from tests.e2e.test_containers import image, pytestmark, start  # noqa: F401 (fixture, marks)

# The manifest as the container sees it, and whether the container could change it.
COPY = 'cp "$MB_SERIES_JSON" /output/series.json; echo "$MB_SERIES_JSON" > /output/where.txt; ' \
       'if echo x >> "$MB_SERIES_JSON" 2>/dev/null; then echo writable; else echo readonly; fi ' \
       '> /output/mount.txt'  # fmt: skip


def test_a_container_bucket_reads_the_series_manifest(
    box_factory, tmp_path: Path, image: str  # noqa: F811
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    folder = home / "streams" / "bucketSeries"
    folder.mkdir(parents=True)
    info = {"name": "Series", "AETitle": "Series", "enabled": 1, "image": image,
            "command": ["/bin/sh", "-c", COPY]}  # fmt: skip
    (folder / "info.json").write_text(json.dumps(info))
    box = start(box_factory, home)
    study = write_study(tmp_path / "study", n_images=4, series=2, rows=16, cols=16)
    sent: dict[str, set[str]] = {}
    for path in study.paths:
        sent.setdefault(str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID),
                        set()).add(path.name)  # fmt: skip
    res = box.storescu(study.paths[0].parent, "Series", "SERIESCU")
    assert res.returncode == 0, res.stderr
    (job,) = box.wait_jobs(1)
    out = job_dir(box, job["scratchdir"]) / "OUTPUT"
    assert (out / "where.txt").read_text().strip() == "/series.json"
    assert (out / "mount.txt").read_text().strip() == "readonly"
    manifest = json.loads((out / "series.json").read_text())
    got = {s["SeriesInstanceUID"]: set(s["files"]) for s in manifest["series"]}
    assert got == sent
    assert {s["SeriesDescription"] for s in manifest["series"]} == {"t1", "t2"}
    host = json.loads((job_dir(box, job["scratchdir"]) / "series.json").read_text())
    assert host == manifest  # the job folder's own copy, unchanged by the container

