"""How long a bucket takes: running figures per bucket (timing.php) and ETAs of jobs.

Every run that ends well adds its processing time (start to end) to the bucket's running
mean and standard deviation, kept in ``bucket_timing`` with Welford's update (exact,
stable, no samples kept); timing.php's ``time=`` adds a sample by hand as the original's
workers did. An ETA plays the bucket's queue forward: its running jobs end at their start
plus the mean, and each queued job, first in first out, takes the first worker that
comes free for one mean, but never before its not-before time (a job held by
``merge_seconds`` waits for later parts of its study first).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from magickbox.jobs.db import BucketTiming


@dataclass(frozen=True)
class Figures:
    bucket: str
    n: int
    mean: float
    std: float  # the sample standard deviation; 0 below two samples

    def as_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean_seconds": round(self.mean, 3),
                "std_seconds": round(self.std, 3)}  # fmt: skip

    def original(self) -> dict[str, Any]:
        """timing.php's object: past two samples the mean in whole seconds and the
        deviation to two places, else the mean as it is and a deviation of "0"."""
        if self.n > 2:
            return {"aetitle": self.bucket, "avg": round(self.mean), "std": round(self.std, 2),
                    "n": self.n}  # fmt: skip
        return {"aetitle": self.bucket, "avg": round(self.mean, 3), "std": "0", "n": self.n}


def _figures(row: BucketTiming) -> Figures:
    var = max(0.0, row.m2) / (row.n - 1) if row.n > 1 else 0.0
    return Figures(row.bucket, row.n, row.mean, math.sqrt(var))


def add_sample(s: Session, bucket: str, seconds: float, at: float | None = None) -> Figures:
    """One more processing time for ``bucket``, in the caller's transaction."""
    row = s.scalars(
        select(BucketTiming).where(BucketTiming.bucket == bucket).with_for_update()
    ).first()
    if row is None:
        row = BucketTiming(bucket=bucket, n=0, mean=0.0, m2=0.0)
        s.add(row)
    n = row.n + 1
    delta = seconds - row.mean
    mean = row.mean + delta / n
    row.n, row.mean, row.m2 = n, mean, row.m2 + delta * (seconds - mean)
    row.updated_at = at or time.time()
    return _figures(row)


class Timing:
    """Reading and adding to the running figures."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def add(self, bucket: str, seconds: float) -> Figures:
        with self.sessions.begin() as s:
            return add_sample(s, bucket, seconds)

    def of(self, bucket: str) -> Figures | None:
        with self.sessions() as s:
            row = s.get(BucketTiming, bucket)
            return None if row is None else _figures(row)

    def all(self) -> dict[str, Figures]:
        with self.sessions() as s:
            return {row.bucket: _figures(row) for row in s.scalars(select(BucketTiming))}


# -- ETAs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Eta:
    starts_at: float
    finishes_at: float
    ahead: int  # jobs of the bucket that run before this one starts (0: running)
    mean: float  # the bucket's mean processing time the estimate rests on


def plan(
    now: float,
    running: Sequence[tuple[str, float]],
    queued: Sequence[tuple[str, float | None]],
    mean: float,
    workers: int,
) -> dict[str, Eta]:
    """ETAs of one bucket's jobs: ``running`` as (scratchdir, started_at), ``queued`` as
    (scratchdir, not before: its queued_at) in the order they will run, ``workers`` jobs
    at a time, each taking ``mean`` seconds.

    A running job past its mean is taken to end now (it is late, not known to be long). A
    worker free before a job's not-before time stays idle until then: the queue is in
    queued_at order, so no later job could be taken meanwhile (claim_next's rule).
    """
    etas: dict[str, Eta] = {}
    free: list[float] = []  # when each worker comes free
    for scratchdir, started in running:
        end = max(now, started + mean)
        etas[scratchdir] = Eta(started, end, 0, mean)
        free.append(end)
    free += [now] * max(0, workers - len(free))
    heapq.heapify(free)
    for position, (scratchdir, not_before) in enumerate(queued):
        start = max(heapq.heappop(free) if free else now, not_before or now)
        etas[scratchdir] = Eta(start, start + mean, len(running) + position, mean)
        heapq.heappush(free, start + mean)
    return etas
