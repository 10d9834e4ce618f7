"""Running processing-time figures (Welford's update against the statistics module) and
ETAs of a bucket's queue played forward."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pytest

from magickbox.jobs.db import open_database
from magickbox.jobs.timing import Timing, plan


@pytest.fixture
def timing(tmp_path: Path) -> Timing:
    return Timing(open_database(f"sqlite:///{tmp_path / 'db.sqlite'}"))


def test_running_figures_match_a_computation_over_all_samples(timing: Timing) -> None:
    rng = random.Random(7)
    samples = [rng.uniform(1, 1000) for _ in range(200)]
    for x in samples:
        timing.add("Seg", x)
    got = timing.of("Seg")
    assert got is not None and got.n == len(samples)
    assert got.mean == pytest.approx(statistics.fmean(samples), rel=1e-12)
    assert got.std == pytest.approx(statistics.stdev(samples), rel=1e-9)
    assert timing.of("Other") is None and set(timing.all()) == {"Seg"}


def test_timing_php_shape_as_the_original(timing: Timing) -> None:
    timing.add("A", 10.4)
    assert timing.add("A", 20.0).original() == {"aetitle": "A", "avg": 15.2, "std": "0", "n": 2}
    third = timing.add("A", 60.2).original()
    # mean 30.2; deviations -19.8, -10.2, 30 -> sqrt((392.04 + 104.04 + 900) / 2)
    assert third == {"aetitle": "A", "avg": 30, "std": round((1396.08 / 2) ** 0.5, 2), "n": 3}


def test_eta_of_queued_jobs_with_one_worker() -> None:
    etas = plan(1000.0, [("r", 950.0)], [("q1", None), ("q2", 1000.0)], mean=100.0, workers=1)
    assert (etas["r"].starts_at, etas["r"].finishes_at, etas["r"].ahead) == (950.0, 1050.0, 0)
    assert (etas["q1"].starts_at, etas["q1"].finishes_at, etas["q1"].ahead) == (1050, 1150, 1)
    assert (etas["q2"].starts_at, etas["q2"].finishes_at, etas["q2"].ahead) == (1150, 1250, 2)


def test_eta_spreads_over_workers_and_a_late_job_ends_now() -> None:
    queued = [("a", None), ("b", None), ("c", 990.0)]
    etas = plan(1000.0, [("late", 500.0)], queued, mean=60.0, workers=2)
    assert etas["late"].finishes_at == 1000.0  # past its mean: taken to end now
    assert etas["a"].starts_at == 1000.0 and etas["b"].starts_at == 1000.0  # two free workers
    assert etas["c"].starts_at == 1060.0 and etas["c"].finishes_at == 1120.0


def test_eta_of_a_held_job_waits_for_its_not_before_time() -> None:
    """A job held by merge_seconds (queued_at ahead) cannot start before then, even with
    a worker free; once the hold is over it takes the next free worker as any job."""
    alone = plan(1000.0, [], [("held", 1045.0)], mean=60.0, workers=1)["held"]
    assert (alone.starts_at, alone.finishes_at, alone.ahead) == (1045.0, 1105.0, 0)
    # Two workers: "b" (queued before) starts now; the second worker idles until 1030.
    two = plan(1000.0, [], [("b", 990.0), ("held", 1030.0)], mean=60.0, workers=2)
    assert two["b"].starts_at == 1000.0 and two["held"].starts_at == 1030.0
    # One worker busy past the hold: the held job starts when that worker comes free.
    busy = plan(1000.0, [("r", 980.0)], [("held", 1010.0)], mean=60.0, workers=1)["held"]
    assert (busy.starts_at, busy.finishes_at, busy.ahead) == (1040.0, 1100.0, 1)
    # A hold already over (queued_at in the past) changes nothing.
    over = plan(1000.0, [], [("h", 900.0)], mean=60.0, workers=1)["h"]
    assert over.starts_at == 1000.0


def test_an_upgraded_home_starts_its_figures_from_the_done_jobs(tmp_path: Path) -> None:
    """Migration 0006_measures seeds bucket_timing from the jobs a home already has."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from magickbox.jobs import db

    INSERT_JOB = text(
        "INSERT INTO jobs (scratchdir, bucket, state, received_at, started_at, finished_at) "
        "VALUES (:n, :b, :s, 0, 100, :f)"
    )
    engine = db.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    runs = {"A": [3.0, 5.0, 10.0], "B": [7.5]}
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")  # a home from before measures and timing
        rows = [(b, d) for b, ds in runs.items() for d in ds] + [("A", 99.0)]
        for i, (bucket, seconds) in enumerate(rows):
            state = "failed" if seconds == 99.0 else "done"  # failed runs do not count
            conn.execute(
                INSERT_JOB, {"n": f"tmp.{i:08d}", "b": bucket, "s": state, "f": 100 + seconds}
            )
    db.migrate(engine)
    got = Timing(db.sessionmaker(engine)).all()
    assert set(got) == {"A", "B"}
    assert (got["A"].n, got["B"].n) == (3, 1)
    assert got["A"].mean == pytest.approx(statistics.fmean(runs["A"]))
    assert got["A"].std == pytest.approx(statistics.stdev(runs["A"]))
    assert (got["B"].mean, got["B"].std) == (7.5, 0.0)
    engine.dispose()
