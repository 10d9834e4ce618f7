"""kill -9 of the box in the middle of work, then a restart: nothing accepted is lost.

What a restart does is documented (README, magickbox.toml): a job that was running is run
again (``rerun_interrupted = true``) up to ``max_attempts = 2`` runs in all, after that it
is failed with the reason; queued jobs run; finished jobs stay as they were; sends that
had not yet become jobs become jobs.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from magickbox.buckets.runner import group_members
from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer, dcmtk
from tests.e2e.peers import (
    QUICK,
    api_job,
    api_jobs,
    assert_receiver,
    dataset_part,
    input_files,
    install_buckets,
    pid_alive,
    receiver_workers,
    send_files,
    wait_for,
    wait_jobs,
    wait_state,
)

pytestmark = pytest.mark.e2e

# Each send is one association, each job its own caller or study: a short quiet period
# (the harness's default is 1 s) makes every wait for a job shorter.
QUIET = 0.3

# Runs while $MB_MEMORY/hold exists; records its start and end (with its pid) in runs.txt.
SLOW = """#!/bin/sh
echo "start $MB_SCRATCHDIR $$" >> "$MB_MEMORY/runs.txt"
while [ -e "$MB_MEMORY/hold" ]; do sleep 0.1; done
echo done > "$2/done.txt"
echo "end $MB_SCRATCHDIR $$" >> "$MB_MEMORY/runs.txt"
"""

FAIL = """#!/bin/sh
echo "run $MB_SCRATCHDIR" >> "$MB_MEMORY/runs.txt"
echo "this bucket always fails"
exit 3
"""


def runs(box: BoxServer, bucket: str) -> list[list[str]]:
    path = box.home / "memory" / bucket / "runs.txt"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def send_study(box: BoxServer, tmp_path: Path, name: str, bucket: str) -> str:
    study = write_study(tmp_path / name, n_images=2, rows=16, cols=16)
    assert len(send_files(box.dicom_port, bucket, study.paths, calling=name).ok) == 2
    return study.study_uid


def one_job(box: BoxServer, study_uid: str, *states: str) -> dict:
    def probe() -> dict | None:
        jobs = api_jobs(box, study_uid=study_uid)
        return jobs[0] if len(jobs) == 1 and jobs[0]["state"] in states else None

    return wait_for(f"the job of study {study_uid} to be {states}", probe)


def test_kill9_during_jobs_reruns_the_running_one_and_runs_the_queued(
    box_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Slow=SLOW, Fail=FAIL)
    hold = home / "memory" / "Slow" / "hold"
    hold.parent.mkdir(parents=True)
    hold.touch()
    box: BoxServer = box_factory(quiet=QUIET, home=home)

    failed_uid = send_study(box, tmp_path, "failer", "Fail")
    failed = one_job(box, failed_uid, "failed")
    assert failed["exit_code"] == 3

    running_uid = send_study(box, tmp_path, "first", "Slow")
    running = one_job(box, running_uid, "running")
    wait_for("the bucket to start", lambda: runs(box, "Slow"))
    queued_uid = send_study(box, tmp_path, "second", "Slow")
    queued = one_job(box, queued_uid, "queued")  # concurrency 1: it waits for the first

    ((word, scratchdir, pid),) = runs(box, "Slow")
    assert (word, scratchdir) == ("start", running["scratchdir"])
    first_pid = int(pid)
    assert group_members(first_pid), "the bucket should be running now"

    box.kill9()
    # The bucket runs in its own session: the box's death alone does not stop it.
    assert group_members(first_pid)
    box.start()

    # At start the box stopped the orphan of the first run (and its children) ...
    wait_for("the interrupted run's processes to be gone", lambda: not group_members(first_pid))
    # ... and runs the job again: a second attempt, while the queued job still waits.
    rerun = wait_for("the re-run", lambda: len(runs(box, "Slow")) == 2 and runs(box, "Slow"))
    assert rerun[1][:2] == ["start", running["scratchdir"]]
    assert int(rerun[1][2]) != first_pid
    job = api_job(box, running["scratchdir"])
    assert (job["state"], job["attempts"]) == ("running", 2)
    assert api_job(box, queued["scratchdir"])["state"] == "queued"

    hold.unlink()
    for j in (running, queued):
        done = wait_state(box, j["scratchdir"], "done", "failed")
        assert done["state"] == "done", done
        assert (box.home / "scratch" / j["scratchdir"] / "OUTPUT" / "done.txt").is_file()
    log = box.get(f"/api/v1/jobs/{running['scratchdir']}/log").text
    assert "restarted during this job" in log

    # In order: first run (cut short), its re-run, then the job that was queued.
    records = [(r[0], r[1]) for r in runs(box, "Slow")]
    assert records == [
        ("start", running["scratchdir"]),
        ("start", running["scratchdir"]),
        ("end", running["scratchdir"]),
        ("start", queued["scratchdir"]),
        ("end", queued["scratchdir"]),
    ]
    assert not any(r[0] == "end" and int(r[2]) == first_pid for r in runs(box, "Slow"))

    # The failed job stayed failed and its bucket was not run again.
    after = api_job(box, failed["scratchdir"])
    assert (after["state"], after["exit_code"], after["attempts"]) == ("failed", 3, 1)
    assert len(runs(box, "Fail")) == 1
    assert len(api_jobs(box)) == 3


def test_a_job_killed_on_its_last_attempt_is_failed_with_the_reason(
    box_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Slow=SLOW)
    hold = home / "memory" / "Slow" / "hold"
    hold.parent.mkdir(parents=True)
    hold.touch()
    box: BoxServer = box_factory(quiet=QUIET, home=home)

    uid = send_study(box, tmp_path, "twice", "Slow")
    for attempt in (1, 2):
        job = one_job(box, uid, "running")
        wait_for(f"run {attempt}", lambda n=attempt: len(runs(box, "Slow")) == n)
        assert job["attempts"] == attempt
        box.kill9()
        box.start()

    job = one_job(box, uid, "failed")
    assert "interrupted" in job["reason"], job
    assert job["attempts"] == 2
    for record in runs(box, "Slow"):
        wait_for("no process of an interrupted run", lambda r=record: not group_members(int(r[2])))
    assert len(runs(box, "Slow")) == 2  # not run a third time
    hold.unlink()


def acknowledged(storescu_output: str) -> set[str]:
    """Files that storescu -v saw a Success response for."""
    acked, current = set(), None
    for line in storescu_output.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response (Success)" in line and current:
            acked.add(Path(current).name)
            current = None
    return acked


@pytest.mark.parametrize(("receiver", "senders"), [("pynetdicom", 1), ("native", 1)])
def test_kill9_during_a_receive_loses_no_acknowledged_file(box_factory, tmp_path: Path,
                                                           receiver: str, senders: int) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    """``senders`` storescu at once (each its own calling AE, so its own job)."""
    home = tmp_path / "home"
    install_buckets(home, Recv=QUICK)
    box: BoxServer = box_factory(
        quiet=QUIET, home=home, extra_args=["--set", f"receiver={receiver}"]
    )
    assert_receiver(box, receiver)

    earlier = write_study(tmp_path / "earlier", n_images=2, rows=16, cols=16)
    assert len(send_files(box.dicom_port, "Recv", earlier.paths).ok) == 2
    (before,) = wait_jobs(box, 1)

    total = 1200
    study = write_study(tmp_path / "big", n_images=total, rows=16, cols=16)
    logs = [tmp_path / f"storescu{i}.out" for i in range(senders)]
    outs = [log.open("w") for log in logs]

    def command(i: int) -> list[str]:
        return [dcmtk("storescu"), "-v", "+sd", "+r", "-nh", "-aet", f"BIGSEND{i}", "-aec",
                "Recv", "127.0.0.1", str(box.dicom_port), str(study.paths[0].parent)]  # fmt: skip

    env = {**os.environ, "TCP_NODELAY": "1"}
    procs = [
        subprocess.Popen(command(i), stdout=out, stderr=subprocess.STDOUT, env=env)
        for i, out in enumerate(outs)
    ]

    def quarter() -> bool:
        return sum(len(acknowledged(log.read_text())) for log in logs) >= total // 4

    try:
        wait_for("a quarter acknowledged", quarter)
        box.kill9()
        codes = [proc.wait(60) for proc in procs]
        assert all(codes), f"a send finished before the kill: nothing was tested ({codes})"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for out in outs:
            out.close()
    acked = [acknowledged(log.read_text()) for log in logs]
    assert total // 4 <= sum(map(len, acked)) < senders * total

    box.start()
    jobs = wait_jobs(box, 1 + sum(1 for a in acked if a))
    assert before["scratchdir"] in {j["scratchdir"] for j in jobs}
    sent = {p.name: p for p in study.paths}
    for i, names in enumerate(acked):
        if not names:
            continue
        (partial,) = [j for j in jobs if j["caller_aet"] == f"BIGSEND{i}"]
        assert partial["study_uid"] == study.study_uid
        assert partial["state"] == "done"
        stored = input_files(box, partial["scratchdir"])
        missing = names - set(stored)
        assert not missing, f"{len(missing)} acknowledged files lost, e.g. {sorted(missing)[:3]}"
        for name, path in stored.items():  # nothing half-written made it into the job
            assert dataset_part(path) == dataset_part(sent[name]), name
    assert not any((box.home / "scratch" / ".incoming").iterdir())
    assert not any((box.home / "scratch" / ".partial").iterdir())


# Its first run starts a child that keeps writing into OUTPUT and waits while
# $MB_MEMORY/hold exists; every later run ends at once.
LEAVES_A_CHILD = """#!/bin/sh
if [ -e "$MB_MEMORY/ran" ]; then echo ok > "$2/done.txt"; exit 0; fi
touch "$MB_MEMORY/ran"
out="$2"
( i=0; while [ $i -lt 600 ]; do date +%s.%N >> "$out/child.txt"; sleep 0.1; i=$((i+1)); done ) &
echo "$$ $!" > "$MB_MEMORY/pids.txt"
while [ -e "$MB_MEMORY/hold" ]; do sleep 0.1; done
"""


def test_a_restart_kills_the_whole_group_even_when_work_sh_had_exited(
    box_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    install_buckets(home, Child=LEAVES_A_CHILD)
    memory = home / "memory" / "Child"
    memory.mkdir(parents=True)
    (memory / "hold").touch()
    box: BoxServer = box_factory(quiet=QUIET, home=home)

    uid = send_study(box, tmp_path, "child", "Child")
    job = one_job(box, uid, "running")
    pids = memory / "pids.txt"
    leader, child = (int(p) for p in wait_for("the child", lambda: pids.exists() and
                                              pids.read_text().split()))  # fmt: skip
    box.kill9()
    # While the box is down work.sh ends; its background child lives on in the group.
    (memory / "hold").unlink()
    wait_for("work.sh to exit", lambda: leader not in group_members(leader))
    assert child in group_members(leader), "the child should outlive work.sh"

    box.start()
    done = wait_state(box, job["scratchdir"], "done", "failed")
    assert done["state"] == "done", done
    assert not group_members(leader), "the interrupted run's child survived the restart"
    output = box.home / "scratch" / job["scratchdir"] / "OUTPUT"
    time.sleep(1.0)  # the child wrote every 0.1 s: a survivor would have written by now
    assert sorted(p.name for p in output.iterdir()) == ["done.txt"]


@pytest.mark.timeout(300)
def test_kill9_during_four_concurrent_associations_loses_no_acknowledged_file(
    box_factory,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    home = tmp_path / "home"
    install_buckets(home, Recv=QUICK)
    box: BoxServer = box_factory(home=home)
    total = 2000  # the native receiver takes ~1000 images/s: none may be done at the kill
    senders: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    # every study written before the first send starts, so the four run side by side
    studies = {f"SEND{n}": write_study(tmp_path / f"SEND{n}", n_images=total, rows=32, cols=32)
               for n in range(4)}  # fmt: skip
    for caller in studies:
        log = tmp_path / f"{caller}.out"
        proc = subprocess.Popen(
            [dcmtk("storescu"), "-v", "+sd", "+r", "-nh", "-aet", caller, "-aec", "Recv",
             "127.0.0.1", str(box.dicom_port), str(studies[caller].paths[0].parent)],
            stdout=log.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )  # fmt: skip
        senders[caller] = (proc, log)

    def all_going() -> bool:  # every association has had some files acknowledged
        return all(len(acknowledged(log.read_text())) >= 5 for _, log in senders.values())

    try:
        wait_for("every association under way", all_going)
        carriers = receiver_workers(box)
        assert len(carriers) == 4, carriers  # the default 4: each carries one of the sends
        box.kill9()
        for pid in carriers:  # a worker leaves with the box: its channel closed
            wait_for(
                f"worker {pid} to end with the box", lambda pid=pid: not pid_alive(pid) or None
            )
        for proc, _log in senders.values():
            proc.wait(60)
    finally:
        for proc, _log in senders.values():
            if proc.poll() is None:
                proc.kill()
    acked = {caller: acknowledged(log.read_text()) for caller, (_p, log) in senders.items()}
    counts = {caller: len(names) for caller, names in acked.items()}
    assert all(n < total for n in counts.values()), f"a send ended before the kill: {counts}"

    box.start()
    jobs = wait_jobs(box, 4)
    for caller, names in acked.items():
        (job,) = [j for j in jobs if j["caller_aet"] == caller]
        assert job["study_uid"] == studies[caller].study_uid
        stored = input_files(box, job["scratchdir"])
        missing = names - set(stored)
        assert not missing, f"{caller}: {len(missing)} acknowledged files lost"
        sent = {p.name: p for p in studies[caller].paths}
        for name, path in stored.items():  # nothing half-written made it into a job
            assert dataset_part(path) == dataset_part(sent[name]), name
    assert not any((box.home / "scratch" / ".partial").iterdir())
