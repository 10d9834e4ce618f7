"""The benchmarks' home filler makes jobs the box reads like its own."""

from __future__ import annotations

import json
from pathlib import Path

from magickbox.config import load_settings
from magickbox.jobs.db import open_database
from magickbox.jobs.store import JobStore
from magickbox.testing.homes import fill_finished_jobs
from magickbox.web.views import scratch_listing


def test_filled_jobs_are_finished_jobs_of_the_box(tmp_path: Path) -> None:
    fill_finished_jobs(tmp_path, 40, folders=True)
    settings = load_settings(tmp_path)
    rows = JobStore(settings, open_database(settings.db_url)).scratch_rows()
    listing = scratch_listing(rows, settings.scratch)
    assert len(listing) == 40
    assert all(entry["processingTime"] != "0" for entry in listing)
    assert {entry["status"] for entry in listing} == {"done", "failed"}
    newest = listing[0]
    job_dir = settings.scratch / newest["scratchdir"]
    assert (
        json.loads((job_dir / "info.json").read_text())["AETitleCaller"] == newest["AETitleCaller"]
    )
    assert (job_dir / "processing.log").stat().st_size == newest["processingLogSize"]
