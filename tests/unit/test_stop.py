"""A stop of the box: the executor stops running jobs and reports them ``stopped``; the
store puts such a job back in the queue without spending an attempt."""

from __future__ import annotations

from pathlib import Path

from magickbox.buckets.runner import LocalExecutor
from magickbox.jobs.db import State
from magickbox.jobs.store import JobStore
from tests.unit.test_runner import (
    TREE,
    Outcome,
    kill_if_alive,
    make_job,
    request,
    wait_for_file,
    wait_gone,
)
from tests.unit.test_store_queue import Inputs, inputs, new, row, store  # noqa: F401


def test_shutdown_stops_a_running_job_and_reports_it_stopped(tmp_path: Path) -> None:
    job_dir, work_sh = make_job(tmp_path, TREE.format(ignore="trap '' TERM"))
    executor = LocalExecutor(kill_grace=0.5)
    done = Outcome()
    executor.start(request(job_dir, work_sh), done)
    grandchild = int(wait_for_file(job_dir / "OUTPUT" / "grandchild.pid"))
    try:
        executor.shutdown()
        # Reported before shutdown returns: the box must not exit with the job unrecorded.
        assert done.event.is_set()
        result = done.wait()
        assert result.stopped and not result.cancelled and not result.timed_out
        assert wait_gone(grandchild, timeout=2.0)
    finally:
        kill_if_alive(grandchild)


def test_a_start_after_shutdown_runs_nothing_and_reports_it_stopped(tmp_path: Path) -> None:
    job_dir, work_sh = make_job(tmp_path, '#!/bin/sh\ntouch "$2/ran"\n')
    executor = LocalExecutor()
    executor.shutdown()
    done = Outcome()
    executor.start(request(job_dir, work_sh), done)
    assert done.wait().stopped
    assert not (job_dir / "OUTPUT" / "ran").exists()


def test_requeue_stopped_gives_the_attempt_back(
    store: JobStore,  # noqa: F811
    inputs: Inputs,  # noqa: F811
) -> None:
    job = store.create_job(inputs(), new())
    for _stop in range(3):  # any number of stops: never closer to max_attempts
        claimed = store.claim_next("A")
        assert claimed is not None and claimed.attempts == 1
        (store.job_dir(claimed) / "OUTPUT" / "part.txt").write_text("half")
        store.requeue_stopped(claimed, "the box was stopped during this job")
        again = row(store, job.scratchdir)
        assert (again.state, again.attempts, again.started_at) == (State.QUEUED, 0, None)
        assert not any((store.job_dir(again) / "OUTPUT").iterdir())  # a clean OUTPUT
    log = (store.job_dir(job) / "processing.log").read_text()
    assert log.count("the box was stopped during this job") == 3
