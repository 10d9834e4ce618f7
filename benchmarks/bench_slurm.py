"""Throughput of the Slurm executor against ``sbatch --wait`` by hand, on one private cluster.

N jobs of a do-nothing work.sh each way, in one run (so the ratio compares like with like):
- executor: all N handed to SlurmExecutor.start at once, timed until the last done callback
  (slurm.sh written, sbatch, squeue polling, exit file read);
- by hand: N ``sbatch --wait`` of the same script, at most ``--parallel`` at a time
  (the executor's slurm_max_submitted);
- local: the LocalExecutor on the same jobs, for scale.

Each way is reported as total seconds, seconds per job and jobs per minute; the executor's
submission overhead per job is the mean wall time of its sbatch calls (script written,
``sbatch --parsable``, id file), against a bare ``sbatch --parsable`` by hand of a held job.

    python benchmarks/bench_slurm.py [-n 100] [--parallel 50]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from magickbox.buckets.runner import Executor, LocalExecutor, RunRequest, RunResult, build_request
from magickbox.buckets.slurm import SlurmExecutor, batch_script
from magickbox.config import Settings
from magickbox.testing.slurmcluster import SlurmCluster

NOOP = "#!/bin/sh\nexit 0\n"
RESULTS = Path(__file__).parent / "results" / "slurm.json"


def requests(settings: Settings, base: Path, n: int, executor: str) -> list[RunRequest]:
    base.mkdir(parents=True, exist_ok=True)
    work = base / "work.sh"
    work.write_text(NOOP)
    work.chmod(0o755)
    out = []
    for i in range(n):
        job_dir = base / f"{executor}.{i:04d}"
        (job_dir / "INPUT").mkdir(parents=True)
        (job_dir / "OUTPUT").mkdir()
        facts = {"MB_SCRATCHDIR": job_dir.name, "MB_MEMORY": str(base)}
        info: dict[str, object] = {"executor": executor}
        out.append(build_request(info, work, settings, facts, job_dir, [], 600))
    return out


def through(executor: Executor, reqs: list[RunRequest]) -> float:
    left = len(reqs)
    lock = threading.Lock()
    all_done = threading.Event()
    codes: list[int | None] = []

    def done(_req: RunRequest, result: RunResult) -> None:
        nonlocal left
        with lock:
            codes.append(result.exit_code)
            left -= 1
            if left == 0:
                all_done.set()

    started = time.perf_counter()
    for req in reqs:
        executor.start(req, done)
    all_done.wait()
    elapsed = time.perf_counter() - started
    assert codes == [0] * len(reqs), codes
    return elapsed


class TimedSlurm(SlurmExecutor):
    """The executor with the wall time of each submission (script, sbatch, id) noted."""

    def __init__(self, settings: Settings) -> None:
        self.submit_times: list[float] = []
        super().__init__(settings)

    def _sbatch(self, req: RunRequest) -> str:
        started = time.perf_counter()
        try:
            return super()._sbatch(req)
        finally:
            self.submit_times.append(time.perf_counter() - started)


def bare_sbatch(cluster: SlurmCluster, settings: Settings, reqs: list[RunRequest]) -> float:
    """Mean seconds of one ``sbatch --parsable --hold`` by hand (held: nothing runs)."""
    times = []
    for req in reqs:
        script = req.job_dir / "slurm.sh"
        script.write_text(batch_script(req, settings))
        started = time.perf_counter()
        subprocess.run(["sbatch", "--parsable", "--hold", str(script)], env=cluster.env,
                       check=True, capture_output=True)  # fmt: skip
        times.append(time.perf_counter() - started)
    cluster.cmd("scancel", "--user=root", check=False)
    return sum(times) / len(times)


def by_hand(cluster: SlurmCluster, settings: Settings, reqs: list[RunRequest], par: int) -> float:
    def one(req: RunRequest) -> None:
        script = req.job_dir / "slurm.sh"
        script.write_text(batch_script(req, settings))
        # No timeout: a --wait behind dozens of queued jobs waits minutes on two cores.
        argv = ["sbatch", "--wait", "--parsable", str(script)]
        subprocess.run(argv, env=cluster.env, check=True, capture_output=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(par) as pool:
        list(pool.map(one, reqs))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        # A node of the machine's own size: the tests' cluster claims more CPUs than it has.
        cluster = SlurmCluster(base / "cluster", cpus=os.cpu_count() or 2)
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        try:
            settings = Settings(home=base, slurm_max_submitted=args.parallel)
            slurm = TimedSlurm(settings)
            t_exec = through(slurm, requests(settings, base / "e", args.n, "slurm"))
            slurm.shutdown()
            submit = sum(slurm.submit_times) / len(slurm.submit_times)
            bare = bare_sbatch(cluster, settings, requests(settings, base / "b", 20, "slurm"))
            t_hand = by_hand(
                cluster, settings, requests(settings, base / "h", args.n, "s"), args.parallel
            )
            t_local = through(LocalExecutor(), requests(settings, base / "l", args.n, "local"))
        finally:
            cluster.stop()
    result = {
        "jobs": args.n,
        "parallel": args.parallel,
        "executor_s": round(t_exec, 2),
        "sbatch_wait_by_hand_s": round(t_hand, 2),
        "ratio_executor_to_hand": round(t_exec / t_hand, 2),
        "local_s": round(t_local, 2),
        "per_job_s": {k: round(v / args.n, 3) for k, v in
                      (("executor", t_exec), ("by_hand", t_hand), ("local", t_local))},
        "jobs_per_min": {k: round(60 * args.n / v, 1) for k, v in
                         (("executor", t_exec), ("by_hand", t_hand), ("local", t_local))},
        "submit_overhead_per_job_s": {"executor": round(submit, 3),
                                      "bare_sbatch_by_hand": round(bare, 3),
                                      "ratio": round(submit / bare, 2)},
    }  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
