"""How jobs look from outside: the original's getScratch objects and the /api/v1 objects.

getScratch's values are what the seed's scripts parse: ``scratchdir``, ``pid`` and
``processingTime`` are strings, and processingTime is "0" exactly while a job is not
finished.
"""

from __future__ import annotations

import json
import math
import os
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson

from magickbox.jobfolder import JobFolder
from magickbox.jobs.db import FINISHED, Job, State
from magickbox.jobs.timing import Eta


def processing_time(
    state: str, started: float | None, finished: float | None, received: float
) -> str:
    if state not in FINISHED or finished is None:
        return "0"
    # Whole seconds as the original, but never "0" once finished: scripts test != "0".
    return str(max(1, math.ceil(finished - (started or received))))


def scratch_entry(row: dict[str, Any], scratch: Path, now: float) -> dict[str, Any]:
    if row["state"] in FINISHED and row["finished_at"] is not None:
        size, mtime = row["log_size"], row["finished_at"]
    else:  # still changing: ask the file (only these few jobs cost a stat)
        try:
            st = os.stat(JobFolder(scratch / row["scratchdir"]).log)
            size, mtime = st.st_size, st.st_mtime
        except OSError:
            size, mtime = 0, row["received_at"]
    return {
        "AETitleCalled": row["bucket"],
        "AETitleCaller": row["caller_aet"],
        "CallerIP": row["caller_ip"],
        "received": row["received_text"],
        "scratchdir": row["scratchdir"],
        "pid": row["study_uid"] or row["jobname"] or row["scratchdir"],
        "lastChangedTime": formatdate(mtime, localtime=True),
        "processingTime": processing_time(
            row["state"], row["started_at"], row["finished_at"], row["received_at"]
        ),
        "processingLogSize": size,
        "status": row["state"],
        # Added for mb: the name an upload gave the job (mb push: the folder's), else "".
        "jobname": row["jobname"] or "",
        **({"measures": orjson.loads(row["measures"])} if row.get("measures") else {}),
        # Added: the job's Slurm status while Slurm holds it ("PENDING (Resources)"), else "".
        "slurm": row.get("slurm") or "",
        # Our additions, from the job's series views: who and what the study is.
        "PatientID": row.get("patient_id", ""),
        "PatientName": row.get("patient_name", ""),
        "AccessionNumber": row.get("accession_number", ""),
        "StudyDate": row.get("study_date", ""),
        "StudyDescription": row.get("study_description", ""),
        "Modalities": modality_list(row.get("modalities")),
        "SeriesCount": row.get("series_count", 0),
        "processingLast": max(0, int(now - mtime)),  # last: see ScratchRenderer
    }


def modality_list(text: str | None) -> list[str]:
    """The job's modalities column ("CT\\MR") as a list."""
    return [m for m in (text or "").split("\\") if m]


def scratch_listing(rows: list[dict[str, Any]], scratch: Path) -> list[dict[str, Any]]:
    now = time.time()
    return [scratch_entry(row, scratch, now) for row in rows]


class ScratchRenderer:
    """getScratch as JSON bytes, fast for tens of thousands of jobs.

    A finished job's object never changes again but for ``processingLast`` (its last
    field), so its JSON up to that value is made once and kept; a request then costs a
    query and a join. Jobs gone from the rows drop out of the cache at the next request.
    """

    def __init__(self) -> None:
        self._finished: dict[str, tuple[float, int, str | None, bytes]] = {}

    def render(self, rows: list[dict[str, Any]], scratch: Path) -> bytes:
        now = time.time()
        kept: dict[str, tuple[float, int, str | None, bytes]] = {}
        parts: list[bytes] = []
        for row in rows:
            if row["state"] not in FINISHED or row["finished_at"] is None:
                parts.append(orjson.dumps(scratch_entry(row, scratch, now)))
                continue
            name, finished, measures = row["scratchdir"], row["finished_at"], row.get("measures")
            hit = self._finished.get(name)
            if hit is None or hit[:3] != (finished, row["log_size"], measures):
                entry = scratch_entry(row, scratch, now)
                del entry["processingLast"]
                prefix = orjson.dumps(entry)[:-1] + b',"processingLast":'
                hit = (finished, row["log_size"], measures, prefix)
            kept[name] = hit
            parts.append(b"%s%d}" % (hit[3], max(0, int(now - finished))))
        self._finished = kept
        return b"[" + b",".join(parts) + b"]"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def eta_view(eta: Eta | None, now: float | None = None) -> dict[str, Any] | None:
    """When a queued or running job should start and end, from its bucket's history."""
    if eta is None:
        return None
    now = time.time() if now is None else now
    return {
        "starts_at": iso(eta.starts_at),
        "finishes_at": iso(eta.finishes_at),
        "seconds_left": round(max(0.0, eta.finishes_at - now), 1),
        "ahead": eta.ahead,
        "mean_seconds": round(eta.mean, 3),
    }


def job_detail_view(
    job: Job,
    log_size: int,
    verdict: dict[str, Any] | None,
    eta: Eta | None = None,
    slurm: str | None = None,
    parts: list[str] | None = None,
) -> dict[str, Any]:
    """One job (its own page): the list's facts and its proc.json ``verdict``, which costs
    a read of the folder and so is not in lists; ``parts``: the other jobs of the same
    study and bucket (a send the box cut in parts), by scratchdir, oldest first."""
    return {**job_view(job, log_size, eta, slurm), "verdict": verdict, "parts": parts or []}


def job_view(
    job: Job, log_size: int | None = None, eta: Eta | None = None, slurm: str | None = None
) -> dict[str, Any]:
    """A job in /api/v1: every fact, with times in ISO 8601 (UTC); ``eta`` only while it
    is queued or running and its bucket has finished a run before; ``slurm`` its status
    in Slurm while the Slurm executor holds it, else None."""
    return {
        "scratchdir": job.scratchdir,
        "state": job.state,
        "bucket": job.bucket,
        "caller_aet": job.caller_aet,
        "caller_ip": job.caller_ip,
        "study_uid": job.study_uid,
        "source": job.source,
        "jobname": job.jobname,
        "description": job.description,
        "arguments": json.loads(job.arguments or "[]"),
        "files": job.nfiles,
        "received_at": iso(job.received_at),
        "queued_at": iso(job.queued_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "processing_seconds": (
            round(job.finished_at - job.started_at, 3)
            if job.finished_at and job.started_at
            else None
        ),
        "attempts": job.attempts,
        "exit_code": job.exit_code,
        "success": job.success or None,
        "reason": job.reason or None,
        "slurm": slurm,
        "log_size": job.log_size if log_size is None else log_size,
        "eta": eta_view(eta) if job.state in (State.QUEUED, State.RUNNING) else None,
        "patient_id": job.patient_id,
        "patient_name": job.patient_name,
        "accession_number": job.accession_number,
        "study_date": job.study_date,
        "study_description": job.study_description,
        "modalities": modality_list(job.modalities),
        "series_count": job.series_count,
        "links": {
            "self": f"/api/v1/jobs/{job.scratchdir}",
            "log": f"/api/v1/jobs/{job.scratchdir}/log",
            "output": f"/api/v1/jobs/{job.scratchdir}/output.zip",
            "input": f"/api/v1/jobs/{job.scratchdir}/input.zip",
            "series": f"/api/v1/jobs/{job.scratchdir}/series",
        },
    }
