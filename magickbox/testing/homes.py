"""Homes full of finished jobs, made in seconds: rows inserted straight into the database
(and, when asked, their scratch folders), for benchmarks of the API and the web page."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import insert, select

from magickbox.config import load_settings
from magickbox.home import init_home
from magickbox.jobfolder import JobFolder
from magickbox.jobs.db import Job, JobMeasures, State, open_database
from magickbox.jobs.scratch import received_stamp

BUCKETS = ("ProcBucket", "GradUnwarp", "FreeSurfer")
SENDERS = ("XRAY", "OSIRIX", "PACS01", "MRI3T")


def fill_finished_jobs(home: Path, njobs: int, *, folders: bool = False) -> None:
    """``njobs`` finished jobs, one a minute up to now, from a few senders and buckets
    (every 17th failed); with ``folders``, each gets its scratch folder as a real job has."""
    settings = load_settings(home)
    init_home(settings)
    sessions = open_database(settings.db_url)
    now = time.time()
    rows = []
    for i in range(njobs):
        received = now - (njobs - i) * 60.0
        row = {
            "scratchdir": f"tmp.f{i:07d}",
            "bucket": BUCKETS[i % len(BUCKETS)],
            "caller_aet": SENDERS[i % len(SENDERS)],
            "caller_ip": f"10.0.{i % 7}.{i % 250}",
            "study_uid": f"1.2.826.0.1.3680043.8.498.{i + 1}",
            "received_text": received_stamp(received),
            "nfiles": 100,
            "state": (State.FAILED if i % 17 == 0 else State.DONE).value,
            "received_at": received,
            "queued_at": received + 3,
            "started_at": received + 3,
            "finished_at": received + 20 + i % 90,
            "attempts": 1,
            "exit_code": 0,
            "log_size": 200 + i % 5000,
        }
        if folders:
            _job_folder(settings.scratch / str(row["scratchdir"]), row)
        rows.append(row)
    with sessions() as s, s.begin():
        s.execute(insert(Job), rows)
    sessions.kw["bind"].dispose()


def fill_measures(home: Path, nmeasures: int = 20) -> int:
    """Give every job of the home measures, as a bucket's measures.json would: a subject
    text and ``nmeasures - 1`` numbers that differ per job. Returns how many jobs."""
    settings = load_settings(home)
    sessions = open_database(settings.db_url)
    with sessions() as s:
        names = list(s.scalars(select(Job.scratchdir).order_by(Job.id)))
    rows = []
    for i, name in enumerate(names):
        data = {
            "subject": f"sub-{i:05d}",
            **{f"m{k:02d}": i * 0.25 + k for k in range(nmeasures - 1)},
        }
        rows.append(
            {"scratchdir": name, "data": json.dumps(data), "nrows": 1, "stored_at": time.time()}
        )
    with sessions() as s, s.begin():
        s.execute(insert(JobMeasures), rows)
    sessions.kw["bind"].dispose()
    return len(rows)


def _job_folder(job_dir: Path, row: dict) -> None:
    folder = JobFolder(job_dir)
    for part in (folder.input, folder.output):
        part.mkdir(parents=True)
    info = {"CallerIP": row["caller_ip"], "AETitleCalled": row["bucket"],
            "AETitleCaller": row["caller_aet"], "received": row["received_text"]}  # fmt: skip
    folder.info_json.write_text(json.dumps(info))
    folder.log.write_text("x" * row["log_size"])
