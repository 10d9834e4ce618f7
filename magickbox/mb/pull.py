"""``mb pull`` and ``mb pull-input``: download the selected jobs' OUTPUT (or INPUT) zips,
optionally waiting for them, and say what became of every job, in JSON on stdout and in a
manifest CSV, also when the wait times out or Ctrl-C ends it."""

from __future__ import annotations

import csv
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magickbox.mb.client import MachineError, zip_complete
from magickbox.mb.commands import (
    FAILED,
    INTERRUPTED,
    OK,
    TIMED_OUT,
    Context,
    emit,
    finished,
    machine_of,
    matching_jobs,
    warn,
)
from magickbox.mb.config import Machine
from magickbox.mb.progress import Bars, bars
from magickbox.mb.select import Selection

MANIFEST_COLUMNS = ("jobname", "study", "state", "reason", "file", "scratchdir", "Machine",
                    "Port", "status")  # fmt: skip
NAMES = ("jobname", "pid")  # --names: ours, or the original's <pid>_<scratchdir>.zip
Key = tuple[str, str, str]  # (Machine, Port, scratchdir)


@dataclass
class PullOptions:
    part: str = "output"  # or "input"
    folder: Path = Path(".")
    wait: bool = False
    poll: float = 5.0
    timeout: float | None = None  # seconds --wait waits at most
    failed: bool = False  # pull failed jobs' OUTPUT too
    names: str = "jobname"
    manifest: Path | None = None  # default: <folder>/manifest[-input].csv

    @property
    def manifest_path(self) -> Path:
        default = "manifest.csv" if self.part == "output" else "manifest-input.csv"
        return self.manifest or self.folder / default


def count_jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def key_of(job: dict[str, Any]) -> Key:
    return (str(job["Machine"]), str(job["Port"]), str(job["scratchdir"]))


