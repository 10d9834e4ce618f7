"""``mb``: process a whole project on several MagickBox machines from one shell.

Commands and aliases are the original's; output is JSON on stdout (for jq), messages go
to stderr, progress bars appear only on a terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from magickbox.mb import commands, config, rerun
from magickbox.mb.client import Client
from magickbox.mb.commands import Context, MbError
from magickbox.mb.progress import wanted as progress_wanted
from magickbox.mb.pull import NAMES, PullOptions, cmd_pull
from magickbox.mb.select import FILTER_FIELDS, SEARCHED, STATES, Selection

EPILOG = """\
exit codes: 0 ok, 1 a transfer or deletion failed, 2 bad arguments (invalid regex,
folder missing or empty, a remove to confirm without a terminal), 3 no machines
configured, 4 a machine did not answer (the others' results are still printed), 5 no
machine offers the bucket, 6 pull --wait --timeout passed, 130 Ctrl-C (what was done is
still printed).
config: machines.json and settings.json in $MB_CONFIG_DIR, else
$XDG_CONFIG_HOME/magickbox, else ~/.config/magickbox."""

REGEX_HELP = (
    "regular expression searched in the fields that name a job: "
    + ", ".join(SEARCHED)
    + " (default: all jobs)"
)
FILTERS_HELP = """\
filters (repeatable, any of a filter's patterns; all filters must pass) compare whole
values with shell patterns such as 'sub-00*', case-sensitively"""


def add_selection(p: argparse.ArgumentParser) -> None:
    """The regex and the field filters of list, log, pull, pull-input and remove."""
    p.add_argument("regex", nargs="?", help=REGEX_HELP)
    group = p.add_argument_group("filters", FILTERS_HELP)
    for name, what in (
        ("jobname", "the job's name (mb push: the folder's name)"),
        ("bucket", "the bucket (AETitleCalled)"),
        ("sender", "the sender's AE title (AETitleCaller) or IP address (CallerIP)"),
        ("patient", "PatientID or PatientName (boxes that report them)"),
        ("machine", "the machine, as host or host:port"),
    ):
        group.add_argument(f"--{name}", action="append", default=[], metavar="PATTERN", help=what)
    group.add_argument("--state", action="append", default=[], choices=STATES, help="the state")


def selection_of(args: argparse.Namespace) -> Selection:
    filters = {name: getattr(args, name) for name in FILTER_FIELDS}
    return commands.selection(args.regex, filters, args.machine)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mb",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--no-progress", action="store_true", help="never draw progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    _settings_commands(sub)
    _machine_commands(sub)
    _job_commands(sub)
    return parser


def _settings_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "setSender", aliases=["w"], help="the sender name (AETitleCaller) of pushes (w)"
    )
    p.add_argument("sender", nargs="?", help="new sender; without it, print the current one")
    p = sub.add_parser("setSetting", help="print or change settings (Sender, Timeout)")
    p.add_argument("name", nargs="?", help="setting name; without it, print all settings")
    p.add_argument("value", nargs="?", help="new value; without it, print the setting")


def _machine_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("activeMachines", aliases=["a"], help="list, add or remove machines (a)")
    actions = p.add_subparsers(dest="action", metavar="action")
    add = actions.add_parser("add", help="add a machine")
    add.add_argument("host")
    add.add_argument("port", nargs="?", help=f"web port (default {config.DEFAULT_PORT})")
    add.add_argument("--token-file", default="", help="file (mode 0600) holding an API token")
    add.add_argument("--ca-file", default="", help="CA of the box's certificate (then HTTPS)")
    add.add_argument("--https", action="store_true", help="HTTPS with the system's CAs")
    rm = actions.add_parser("remove", help="remove a machine (all its ports unless given)")
    rm.add_argument("host")
    rm.add_argument("port", nargs="?")
    p = sub.add_parser(
        "queryMachines", aliases=["q"], help="find boxes on the local network (zeroconf) (q)"
    )
    p.add_argument("--seconds", type=float, default=2.0, help="how long to listen (default 2)")
    p.add_argument(
        "--interface",
        action="append",
        help="IPv4 address of an interface to listen on (repeatable; default all)",
    )
    p.add_argument("--add", action="store_true", help="make every box found that answers active")
    sub.add_parser(
        "computeModules", aliases=["c"], help="the buckets the active machines offer (c)"
    )


def _job_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        aliases=["p"],
        help="zip folders and send them to the least loaded machine offering the bucket (p)",
        description="One job per folder (jobname = folder name), spread over the machines "
        "offering the bucket by their queued+running jobs. The original's form "
        "`push <aetitle> <dir> <arguments>` works when <arguments> is not a path.",
    )
    p.add_argument("aetitle", help="the bucket (called AE title)")
    p.add_argument("folders", nargs="+", help="folders to send, one job each")
    p.add_argument("--arguments", default=None, help="arguments for the bucket's work.sh")
    p.add_argument("--description", default="", help="a description stored with the job")
    p.add_argument("--dry-run", action="store_true", help="show what would go where, send nothing")
    for name, alias, what in (("list", "l", "jobs"), ("log", "g", "jobs with processing log")):
        p = sub.add_parser(name, aliases=[alias], help=f"{what} of all machines as JSON ({alias})")
        add_selection(p)
    _pull_commands(sub)
    p = sub.add_parser(
        "remove",
        aliases=["r"],
        help="delete matching jobs on their machines (r)",
        description=f"Asks on the terminal when more than {commands.CONFIRM_ABOVE} jobs match "
        "or nothing narrows the selection; without a terminal it then refuses unless -y.",
    )
    add_selection(p)
    p.add_argument("-y", "--yes", action="store_true", help="remove without asking")
    p.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    p = sub.add_parser(
        "run",
        help="run a bucket again on studies in the machines' archives",
        description="One new job per archived study, on the first machine (in the config's "
        "order) that has the study and offers the bucket.",
    )
    p.add_argument("aetitle", help="the bucket (called AE title)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", nargs="+", metavar="UID", help="StudyInstanceUIDs")
    which.add_argument(
        "--match", metavar="REGEX", help="regular expression searched in each archived study's "
        "values (PatientID, PatientName, AccessionNumber, StudyDate, StudyDescription, UID)",
    )
    p.add_argument("--arguments", default="", help="arguments for the bucket's work.sh")
    p.add_argument("--description", default="", help="a description stored with each job")
    p.add_argument("--dry-run", action="store_true", help="show what would run where")


def _pull_commands(sub: argparse._SubParsersAction) -> None:
    for name, aliases, part in (("pull", [], "OUTPUT"), ("pull-input", ["pi"], "INPUT")):
        suffix = "_input" if part == "INPUT" else ""
        p = sub.add_parser(
            name,
            aliases=aliases,
            help=f"download each matching job's {part} as <jobname>_<scratchdir>{suffix}.zip",
            description=f"Zips are named <jobname or PatientID>_<scratchdir>{suffix}.zip "
            f"(--names pid: the original's <pid>_<scratchdir>{suffix}.zip). A manifest CSV "
            "(jobname, study, state, reason, file, ...) lists every matching job, also after "
            "a --timeout or Ctrl-C.",
        )
        add_selection(p)
        p.add_argument("-d", "--dir", type=Path, default=Path("."), help="where to save")
        p.add_argument("--names", choices=NAMES, default="jobname", help="how zips are named")
        p.add_argument("--manifest", type=Path, default=None,
                       help="the manifest CSV (default: DIR/manifest.csv, "
                       "DIR/manifest-input.csv for pull-input)")  # fmt: skip
        if part == "OUTPUT":
            p.add_argument("--wait", action="store_true", help="wait until matching jobs finish")
            p.add_argument("--poll", type=float, default=5.0, help="seconds between checks")
            p.add_argument(
                "--timeout", type=positive, default=None, help="with --wait: give up after "
                "this many seconds (exit 6)"
            )  # fmt: skip
            p.add_argument(
                "--failed", action="store_true", help="pull failed jobs' OUTPUT too "
                "(default: listed in the JSON and manifest, not pulled)"
            )  # fmt: skip


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


ALIASES = {
    "w": "setSender",
    "a": "activeMachines",
    "q": "queryMachines",
    "c": "computeModules",
    "p": "push",
    "l": "list",
    "g": "log",
    "pi": "pull-input",
    "r": "remove",
}


def push_args(args: argparse.Namespace) -> tuple[list[str], str]:
    """The folders and the arguments, accepting the original's ``push <aet> <dir> <args>``."""
    folders, arguments = list(args.folders), args.arguments
    if arguments is None and len(folders) == 2 and not Path(folders[1]).exists():
        folders, arguments = folders[:1], folders[1]
    return folders, arguments or ""


def pull_options(args: argparse.Namespace, command: str) -> PullOptions:
    return PullOptions(
        part="output" if command == "pull" else "input",
        folder=args.dir,
        wait=getattr(args, "wait", False),
        poll=getattr(args, "poll", 5.0),
        timeout=getattr(args, "timeout", None),
        failed=getattr(args, "failed", False),
        names=args.names,
        manifest=args.manifest,
    )


def run(args: argparse.Namespace, ctx: Context) -> int:
    command = ALIASES.get(args.command, args.command)
    if command == "setSender":
        return commands.cmd_set_sender(ctx, args.sender)
    if command == "setSetting":
        return commands.cmd_set_setting(ctx, args.name, args.value)
    if command == "activeMachines":
        action = args.action
        reach = machine_reach(args)
        return commands.cmd_active_machines(
            ctx, action, getattr(args, "host", None), getattr(args, "port", None), reach
        )
    if command == "queryMachines":
        return commands.cmd_query_machines(ctx, args.seconds, args.interface, args.add)
    if command == "computeModules":
        return commands.cmd_compute_modules(ctx)
    if command == "push":
        folders, arguments = push_args(args)
        return commands.cmd_push(
            ctx, args.aetitle, folders, arguments, args.description, args.dry_run
        )
    if command == "list":
        return commands.cmd_list(ctx, selection_of(args))
    if command == "log":
        return commands.cmd_log(ctx, selection_of(args))
    if command in ("pull", "pull-input"):
        return cmd_pull(ctx, selection_of(args), pull_options(args, command))
    if command == "remove":
        return commands.cmd_remove(ctx, selection_of(args), args.yes, args.dry_run)
    if command == "run":
        return rerun.cmd_run(ctx, args.aetitle, args.study, args.match, args.arguments,
                             args.description, args.dry_run)  # fmt: skip
    raise MbError(f"unknown command {args.command}", commands.USAGE)


def machine_reach(args: argparse.Namespace) -> dict[str, object]:
    """--token-file, --ca-file (as absolute paths: mb may run from anywhere) and --https."""
    reach: dict[str, object] = {"https": bool(getattr(args, "https", False))}
    for name in ("token_file", "ca_file"):
        value = getattr(args, name, "")
        reach[name] = str(Path(value).expanduser().resolve()) if value else ""
    return reach


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.load_settings()
        machines = config.load_machines()
        with Client(float(settings["Timeout"]), machines=machines) as client:
            ctx = Context(settings, machines, client, progress_wanted(args.no_progress))
            return run(args, ctx)
    except config.ConfigError as exc:
        print(f"mb: {exc}", file=sys.stderr)
        return commands.USAGE
    except MbError as exc:
        print(f"mb: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("mb: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mb list | head`: the reader left, nothing more to say
        # Point stdout at /dev/null so the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
