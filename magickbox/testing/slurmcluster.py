"""A private single-node Slurm cluster (slurmctld + slurmd + munged) for tests and benchmarks.

Everything lives under one temporary folder with its own slurm.conf and free ports, so
it does not touch a real cluster's configuration; the daemons run as root (Slurm's
single-node setup) and are stopped by their pid files.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SBIN = ("/usr/sbin", "/usr/bin")


def find(name: str) -> str | None:
    for folder in SBIN:
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    return shutil.which(name)


def available() -> bool:
    return find("slurmctld") is not None and find("slurmd") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_munge() -> None:
    """munged running with a key (the package makes one; else a random one)."""
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    munged = find("munged") or "munged"
    subprocess.run(["runuser", "-u", "munge", "--", munged, "--force"], check=True)


class SlurmCluster:
    def __init__(self, root: Path, cpus: int = 4) -> None:
        self.root = root
        self.cpus = cpus
        self.conf = root / "slurm.conf"
        self.host = socket.gethostname()

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_conf(self) -> None:
        r = self.root
        for sub in ("state", "spool", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        lines = [
            "ClusterName=t",
            f"SlurmctldHost={self.host}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "SlurmUser=root",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            # Time limits end a job at its limit (Slurm still checks them only every 30 s).
            "OverTimeLimit=0",
            "InactiveLimit=0",
            "KillWait=2",
            # Start jobs at once: no batching of submissions, and the pending ones (held and
            # released, or waiting for a free CPU) tried every second instead of every minute.
            "SchedulerParameters=batch_sched_delay=0,sched_interval=1",
            # Clients give up on a stopped slurmctld after seconds, not the default 10.
            "MessageTimeout=3",
            # The node has the CPUs the conf says (more than the machine's: jobs of tests
            # mostly sleep), so that a few run side by side.
            "SlurmdParameters=config_overrides",
            f"NodeName={self.host} CPUs={self.cpus} RealMemory=2000 State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 60.0) -> None:
        ensure_munge()
        self.write_conf()
        self.start_ctld()
        subprocess.run([find("slurmd") or "slurmd", "-f", str(self.conf)], check=True)
        self.wait_idle(timeout)

    def start_ctld(self) -> None:
        subprocess.run([find("slurmctld") or "slurmctld", "-f", str(self.conf)], check=True)

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.cmd("sinfo", "-h", "-o", "%t", check=False).stdout
            if out.strip() in ("idle", "mix", "alloc"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"slurm node not idle: {out!r}")

    def cmd(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, check=check, timeout=60
        )

    def squeue_count(self) -> int:
        """Jobs in the queue, but for a box's start-up check (magickbox-check)."""
        out = self.cmd("squeue", "-h", "-o", "%j", check=False).stdout
        return sum(1 for name in out.split() if name != "magickbox-check")

    def stop_daemon(self, *which: str) -> None:
        """SIGTERM to each daemon named, at once; then wait for all (SIGKILL after 10 s)."""
        pids = [pid for name in which if (pid := self._signal(name, signal.SIGTERM))]
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.05)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

    def _signal(self, which: str, sig: int) -> int | None:
        try:
            pid = int((self.root / f"{which}.pid").read_text().strip())
            os.kill(pid, sig)
        except (OSError, ValueError):
            return None
        return pid

    def stop(self) -> None:
        self.cmd("scancel", "--user=root", check=False)
        self.stop_daemon("slurmd", "slurmctld")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