def safe(text: str) -> str:
    """A name, never a path: anything but letters, digits, ``.``, ``_`` and ``-`` becomes _."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def zip_name(job: dict[str, Any], part: str, names: str = "jobname") -> str:
    """``<jobname or PatientID>_<scratchdir>.zip`` (``names="pid"``: the original's
    ``<pid>_<scratchdir>.zip``); inputs get ``_input``."""
    pid = str(job.get("pid", ""))
    first = pid if names == "pid" else job.get("jobname") or job.get("PatientID") or pid
    suffix = "_input" if part == "input" else ""
    return f"{safe(str(first))}_{job['scratchdir']}{suffix}.zip"


def row_of(job: dict[str, Any], status: str, file: str = "", reason: str = "") -> dict[str, Any]:
    """One line of the JSON and of the manifest."""
    return {
        "jobname": str(job.get("jobname", "")),
        "study": str(job.get("StudyInstanceUID") or job.get("pid", "")),
        "state": str(job.get("status", "")),
        "reason": reason,
        "file": file,
        "scratchdir": job["scratchdir"],
        **machine_of(job).as_json(),
        "status": status,
    }


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    """The rows as CSV, written under a temporary name and renamed: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, MANIFEST_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Puller:
    """One ``mb pull``: the rows of the jobs dealt with, and the jobs still to deal with."""

    def __init__(self, ctx: Context, sel: Selection, opts: PullOptions) -> None:
        self.ctx, self.sel, self.opts = ctx, sel, opts
        self.done: dict[Key, dict[str, Any]] = {}
        self.left: dict[Key, dict[str, Any]] = {}  # selected, not (yet) dealt with
        self.reasons: dict[Machine, dict[str, str]] = {}
        self.code = OK
        self._said = ""

    def run(self) -> None:
        deadline = None if self.opts.timeout is None else time.monotonic() + self.opts.timeout
        with bars(self.ctx.progress) as ui:
            while True:
                self.round(ui)
                if not self.opts.wait or not self.left:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self.gave_up(ui)
                    break
                self.say_waiting(ui, remaining)
                time.sleep(self.opts.poll if remaining is None else min(self.opts.poll, remaining))
        if self.left and not self.opts.wait:
            warn(f"{count_jobs(len(self.left))} not finished yet (mb pull --wait waits)")

    def round(self, ui: Bars) -> None:
        """Ask the machines once and deal with every selected job that is ready."""
        jobs, down = matching_jobs(self.ctx, self.sel)
        self.code = self.code or down
        self.left = {key_of(j): j for j in jobs if key_of(j) not in self.done}
        ui.batch(f"pull {self.opts.part.upper()}", "jobs", len(self.done) + len(self.left))
        self.fetch_reasons([j for j in self.left.values() if j.get("status") == "failed"])
        for key, job in list(self.left.items()):
            row = self.deal_with(ui, job)
            if row is not None:
                self.done[key] = row
                del self.left[key]
                ui.step()

    def deal_with(self, ui: Bars, job: dict[str, Any]) -> dict[str, Any] | None:
        """The row for a job that is ready (pulled, already there, or failed and skipped);
        None for a job to wait for."""
        if self.opts.part == "output" and not finished(job):
            return None
        reason = self.reasons.get(machine_of(job), {}).get(job["scratchdir"], "")
        if self.opts.part == "output" and job.get("status") == "failed" and not self.opts.failed:
            return row_of(job, "job-failed", reason=reason)  # its OUTPUT is no result
        return self.pull_one(ui, job, reason)

    def pull_one(self, ui: Bars, job: dict[str, Any], reason: str) -> dict[str, Any]:
        dest = self.opts.folder / zip_name(job, self.opts.part, self.opts.names)
        if dest.exists() and zip_complete(dest):
            return {**row_of(job, "skipped", str(dest), reason), "bytes": dest.stat().st_size}
        machine = machine_of(job)
        part = " INPUT" if self.opts.part == "input" else ""
        label = f"{job.get('jobname') or job['scratchdir']}{part} ← {machine.label}"
        try:
            size = self.ctx.client.download(
                machine, job["scratchdir"], dest, self.opts.part, ui.bar(label, None)
            )
        except (MachineError, OSError) as exc:
            ui.note(f"mb: could not pull {job['scratchdir']}: {exc}")
            self.code = self.code or FAILED
            return {**row_of(job, "failed", reason=reason), "error": str(exc)}
        finally:
            ui.finish(label)
        return {**row_of(job, "downloaded", str(dest), reason), "bytes": size}

    def fetch_reasons(self, failed: list[dict[str, Any]]) -> None:
        """Learn why the failed jobs failed, one request per machine that has new ones."""
        for machine in {machine_of(j) for j in failed}:
            known = self.reasons.get(machine, {})
            if all(j["scratchdir"] in known for j in failed if machine_of(j) == machine):
                continue
            try:
                self.reasons[machine] = self.ctx.client.failure_reasons(machine)
            except MachineError as exc:  # a box without /api/v1: rows without a reason
                self.ctx.warn_once(f"no failure reasons from {machine.label}: {exc.reason}")
                self.reasons[machine] = known

    def say_waiting(self, ui: Bars, remaining: float | None, shown: int = 5) -> None:
        """Tell stderr what the wait is for, whenever that changes."""
        states = Counter(str(j.get("status", "?")) for j in self.left.values())
        names = [str(j.get("jobname") or j["scratchdir"]) for j in self.left.values()]
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        by_state = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        text = f"mb: waiting for {count_jobs(len(names))} ({by_state}): "
        text += ", ".join(names[:shown]) + more
        if text != self._said:
            self._said = text
            end = "no --timeout" if remaining is None else f"gives up in {remaining:.0f} s"
            ui.note(f"{text}; {end}")

    def gave_up(self, ui: Bars) -> None:
        names = ", ".join(str(j.get("jobname") or j["scratchdir"]) for j in self.left.values())
        left = count_jobs(len(self.left))
        ui.note(f"mb: --timeout {self.opts.timeout:g} s passed; {left} not finished: {names}")
        self.code = self.code or TIMED_OUT

    def rows(self) -> list[dict[str, Any]]:
        """Every selected job: those dealt with, then those left (not finished yet, or
        finished but not reached before Ctrl-C)."""
        left = [
            row_of(j, "not-finished" if not finished(j) else "interrupted")
            for j in self.left.values()
        ]
        return [*self.done.values(), *left]


def cmd_pull(ctx: Context, sel: Selection, opts: PullOptions) -> int:
    """Download each selected job's OUTPUT (or INPUT); with ``wait``, until all are done."""
    opts.folder.mkdir(parents=True, exist_ok=True)
    puller = Puller(ctx, sel, opts)
    try:
        puller.run()
    except KeyboardInterrupt:  # what was done is still printed and written down
        puller.code = INTERRUPTED
        pulled = sum(1 for r in puller.done.values() if r["status"] in ("downloaded", "skipped"))
        total = count_jobs(len(puller.done) + len(puller.left))
        warn(f"interrupted: {pulled} of {total} pulled; see the JSON and {opts.manifest_path}")
    rows = puller.rows()
    write_manifest(opts.manifest_path, rows)
    emit(rows)
    return puller.code
