"""Per-job overhead of the container runner against ``podman run`` of the same image by hand.

An image whose work.sh does nothing is run N times each way, interleaved, in one run:
- runner: MagickBox's LocalExecutor with the RunRequest the box builds for a container
  bucket (named, labelled, --user, /input ro, /output, /memory, --network none, MB_* env),
  timed from start() to its done callback (the PID file and the log included);
- the runner's own argv by hand (subprocess.run): what the extra flags cost the engine,
  as opposed to the runner's Python;
- by hand: ``podman <engine args> run --rm --network none <run args> -v IN:/input:ro
  -v OUT:/output IMAGE /root/work.sh /input /output``, timed around subprocess.run.

    python benchmarks/bench_container.py [-n 15] [--engine-args JSON] [--run-args JSON]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from magickbox.buckets.container import Engine
from magickbox.buckets.image import build_image
from magickbox.buckets.runner import LocalExecutor, RunRequest, RunResult, build_request
from magickbox.config import Settings

NOOP = b"#!/bin/sh\nexit 0\n"
RESULTS = Path(__file__).parent / "results" / "container.json"


def make_request(settings: Settings, tag: str, base: Path, name: str) -> RunRequest:
    job_dir = base / name
    (job_dir / "INPUT").mkdir(parents=True)
    (job_dir / "OUTPUT").mkdir()
    memory = base / "memory"
    memory.mkdir(exist_ok=True)
    facts = {"MB_SCRATCHDIR": job_dir.name, "MB_MEMORY": str(memory), "MB_AETITLE_CALLED": "N"}
    return build_request({"image": tag}, Path("/none"), settings, facts, job_dir, [], 600)


def same_argv_once(settings: Settings, tag: str, base: Path, i: int) -> float:
    req = make_request(settings, tag, base, f"tmp.s{i:04d}")
    started = time.perf_counter()
    subprocess.run(req.argv(), check=True, capture_output=True, env=req.env)
    return time.perf_counter() - started


def runner_once(settings: Settings, tag: str, base: Path, i: int) -> float:
    req = make_request(settings, tag, base, f"tmp.r{i:04d}")
    finished = threading.Event()
    outcome: list[RunResult] = []

    def done(_req: RunRequest, result: RunResult) -> None:
        outcome.append(result)
        finished.set()

    started = time.perf_counter()
    LocalExecutor().start(req, done)
    finished.wait()
    elapsed = time.perf_counter() - started
    assert outcome[0].exit_code == 0 and not outcome[0].reason, outcome[0]
    return elapsed


def by_hand_once(engine: Engine, tag: str, base: Path, i: int) -> float:
    job_dir = base / f"tmp.h{i:04d}"
    (job_dir / "INPUT").mkdir(parents=True)
    (job_dir / "OUTPUT").mkdir()
    argv = engine.argv(
        "run",
        "--rm",
        "--network",
        "none",
        *engine.run_args,
        "-v",
        f"{job_dir / 'INPUT'}:/input:ro",
        "-v",
        f"{job_dir / 'OUTPUT'}:/output",
        tag,
        "/root/work.sh",
        "/input",
        "/output",
    )
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="runs of each (default 15)")
    parser.add_argument(
        "--engine-args", default='["--runtime", "runc", "--cgroup-manager=cgroupfs"]'
    )
    parser.add_argument(
        "--run-args", default='["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1000:1000"]'
    )
    args = parser.parse_args()
    engine_args, run_args = json.loads(args.engine_args), json.loads(args.run_args)
    program = shutil.which("podman")
    assert program, "podman is not installed"
    engine = Engine(program, tuple(engine_args), tuple(run_args))
    tag = "localhost/mb-bench-noop:1"
    build_image(engine, tag, {"/root/work.sh": NOOP})
    runner: list[float] = []
    hand: list[float] = []
    same: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mb-bench-") as tmp:
            settings = Settings(
                home=Path(tmp),
                container_engine="podman",
                engine_args=engine_args,
                run_args=run_args,
            )
            runner_once(settings, tag, Path(tmp), 9999)  # warm caches, not counted
            for i in range(args.n):  # interleaved: both see the same machine load
                runner.append(runner_once(settings, tag, Path(tmp), i))
                hand.append(by_hand_once(engine, tag, Path(tmp), i))
                same.append(same_argv_once(settings, tag, Path(tmp), i))
    finally:
        engine.call("rmi", "-f", tag)
    med_r, med_h, med_s = (statistics.median(x) for x in (runner, hand, same))
    report = {
        "runs": args.n,
        "runner_median_s": round(med_r, 4),
        "by_hand_median_s": round(med_h, 4),
        "runner_argv_by_hand_median_s": round(med_s, 4),
        "ratio": round(med_r / med_h, 3),
        "overhead_ms": round((med_r - med_h) * 1000, 1),
        "runner_s": [round(x, 4) for x in runner],
        "by_hand_s": [round(x, 4) for x in hand],
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"container job, median of {args.n}: runner {med_r * 1000:.0f} ms, "
        f"podman run by hand {med_h * 1000:.0f} ms, ratio {med_r / med_h:.2f} "
        f"(+{(med_r - med_h) * 1000:.0f} ms per job); the runner's argv by hand "
        f"{med_s * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
