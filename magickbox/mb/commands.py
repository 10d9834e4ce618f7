"""What each ``mb`` command does. Every command returns an exit code; errors that end a
command are raised as :class:`MbError` with the code the shell sees."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magickbox.mb import config
from magickbox.mb.client import Answers, Client, MachineError
from magickbox.mb.config import Machine
from magickbox.mb.multipart import FolderError, FolderScan, scan_folder
from magickbox.mb.progress import Bars, bars
from magickbox.mb.select import SEARCHED, Selection, SelectionError, lacks_patients

# Exit codes (also listed in ``mb --help``).
OK, FAILED, USAGE, NO_MACHINES, MACHINE_DOWN, NO_BUCKET, TIMED_OUT = 0, 1, 2, 3, 4, 5, 6
INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class MbError(Exception):
    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Context:
    """What every command gets: settings, machines, an HTTP client and whether to draw bars."""

    settings: dict[str, Any]
    machines: list[Machine]
    client: Client
    progress: bool
    said: set[str] = field(default_factory=set)  # warnings given once per run

    def warn_once(self, text: str) -> None:
        """A warning that ``pull --wait`` would otherwise repeat at every poll."""
        if text not in self.said:
            self.said.add(text)
            warn(text)


# -- helpers -------------------------------------------------------------------------------
def emit(data: Any) -> None:
    """JSON on stdout, for people and jq alike."""
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    sys.stdout.flush()


def warn(text: str) -> None:
    print(f"mb: {text}", file=sys.stderr)


def need_machines(ctx: Context) -> list[Machine]:
    if not ctx.machines:
        raise MbError(
            "no machines configured: add one with `mb activeMachines add <host> <port>` "
            "(or find them with `mb queryMachines`)",
            NO_MACHINES,
        )
    return ctx.machines


def selection(
    regex: str | None,
    filters: dict[str, list[str]] | None = None,
    machine: list[str] | None = None,
) -> Selection:
    """The jobs a command acts on; a bad regex is a usage error (exit 2)."""
    try:
        return Selection(regex, filters or {}, machine or [])
    except SelectionError as exc:
        raise MbError(str(exc), USAGE) from None


def report(failed: Iterable[MachineError]) -> int:
    """Tell stderr about machines that did not answer; the exit code that follows."""
    code = OK
    for err in failed:
        kind = "did not answer" if err.down else "failed"
        warn(f"machine {err.machine.label} {kind}: {err.reason}")
        code = MACHINE_DOWN
    return code


def all_down(answers: Answers[Any]) -> None:
    if not answers.ok and answers.failed:
        raise MbError("no machine answered", MACHINE_DOWN)


def matching_jobs(ctx: Context, sel: Selection) -> tuple[list[dict[str, Any]], int]:
    """Jobs of every machine that ``sel`` selects, and the exit code for machines down."""
    answers = ctx.client.ask_all(need_machines(ctx), ctx.client.jobs)
    code = report(answers.failed)
    all_down(answers)
    jobs = []
    for machine, rows in answers.ok:
        if sel.filters.get("patient") and rows and lacks_patients(rows):
            ctx.warn_once(f"machine {machine.label} does not report patients: --patient selects "
                      "none of its jobs")  # fmt: skip
        jobs += [job for job in rows if sel.matches(job)]
    return jobs, code


def machine_of(job: dict[str, Any]) -> Machine:
    return Machine(job["Machine"], int(job["Port"]))


def finished(job: dict[str, Any]) -> bool:
    return str(job.get("processingTime", "0")) != "0"


# -- settings and machines -----------------------------------------------------------------
def cmd_set_sender(ctx: Context, sender: str | None) -> int:
    if sender is None:
        emit({"Sender": ctx.settings["Sender"]})
        return OK
    emit({"Sender": config.set_setting("Sender", sender)["Sender"]})
    return OK


def cmd_set_setting(ctx: Context, name: str | None, value: str | None) -> int:
    if name is None:
        emit(ctx.settings)
    elif value is None:
        if name not in ctx.settings:
            raise MbError(f"no setting {name!r} (known: {', '.join(ctx.settings)})", USAGE)
        emit({name: ctx.settings[name]})
    else:
        emit(config.set_setting(name, value))
    return OK


def cmd_active_machines(
    ctx: Context,
    action: str | None,
    host: str | None,
    port: str | None,
    reach: dict[str, Any] | None = None,
) -> int:
    """``reach``: token_file, ca_file, https of a machine being added."""
    if action == "add":
        assert host is not None
        machine = Machine(host, config.parse_port(port or config.DEFAULT_PORT), **(reach or {}))
        machine.token()  # a token file that is missing or readable by others: say so now
        outcome = config.add_machine(machine)
        if outcome != "added":
            warn(
                f"{machine.label} is already active" + ("; updated" if outcome == "updated" else "")
            )
    elif action == "remove":
        assert host is not None
        gone = config.remove_machines(host, config.parse_port(port) if port else None)
        if not gone:
            raise MbError(f"{host}{':' + port if port else ''} is not an active machine", USAGE)
    emit([m.as_json() for m in config.load_machines()])
    return OK


def cmd_query_machines(
    ctx: Context, seconds: float, interfaces: list[str] | None, add: bool
) -> int:
    """Boxes that announce themselves on the network, plus the configured ones."""
    from magickbox.mb.discover import browse

    try:
        found = browse(seconds, interfaces)
    except Exception as exc:  # no multicast here: the configured machines are still listed
        warn(f"could not browse the network with zeroconf: {exc}")
        found = []
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for row in found:  # a box may answer more than once (restarts, several addresses)
        if (row["Machine"], row["Port"]) not in seen:
            seen.add((row["Machine"], row["Port"]))
            rows.append({**row, "Active": machine_of(row) in ctx.machines})
    rows += [
        {**m.as_json(), "Active": True} for m in ctx.machines if (m.host, str(m.port)) not in seen
    ]
    health = ctx.client.ask_all([machine_of(r) for r in rows], ctx.client.health)
    online = {m for m, _ in health.ok}
    for row in rows:
        row["Online"] = machine_of(row) in online
        if add and not row["Active"] and row["Online"]:
            config.add_machine(machine_of(row))
            row["Active"] = True
    emit(rows)
    return OK


def cmd_compute_modules(ctx: Context) -> int:
    """The buckets each active machine offers (getInstalledBuckets.php), with its address."""
    answers = ctx.client.ask_all(need_machines(ctx), ctx.client.buckets)
    code = report(answers.failed)
    all_down(answers)
    emit([{**b, **m.as_json()} for m, rows in answers.ok for b in rows])
    return code


# -- jobs ----------------------------------------------------------------------------------
def cmd_list(ctx: Context, sel: Selection) -> int:
    jobs, code = matching_jobs(ctx, sel)
    if not jobs and sel.regex:  # a user of the old mb may have meant an address or a date
        warn("no job matched; a bare regex searches only the fields that name a job "
             f"({', '.join(SEARCHED)}); --sender and --machine select by address")  # fmt: skip
    emit(jobs)
    return code


def cmd_log(ctx: Context, sel: Selection) -> int:
    """Jobs with their processing log (``log``); a regex match in the log counts too."""
    jobs, code = matching_jobs(ctx, Selection(None, sel.filters, sel.machine))

    def with_log(job: dict[str, Any]) -> dict[str, Any] | None:
        try:
            text = ctx.client.processing_log(machine_of(job), job["scratchdir"])
        except MachineError:
            text = ""  # the machine answered the list a moment ago: leave the log out
        return {**job, "log": text} if sel.searched(job, text) else None

    with ThreadPoolExecutor(max_workers=8) as pool:
        found = [job for job in pool.map(with_log, jobs) if job is not None]
    emit(found)
    return code


# A remove of more jobs than this asks first (unless -y), as does one that selects all.
CONFIRM_ABOVE = 3


def summary(job: dict[str, Any]) -> dict[str, Any]:
    """What a person needs to recognise a job before it goes."""
    keys = ("scratchdir", "jobname", "pid", "AETitleCalled", "AETitleCaller", "status")
    return {**{k: job.get(k, "") for k in keys}, **machine_of(job).as_json()}


def cmd_remove(ctx: Context, sel: Selection, yes: bool, dry_run: bool) -> int:
    jobs, code = matching_jobs(ctx, sel)
    if dry_run:
        warn(f"dry run: {len(jobs)} jobs would be removed; nothing was")
        emit([summary(job) for job in jobs])
        return code
    if jobs and not yes and (len(jobs) > CONFIRM_ABOVE or not sel.narrows):
        confirm_removal(jobs)
    removed: list[dict[str, Any]] = []
    try:
        for job in jobs:
            try:
                ctx.client.delete(machine_of(job), job["scratchdir"])
            except MachineError as exc:
                warn(f"could not remove {job['scratchdir']}: {exc}")
                code = code or FAILED
                continue
            removed.append({"scratchdir": job["scratchdir"], **machine_of(job).as_json()})
    except KeyboardInterrupt:  # say what is already gone
        warn(f"interrupted: {len(removed)} of {len(jobs)} jobs removed")
        code = INTERRUPTED
    emit(removed)
    return code


def confirm_removal(jobs: list[dict[str, Any]], shown: int = 20) -> None:
    """List the jobs on stderr and ask on the terminal; without one, refuse (a script says
    -y). Raises MbError unless the answer is yes."""
    machines = {machine_of(j) for j in jobs}
    if not sys.stdin.isatty():
        raise MbError(
            f"{len(jobs)} jobs match; not removing them without asking: pass -y "
            "(see them first with --dry-run)",
            USAGE,
        )
    for job in jobs[:shown]:
        name = job.get("jobname") or job.get("pid", "")
        print(f"  {job['scratchdir']}  {name}  {job.get('AETitleCalled', '')}  "
              f"{job.get('status', '')}  {machine_of(job).label}", file=sys.stderr)  # fmt: skip
    if len(jobs) > shown:
        print(f"  ... and {len(jobs) - shown} more", file=sys.stderr)
    # The question goes to stderr: stdout carries the JSON.
    print(f"remove these {len(jobs)} jobs on {len(machines)} machine(s)? [y/N] ",
          end="", file=sys.stderr, flush=True)  # fmt: skip
    answer = sys.stdin.readline()
    if answer.strip().lower() not in ("y", "yes"):
        raise MbError("nothing removed", FAILED)


# -- push ----------------------------------------------------------------------------------
@dataclass
class Plan:
    scan: FolderScan
    machine: Machine

    def as_json(self, aetitle: str) -> dict[str, Any]:
        return {
            "folder": str(self.scan.folder),
            "jobname": self.scan.folder.resolve().name,
            "aetitle": aetitle,
            "files": self.scan.nfiles,
            "bytes": self.scan.nbytes,
            **self.machine.as_json(),
        }


def offering(ctx: Context, aetitle: str) -> tuple[dict[Machine, int], int]:
    """Machines that offer bucket ``aetitle`` and their load (queued + running jobs)."""

    def ask(machine: Machine) -> int | None:
        names = {str(b.get("AETitle", "")) for b in ctx.client.buckets(machine)}
        return ctx.client.load(machine) if aetitle in names else None

    answers = ctx.client.ask_all(need_machines(ctx), ask)
    code = report(answers.failed)
    all_down(answers)
    loads = {m: load for m, load in answers.ok if load is not None}
    if not loads:
        asked = ", ".join(m.label for m, _ in answers.ok)
        raise MbError(
            f"no machine offers the bucket {aetitle!r} (asked {asked}; "
            "`mb computeModules` lists the buckets)",
            NO_BUCKET,
        )
    return loads, code


def spread(scans: list[FolderScan], loads: dict[Machine, int]) -> list[Plan]:
    """Each folder to the machine with the least work, counting the folders given so far."""
    load = dict(loads)
    plans = []
    for scan in scans:
        machine = min(load, key=lambda m: load[m])  # ties: the first in the config
        load[machine] += 1
        plans.append(Plan(scan, machine))
    return plans


def cmd_push(
    ctx: Context,
    aetitle: str,
    folders: list[str],
    arguments: str,
    description: str,
    dry_run: bool,
) -> int:
    try:
        scans = [scan_folder(Path(f)) for f in folders]
    except FolderError as exc:
        raise MbError(str(exc), USAGE) from None
    loads, code = offering(ctx, aetitle)
    plans = spread(scans, loads)
    if dry_run:
        emit([{**p.as_json(aetitle), "arguments": arguments} for p in plans])
        return code
    results: list[dict[str, Any]] = [{} for _ in plans]
    try:
        with bars(ctx.progress) as ui:
            ui.batch(f"push {aetitle}", "folders", len(plans))
            upload_all(ctx, ui, plans, results, aetitle, arguments, description, set(loads))
    except KeyboardInterrupt:  # print what reached a box; the boxes drop the cut uploads
        done = sum(1 for r in results if "scratchdir" in r)
        warn(f"interrupted: {done} of {len(plans)} folders pushed")
        emit(
            [
                r or {**p.as_json(aetitle), "error": "interrupted"}
                for p, r in zip(plans, results, strict=True)
            ]
        )
        return INTERRUPTED
    emit(results)
    # A machine that was down is reported above, but when every folder found a machine
    # the push did its work: scripts under `set -e` go on.
    return FAILED if any("error" in r for r in results) else OK


def upload_all(
    ctx: Context,
    ui: Bars,
    plans: list[Plan],
    results: list[dict[str, Any]],
    aetitle: str,
    arguments: str,
    description: str,
    offered: set[Machine],
) -> None:
    """Upload the plans into ``results`` (same order), one stream per machine at a time,
    machines in parallel; what is done is there when Ctrl-C ends the wait."""
    per_machine: dict[Machine, list[int]] = {}
    for i, plan in enumerate(plans):
        per_machine.setdefault(plan.machine, []).append(i)

    def run(indexes: list[int]) -> None:
        for i in indexes:
            results[i] = push_one(ctx, ui, plans[i], aetitle, arguments, description, offered)
            ui.step()

    # Daemon threads joined in short waits: Ctrl-C reaches the main thread at once and mb
    # exits; the boxes discard the uploads that broke off.
    threads = [threading.Thread(target=run, args=(ix,), daemon=True) for ix in per_machine.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)


def push_one(
    ctx: Context,
    ui: Bars,
    plan: Plan,
    aetitle: str,
    arguments: str,
    description: str,
    offered: set[Machine],
) -> dict[str, Any]:
    """Upload one folder; a machine that refuses the connection hands over to another."""
    jobname = plan.scan.folder.resolve().name
    fields = {
        "aetitle": aetitle,
        "filename": f"{jobname}.zip",
        "sender": str(ctx.settings["Sender"]),
        "jobname": jobname,
        "arguments": arguments,
        "description": description,
    }
    tried: list[str] = []
    while True:
        label = f"{jobname} ({plan.scan.nfiles} files) → {plan.machine.label}"
        try:
            answer = ctx.client.upload(
                plan.machine, plan.scan, fields, ui.bar(label, plan.scan.zip_size)
            )
        except MachineError as exc:
            tried.append(plan.machine.label)
            offered.discard(plan.machine)
            ui.finish(label)
            if not (exc.down and exc.refused and offered):
                ui.note(f"mb: push of {plan.scan.folder} failed: {exc}")
                return {**plan.as_json(aetitle), "error": str(exc)}
            ui.note(f"mb: {plan.machine.label} refused the connection; trying another machine")
            plan = Plan(plan.scan, sorted(offered)[0])
            continue
        ui.finish(label)
        return {**plan.as_json(aetitle), **_pushed(answer)}


def _pushed(answer: dict[str, Any]) -> dict[str, Any]:
    keep = ("scratchdir", "pid", "files")
    return {k: (str(answer[k]) if k != "files" else answer[k]) for k in keep if k in answer}
