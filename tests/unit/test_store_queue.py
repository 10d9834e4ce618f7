"""JobStore on a temporary SQLite database, and the Dispatcher with a fake executor."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from magickbox.buckets.runner import RunRequest, RunResult
from magickbox.config import Settings
from magickbox.events import JobQueued
from magickbox.jobfolder import FACTS as JOB_FACTS
from magickbox.jobfolder import JobFolder, RunFacts
from magickbox.jobs import scratch
from magickbox.jobs.db import Job, State, open_database
from magickbox.jobs.queue import Dispatcher, outcome, read_success
from magickbox.jobs.store import JobStore, NewJob

TIMEOUT = 20.0


# ---------------------------------------------------------------- fixtures


def make_store(tmp_path: Path, **settings: object) -> JobStore:
    home = tmp_path / "home"
    s = Settings(
        home=home, database_url=f"sqlite:///{tmp_path / 'jobs.db'}", concurrency=1, **settings
    )
    for folder in (s.streams, s.scratch, s.archive, s.incoming, s.memory):
        folder.mkdir(parents=True, exist_ok=True)
    return JobStore(s, open_database(s.db_url))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    st = make_store(tmp_path, rerun_interrupted=True, max_attempts=2)
    yield st
    st.sessions.kw["bind"].dispose()


class Inputs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def __call__(self, files: dict[str, bytes] | None = None) -> Path:
        self.n += 1
        folder = self.root / f"send{self.n}"
        folder.mkdir(parents=True)
        for name, data in (files or {"img.dcm": b"DICM"}).items():
            (folder / name).write_bytes(data)
        return folder


@pytest.fixture
def inputs(tmp_path: Path) -> Inputs:
    return Inputs(tmp_path / "incoming")


def new(bucket: str = "A", **kw: object) -> NewJob:
    facts: dict[str, object] = {"caller_aet": "MODALITY", "caller_ip": "10.1.2.3", **kw}
    return NewJob(bucket=bucket, **facts)  # type: ignore[arg-type]


def row(store: JobStore, scratchdir: str) -> Job:
    job = store.get(scratchdir)
    assert job is not None
    return job


def add_bucket(store: JobStore, aetitle: str, **info: object) -> Path:
    folder = store.settings.streams / f"bucket{aetitle}"
    folder.mkdir(parents=True)
    (folder / "info.json").write_text(json.dumps({"AETitle": aetitle, "enabled": 1, **info}))
    (folder / "work.sh").write_text("#!/bin/sh\nexit 0\n")
    (folder / "work.sh").chmod(0o755)
    return folder


# ---------------------------------------------------------------- create_job


def test_create_job_moves_the_folder_into_input(store: JobStore, inputs: Inputs) -> None:
    src = inputs({"a.dcm": b"AAA", "b.dcm": b"BBB"})
    inode = (src / "a.dcm").stat().st_ino
    job = store.create_job(src, new(study_uid="1.2.3"), received_at=1_700_000_000.0)

    job_dir = store.job_dir(job)
    assert job_dir.parent == store.settings.scratch
    assert not src.exists()  # moved, not copied
    assert sorted(p.name for p in (job_dir / "INPUT").iterdir()) == ["a.dcm", "b.dcm"]
    assert (job_dir / "INPUT" / "a.dcm").stat().st_ino == inode
    assert (job_dir / "OUTPUT").is_dir() and not any((job_dir / "OUTPUT").iterdir())
    assert (job_dir / "processing.log").is_file()


def test_create_job_writes_info_json_with_exactly_the_originals_keys(
    store: JobStore, inputs: Inputs
) -> None:
    when = 1_700_000_000.0
    job = store.create_job(inputs(), new("ProcBucket", caller_aet="ip44"), received_at=when)
    info = json.loads((store.job_dir(job) / "info.json").read_text())
    assert set(info) == {"CallerIP", "AETitleCalled", "AETitleCaller", "received"}
    assert info["CallerIP"] == "10.1.2.3"
    assert info["AETitleCalled"] == "ProcBucket"
    assert info["AETitleCaller"] == "ip44"
    assert info["received"] == scratch.received_stamp(when)
    assert info["received"] == row(store, job.scratchdir).received_text
    assert str(time.localtime(when).tm_year) in info["received"]


def test_create_job_records_a_queued_row_and_notifies(store: JobStore, inputs: Inputs) -> None:
    calls: list[int] = []
    store.events.subscribe(JobQueued, lambda _e: calls.append(1))
    job = store.create_job(
        inputs({"a": b"1", "b": b"2", "c": b"3"}),
        new("A", study_uid="1.2.3", jobname="named", arguments=("-x", "y z")),
        received_at=1234.5,
    )
    r = row(store, job.scratchdir)
    assert r.state == State.QUEUED
    assert (r.bucket, r.caller_aet, r.caller_ip, r.study_uid) == (
        "A",
        "MODALITY",
        "10.1.2.3",
        "1.2.3",
    )
    assert r.nfiles == 3
    assert r.attempts == 0
    assert r.received_at == 1234.5
    assert r.queued_at is not None
    assert json.loads(r.arguments) == ["-x", "y z"]
    assert calls == [1]


def test_create_job_links_the_input_into_the_study_archive(store: JobStore, inputs: Inputs) -> None:
    job = store.create_job(inputs({"a.dcm": b"A"}), new(study_uid="1.2.3"))
    archived = store.settings.archive / "1.2.3" / "a.dcm"
    assert os.path.samefile(archived, store.job_dir(job) / "INPUT" / "a.dcm")


def test_a_hostile_study_uid_is_not_archived_but_the_job_is_made(
    store: JobStore, inputs: Inputs, tmp_path: Path
) -> None:
    job = store.create_job(inputs({"a.dcm": b"A"}), new(study_uid="../../../escaped"))
    assert row(store, job.scratchdir).state == State.QUEUED
    assert not any(tmp_path.rglob("escaped"))
    assert list(store.settings.archive.iterdir()) == []


# ---------------------------------------------------------------- claim_next / requeue


def test_claim_next_is_first_in_first_out_per_bucket(store: JobStore, inputs: Inputs) -> None:
    order = ["A", "B", "A", "A", "B"]
    made = [store.create_job(inputs(), new(b)).scratchdir for b in order]
    a_jobs = [m for m, b in zip(made, order, strict=True) if b == "A"]
    b_jobs = [m for m, b in zip(made, order, strict=True) if b == "B"]

    claimed_a = [store.claim_next("A") for _ in a_jobs]
    assert [j.scratchdir for j in claimed_a if j] == a_jobs
    assert store.claim_next("A") is None
    claimed_b = [store.claim_next("B") for _ in b_jobs]
    assert [j.scratchdir for j in claimed_b if j] == b_jobs
    assert store.claim_next("B") is None

    r = row(store, a_jobs[0])
    assert r.state == State.RUNNING
    assert r.attempts == 1
    assert r.started_at is not None


def test_claim_next_skips_jobs_that_are_not_queued(store: JobStore, inputs: Inputs) -> None:
    first = store.create_job(inputs(), new()).scratchdir
    second = store.create_job(inputs(), new()).scratchdir
    store._update(first, state=State.DONE)
    claimed = store.claim_next("A")
    assert claimed is not None and claimed.scratchdir == second


def finish(store: JobStore, scratchdir: str, state: State = State.DONE) -> None:
    store._update(scratchdir, state=state, finished_at=time.time(), exit_code=0, success="ok")


def test_requeue_refuses_jobs_that_are_not_finished(store: JobStore, inputs: Inputs) -> None:
    queued = store.create_job(inputs(), new()).scratchdir
    assert store.requeue(queued, "again") is False
    store.claim_next("A")
    assert row(store, queued).state == State.RUNNING
    assert store.requeue(queued, "again") is False
    assert row(store, queued).state == State.RUNNING
    assert store.requeue("tmp.nosuchjob", "again") is False


@pytest.mark.parametrize("final", [State.DONE, State.FAILED])
def test_requeue_of_a_finished_job_starts_it_afresh(
    store: JobStore, inputs: Inputs, final: State
) -> None:
    sd = store.create_job(inputs(), new()).scratchdir
    store.claim_next("A")
    job_dir = store.settings.scratch / sd
    (job_dir / "OUTPUT" / "result.dcm").write_bytes(b"R")
    (job_dir / "proc.json").write_text('{"success": "ok"}')
    store._update(sd, state=final, finished_at=time.time(), exit_code=1, reason="x", success="ok")
    calls: list[int] = []
    store.events.subscribe(JobQueued, lambda _e: calls.append(1))

    assert store.requeue(sd, "retried by the API") is True
    r = row(store, sd)
    assert r.state == State.QUEUED
    assert (r.finished_at, r.exit_code, r.reason, r.success, r.attempts) == (None, None, "", "", 0)
    assert list((job_dir / "OUTPUT").iterdir()) == []
    assert not (job_dir / "proc.json").exists()
    assert "retried by the API" in (job_dir / "processing.log").read_text()
    assert calls == [1]


def test_a_requeued_job_goes_to_the_back_of_the_queue(store: JobStore, inputs: Inputs) -> None:
    old = store.create_job(inputs(), new()).scratchdir
    store.claim_next("A")
    finish(store, old)
    waiting = store.create_job(inputs(), new()).scratchdir
    time.sleep(0.01)
    assert store.requeue(old, "again")
    claimed = [store.claim_next("A"), store.claim_next("A")]
    assert [j.scratchdir for j in claimed if j] == [waiting, old]


# ---------------------------------------------------------------- adopt_orphans


def forget_row(store: JobStore, scratchdir: str) -> None:
    with store.sessions.begin() as s:
        s.execute(delete(Job).where(Job.scratchdir == scratchdir))


def test_adopt_orphans_gives_a_crashed_job_folder_its_row(store: JobStore, inputs: Inputs) -> None:
    job = store.create_job(
        inputs({"a": b"1", "b": b"2"}),
        new("A", study_uid="1.2.3", jobname="j", source="upload", arguments=("--fast",)),
        received_at=4321.0,
    )
    forget_row(store, job.scratchdir)  # the crash came between the folder and the row
    assert store.get(job.scratchdir) is None

    assert store.adopt_orphans() == 1
    r = row(store, job.scratchdir)
    assert r.state == State.QUEUED
    assert (r.bucket, r.caller_aet, r.caller_ip, r.study_uid) == (
        "A",
        "MODALITY",
        "10.1.2.3",
        "1.2.3",
    )
    assert (r.jobname, r.source, json.loads(r.arguments)) == ("j", "upload", ["--fast"])
    assert r.received_at == 4321.0
    assert r.nfiles == 2
    assert store.adopt_orphans() == 0  # never twice
    with store.sessions() as s:
        assert len(s.scalars(select(Job)).all()) == 1


def test_adopt_orphans_removes_half_made_folders(store: JobStore, inputs: Inputs) -> None:
    scratch_dir = store.settings.scratch
    no_facts = scratch.new_job_dir(scratch_dir)
    (no_facts / "INPUT").mkdir()
    no_input = scratch.new_job_dir(scratch_dir)
    scratch.write_json_atomic(
        no_input / JOB_FACTS,
        {"bucket": "A", "caller_aet": "X", "caller_ip": "1", "received_at": 1.0},
    )
    bad_facts = scratch.new_job_dir(scratch_dir)
    (bad_facts / "INPUT").mkdir()
    (bad_facts / JOB_FACTS).write_text("{broken")
    unknown_key = scratch.new_job_dir(scratch_dir)
    (unknown_key / "INPUT").mkdir()
    scratch.write_json_atomic(
        unknown_key / JOB_FACTS, {"bucket": "A", "nonsense": 1, "received_at": 1.0}
    )
    kept = store.create_job(inputs(), new()).scratchdir  # has its row: not touched
    other = scratch_dir / "not-a-job"
    other.mkdir()

    assert store.adopt_orphans() == 0
    for gone in (no_facts, no_input, bad_facts, unknown_key):
        assert not gone.exists(), gone.name
    assert (scratch_dir / kept / "INPUT").is_dir()
    assert store.settings.archive.is_dir()
    assert store.settings.incoming.is_dir()
    assert other.is_dir()
    with store.sessions() as s:
        assert len(s.scalars(select(Job)).all()) == 1


# ---------------------------------------------------------------- Dispatcher


class FakeExecutor:
    """Records what the queue starts; the test decides when each run ends."""

    def __init__(self) -> None:
        self.started: list[RunRequest] = []
        self._done: dict[str, tuple[RunRequest, object]] = {}
        self.cond = threading.Condition()
        self.was_shut_down = False

    def start(self, req: RunRequest, done) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.started.append(req)
            self._done[req.scratchdir] = (req, done)
            self.cond.notify_all()

    def cancel(self, scratchdir: str) -> bool:
        return False

    def shutdown(self) -> None:
        self.was_shut_down = True

    def finish(self, scratchdir: str, code: int = 0) -> None:
        with self.cond:
            req, done = self._done.pop(scratchdir)
        done(req, RunResult(code))  # type: ignore[operator]

    def wait_started(self, n: int) -> list[str]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.started) >= n, TIMEOUT)
            assert ok, f"expected {n} started, have {[r.scratchdir for r in self.started]}"
            return [r.scratchdir for r in self.started]

    def started_names(self) -> list[str]:
        with self.cond:
            return [r.scratchdir for r in self.started]


def wait_state(store: JobStore, scratchdir: str, state: State) -> Job:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        job = row(store, scratchdir)
        if job.state == state:
            return job
        time.sleep(0.02)
    raise AssertionError(f"{scratchdir} is {row(store, scratchdir).state}, expected {state}")


@pytest.fixture
def fake() -> FakeExecutor:
    return FakeExecutor()


@pytest.fixture
def dispatcher(store: JobStore, fake: FakeExecutor) -> Iterator[Dispatcher]:
    d = Dispatcher(store, fake)
    yield d
    d.stop()


def test_jobs_queued_before_start_run_without_waiting_for_the_safety_net(
    store: JobStore, inputs: Inputs, fake: FakeExecutor
) -> None:
    """A restart with a full queue: nothing new arrives to wake the queue."""
    add_bucket(store, "A")
    sd = store.create_job(inputs(), new("A")).scratchdir
    d = Dispatcher(store, fake)  # made after the job: it was not told about it
    d.start()
    try:
        assert fake.wait_started(1) == [sd]
    finally:
        d.stop()


def test_dispatcher_runs_one_job_per_bucket_fifo_and_buckets_side_by_side(
    store: JobStore, inputs: Inputs, fake: FakeExecutor, dispatcher: Dispatcher
) -> None:
    add_bucket(store, "A")
    add_bucket(store, "B")
    dispatcher.start()
    a1, b1, a2, a3, b2 = (store.create_job(inputs(), new(b)).scratchdir for b in "ABAAB")

    assert set(fake.wait_started(2)) == {a1, b1}  # one of each bucket, at the same time
    time.sleep(0.3)
    assert len(fake.started_names()) == 2  # concurrency 1: the others wait

    fake.finish(a1)
    assert fake.wait_started(3)[2] == a2
    fake.finish(b1, code=1)
    assert fake.wait_started(4)[3] == b2
    fake.finish(a2)
    assert fake.wait_started(5)[4] == a3
    fake.finish(a3)
    fake.finish(b2)

    assert wait_state(store, a1, State.DONE).exit_code == 0
    assert wait_state(store, b1, State.FAILED).exit_code == 1
    for sd in (a2, a3):
        wait_state(store, sd, State.DONE)
    started = fake.started_names()
    assert [s for s in started if s in (a1, a2, a3)] == [a1, a2, a3]
    assert [s for s in started if s in (b1, b2)] == [b1, b2]


def test_dispatcher_honours_a_buckets_own_concurrency(
    store: JobStore, inputs: Inputs, fake: FakeExecutor, dispatcher: Dispatcher
) -> None:
    add_bucket(store, "C", concurrency=2)
    dispatcher.start()
    c1, c2, c3 = (store.create_job(inputs(), new("C")).scratchdir for _ in range(3))
    assert fake.wait_started(2) == [c1, c2]
    time.sleep(0.3)
    assert len(fake.started_names()) == 2
    fake.finish(c1)
    assert fake.wait_started(3)[2] == c3


def test_request_carries_the_jobs_facts(
    store: JobStore, inputs: Inputs, fake: FakeExecutor, dispatcher: Dispatcher
) -> None:
    folder = add_bucket(store, "A", timeout=42)
    dispatcher.start()
    job = store.create_job(
        inputs(), new("A", study_uid="1.2.3", arguments=("--a", "b c"), caller_aet="ip44")
    )
    fake.wait_started(1)
    req = fake.started[0]
    job_dir = store.settings.scratch / job.scratchdir
    assert req.work_sh == folder / "work.sh"
    assert req.job_dir == job_dir
    assert req.arguments == ["--a", "b c"]
    assert req.timeout == 42
    # The MB_* names themselves are tested once, in test_jobfolder.py: here, that the
    # queue hands the job's own facts to them.
    facts = RunFacts(job.scratchdir, "A", "ip44", job.caller_ip, "1.2.3", "")
    memory = store.settings.memory / "A"
    expected = JobFolder(job_dir).environment(facts, memory, store.settings.home)
    assert {k: v for k, v in req.env.items() if k.startswith("MB_")} == expected
    assert memory.is_dir()
    assert dispatcher.is_running_here(job.scratchdir)


@pytest.mark.parametrize("installed", ["missing", "disabled"])
def test_jobs_of_a_missing_or_disabled_bucket_fail(
    store: JobStore, inputs: Inputs, fake: FakeExecutor, dispatcher: Dispatcher, installed: str
) -> None:
    if installed == "disabled":
        add_bucket(store, "Ghost", enabled=0)
    add_bucket(store, "A")
    dispatcher.start()
    ghost = store.create_job(inputs(), new("Ghost")).scratchdir
    ghost2 = store.create_job(inputs(), new("Ghost")).scratchdir
    fine = store.create_job(inputs(), new("A")).scratchdir

    for sd in (ghost, ghost2):
        failed = wait_state(store, sd, State.FAILED)
        assert "Ghost" in failed.reason
        assert failed.finished_at is not None
    assert fake.wait_started(1) == [fine]  # the other bucket is not held up
    time.sleep(0.2)
    assert fake.started_names() == [fine]


def running_job(store: JobStore, inputs: Inputs, attempts: int) -> str:
    sd = store.create_job(inputs(), new("A")).scratchdir
    store.claim_next("A")
    store._update(sd, attempts=attempts)
    job_dir = store.settings.scratch / sd
    (job_dir / "OUTPUT" / "half.dcm").write_bytes(b"half")
    return sd


def test_recover_requeues_interrupted_jobs_under_max_attempts(
    store: JobStore, inputs: Inputs, fake: FakeExecutor
) -> None:
    add_bucket(store, "A")
    again = running_job(store, inputs, attempts=1)
    given_up = running_job(store, inputs, attempts=2)  # max_attempts is 2
    received = store.create_job(inputs(), new("A")).scratchdir
    store._update(received, state=State.RECEIVED)

    d = Dispatcher(store, fake)
    d.recover()
    r = row(store, again)
    assert r.state == State.QUEUED
    assert r.started_at is None
    assert list((store.settings.scratch / again / "OUTPUT").iterdir()) == []
    assert "restarted" in (store.settings.scratch / again / "processing.log").read_text()
    g = row(store, given_up)
    assert g.state == State.FAILED
    assert "restart" in g.reason
    assert g.finished_at is not None
    assert row(store, received).state == State.QUEUED

    d.start()
    try:
        assert fake.wait_started(1) == [again]
        assert row(store, again).attempts == 2
    finally:
        d.stop()


def test_recover_fails_interrupted_jobs_when_reruns_are_off(
    tmp_path: Path, inputs: Inputs, fake: FakeExecutor
) -> None:
    store = make_store(tmp_path, rerun_interrupted=False, max_attempts=5)
    sd = running_job(store, inputs, attempts=1)
    Dispatcher(store, fake).recover()
    assert row(store, sd).state == State.FAILED
    store.sessions.kw["bind"].dispose()


def test_stop_shuts_the_executor_down(store: JobStore, fake: FakeExecutor) -> None:
    d = Dispatcher(store, fake)
    d.start()
    d.stop()
    assert fake.was_shut_down


# ---------------------------------------------------------------- outcome()


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tmp.abcdef12"
    (d / "OUTPUT").mkdir(parents=True)
    (d / "processing.log").write_text("bucket output\n")
    return d


def test_nonzero_exit_without_proc_json_fails_with_the_code(job_dir: Path) -> None:
    values = outcome(job_dir, RunResult(exit_code=3))
    assert values["state"] == State.FAILED
    assert values["exit_code"] == 3
    assert "3" in str(values["reason"])
    assert values["success"] == ""
    log = (job_dir / "processing.log").read_text()
    assert log.startswith("bucket output\n")
    assert "finished: failed" in log
    assert values["log_size"] == len(log.encode())


def test_exit_zero_without_proc_json_is_done(job_dir: Path) -> None:
    values = outcome(job_dir, RunResult(exit_code=0, finished_at=99.0))
    assert values["state"] == State.DONE
    assert values["reason"] == ""
    assert values["finished_at"] == 99.0


def test_proc_json_in_output_is_moved_to_the_job_folder(job_dir: Path) -> None:
    (job_dir / "OUTPUT" / "proc.json").write_text('[{"success": "ok", "note": "fine"}]')
    values = outcome(job_dir, RunResult(exit_code=0))
    assert values["state"] == State.DONE
    assert values["success"] == "ok"
    assert not (job_dir / "OUTPUT" / "proc.json").exists()
    assert json.loads((job_dir / "proc.json").read_text())[0]["note"] == "fine"


@pytest.mark.parametrize(
    "content", ['{"success": "failed"}', '[{"success": "failed"}]', '{"success": "Error"}']
)
def test_proc_json_failed_fails_even_with_exit_zero(job_dir: Path, content: str) -> None:
    (job_dir / "proc.json").write_text(content)
    values = outcome(job_dir, RunResult(exit_code=0))
    assert values["state"] == State.FAILED
    assert "proc.json" in str(values["reason"])


def test_proc_json_failed_in_output_fails_and_is_moved(job_dir: Path) -> None:
    (job_dir / "OUTPUT" / "proc.json").write_text('{"success": "failed"}')
    values = outcome(job_dir, RunResult(exit_code=0))
    assert values["state"] == State.FAILED
    assert (job_dir / "proc.json").is_file()


def test_an_executor_reason_fails_whatever_proc_json_says(job_dir: Path) -> None:
    (job_dir / "proc.json").write_text('{"success": "ok"}')
    values = outcome(job_dir, RunResult(exit_code=-15, reason="timed out after 5 s"))
    assert values["state"] == State.FAILED
    assert values["reason"] == "timed out after 5 s"


def test_read_success_prefers_the_job_folder_and_ignores_junk(job_dir: Path) -> None:
    assert read_success(job_dir) is None
    (job_dir / "OUTPUT" / "proc.json").write_text("not json")
    assert read_success(job_dir) is None
    assert (job_dir / "OUTPUT" / "proc.json").exists()  # junk is not moved
    (job_dir / "OUTPUT" / "proc.json").write_text('{"success": "from output"}')
    (job_dir / "proc.json").write_text('{"success": "from job"}')
    assert read_success(job_dir) == "from job"
    assert (job_dir / "OUTPUT" / "proc.json").exists()


def test_a_job_that_cannot_be_started_fails_and_the_queue_goes_on(
    store: JobStore, inputs: Inputs, fake: FakeExecutor, dispatcher: Dispatcher
) -> None:
    add_bucket(store, "A")
    broken = store.create_job(inputs(), new("A")).scratchdir
    fine = store.create_job(inputs(), new("A")).scratchdir
    real_start = fake.start
    calls: list[str] = []

    def start_once_broken(req, done):  # type: ignore[no-untyped-def]
        calls.append(req.scratchdir)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        real_start(req, done)

    fake.start = start_once_broken  # type: ignore[method-assign]
    dispatcher.start()
    failed = wait_state(store, broken, State.FAILED)
    assert "No space left" in failed.reason
    assert fake.wait_started(1) == [fine]


def test_a_job_left_received_by_a_crash_is_archived_and_queued(
    store: JobStore, inputs: Inputs, fake: FakeExecutor
) -> None:
    job = store.create_job(inputs({"a.dcm": b"A", "b.dcm": b"B"}), new("A", study_uid="1.2.3"))
    archive = store.settings.archive / "1.2.3"
    shutil.rmtree(archive)  # the crash came before the archive links were made
    store._update(job.scratchdir, state=State.RECEIVED, queued_at=None)
    Dispatcher(store, fake).recover()
    assert row(store, job.scratchdir).state == State.QUEUED
    assert sorted(p.name for p in archive.iterdir()) == ["a.dcm", "b.dcm"]
    assert (archive / "a.dcm").stat().st_ino == (
        store.settings.scratch / job.scratchdir / "INPUT" / "a.dcm"
    ).stat().st_ino
