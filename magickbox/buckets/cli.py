"""``magickbox buckets``: create, run, install, remove, list, enable and disable buckets.

Exit codes: 0 ok; 1 the run failed (the bucket's exit code when it has one); 2 bad
arguments; 3 the AE title or folder is taken; 4 no such bucket or image; 5 the container
engine is missing or failed, or an info.json is unusable.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import secrets
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from magickbox.buckets import container, health, registry
from magickbox.buckets.container import ContainerError
from magickbox.buckets.runner import LocalExecutor, RunRequest, RunResult, build_request
from magickbox.buckets.slurm import SlurmExecutor
from magickbox.config import Settings
from magickbox.errors import NotFound
from magickbox.jobfolder import MEASURES_JSON, PROC_JSON, JobFolder, RunFacts

EXIT_FAILED, EXIT_USAGE, EXIT_CLASH, EXIT_MISSING, EXIT_ENGINE = 1, 2, 3, 4, 5
AET_PATTERN = re.compile(r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: argparse._SubParsersAction, home_option: Any) -> None:
    """The ``buckets`` group; ``home_option(parser)`` adds --home like serve's."""
    group = sub.add_parser("buckets", help="create, run, install and manage buckets")
    group.description = __doc__
    group.formatter_class = argparse.RawDescriptionHelpFormatter
    cmds = group.add_subparsers(dest="bucket_command", required=True)

    p = cmds.add_parser("create", help="a starter bucket (native at once; image recipe inside)")
    p.add_argument("name", help="AE title of the new bucket (its folder: streams/bucket<name>)")
    p = cmds.add_parser("run", help="run a bucket or an image on a folder, as the box would")
    p.add_argument("bucket", help="an installed bucket's AE title, or an image name")
    p.add_argument("input", type=Path, help="folder mounted read-only as INPUT")
    p.add_argument("output", type=Path, help="folder for OUTPUT (created when missing)")
    p.add_argument("arguments", nargs="*", help="extra arguments for work.sh")
    p.add_argument("--timeout", type=float, help="seconds (default: the bucket's timeout)")
    p.add_argument("--executor", choices=["local", "slurm"], help="default: the bucket's")
    p = cmds.add_parser("install", help="install an image as a bucket (its own AE title)")
    p.add_argument("image", help="image name or digest, already in the engine")
    p.add_argument("--aetitle", help="AE title (default: AETitle of /root/storage/info.json)")
    p.add_argument("--disabled", action="store_true", help="install it disabled")
    p = cmds.add_parser("build", help="build a bucket folder into a busybox image (offline)")
    p.add_argument("name", help="AE title of a native bucket")
    p.add_argument("--tag", help="image tag (default magickbox-<name>:latest)")
    p = cmds.add_parser("remove", help="remove a bucket's folder (its memory is kept)")
    p.add_argument("name")
    p = cmds.add_parser("list", help="all buckets: AE title, enabled, image or work.sh")
    p.add_argument("--json", action="store_true", help="print JSON")
    for verb in ("enable", "disable"):
        p = cmds.add_parser(verb, help=f"{verb} a bucket (only enabled buckets get jobs)")
        p.add_argument("name")
    for parser in cmds.choices.values():
        home_option(parser)


def main(args: argparse.Namespace, settings: Settings) -> int:
    handlers = {
        "create": cmd_create,
        "run": cmd_run,
        "install": cmd_install,
        "build": cmd_build,
        "remove": cmd_remove,
        "list": cmd_list,
        "enable": cmd_enable,
        "disable": cmd_enable,
    }
    try:
        return handlers[args.bucket_command](args, settings)
    except CliError as exc:
        print(f"magickbox buckets {args.bucket_command}: {exc}", file=sys.stderr)
        return exc.code
    except ContainerError as exc:
        print(f"magickbox buckets {args.bucket_command}: {exc}", file=sys.stderr)
        return EXIT_ENGINE


# -- helpers -------------------------------------------------------------------------------


def find(settings: Settings, name: str) -> registry.Bucket:
    bucket = registry.all_buckets(settings.streams).get(name)
    if bucket is None:
        raise CliError(f"no bucket {name!r} in {settings.streams}", EXIT_MISSING)
    return bucket


def check_free(settings: Settings, aetitle: str) -> Path:
    """The folder for a new bucket ``aetitle``; CliError when the title or folder is taken."""
    if not AET_PATTERN.match(aetitle):
        raise CliError(f"{aetitle!r} is not an AE title (1-16 characters, no '\\')", EXIT_USAGE)
    taken = registry.all_buckets(settings.streams).get(aetitle)
    if taken is not None:
        raise CliError(f"AE title {aetitle!r} is taken by {taken.path}", EXIT_CLASH)
    folder = settings.streams / f"bucket{aetitle}"
    if "/" in aetitle or aetitle in (".", ".."):
        raise CliError(f"{aetitle!r} cannot name a folder", EXIT_USAGE)
    if folder.exists():
        raise CliError(f"{folder} exists already", EXIT_CLASH)
    return folder


# -- create --------------------------------------------------------------------------------

STARTER_WORK_SH = """#!/bin/sh
# Bucket {name}: run as  work.sh INPUT OUTPUT [arguments]  (natively, from this folder) or as
# /root/work.sh /input /output [arguments]  (in an image). INPUT is read-only: write
# results to OUTPUT. $MB_MEMORY is a folder kept between runs of this bucket.
set -eu
input=$1
output=$2
shift 2
count=$(find "$input" -type f | wc -l)
echo "bucket {name}: $count files in $input, arguments: $*"
find "$input" -type f > "$output/files.txt"
memory=${{MB_MEMORY:-$output}}
runs=$(cat "$memory/runs" 2>/dev/null || echo 0)
echo $((runs + 1)) > "$memory/runs"
echo "[{{\\"success\\": \\"success\\", \\"message\\": \\"$count files\\"}}]" \\
  > "${{MB_PROC_JSON:-$output/proc.json}}"
"""

STARTER_CONTAINERFILE = """\
# An image of bucket {name}. With a registry:
#   podman build -t {tag} .      (or docker build)
# Offline (a static busybox image, no registry needed):
#   magickbox buckets build {name} --tag {tag}
# then: magickbox buckets remove {name} && magickbox buckets install {tag}
FROM docker.io/library/busybox:stable
COPY work.sh /root/work.sh
COPY info.json /root/storage/info.json
"""

STARTER_README = """\
# Bucket {name}

Jobs sent to the AE title `{name}` run `work.sh INPUT OUTPUT [arguments]`. Try it:

    magickbox buckets run {name} /path/to/dicom /tmp/out

It runs natively as it is. To ship it as an image, build one (see `Containerfile`) and
install the image: info.json then names it (`"image": "{tag}"`) and the box runs it with
INPUT read-only at /input, OUTPUT at /output, $MB_MEMORY at /memory, no network and the
box's own user unless info.json says `"network": true` / `"user": "root"`; `"cpus"`,
`"memory"`, `"timeout"` and `"gpus"` set limits.
"""


def default_tag(name: str) -> str:
    return f"magickbox-{re.sub(r'[^a-z0-9._-]', '-', name.lower())}:latest"


def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    folder = check_free(settings, args.name)
    folder.mkdir(parents=True)
    values = {"name": args.name, "tag": default_tag(args.name)}
    info = {
        "name": args.name,
        "description": f"starter bucket {args.name}",
        "version": "0.1.0",
        "AETitle": args.name,
        "license": "MIT",
        "enabled": 1,
    }
    registry.write_info(folder, info)
    (folder / "work.sh").write_text(STARTER_WORK_SH.format(**values))
    (folder / "work.sh").chmod(0o755)
    (folder / "Containerfile").write_text(STARTER_CONTAINERFILE.format(**values))
    (folder / "README.md").write_text(STARTER_README.format(**values))
    print(f"created {folder}")
    return 0


# -- build / install / remove / enable / list ----------------------------------------------


def cmd_build(args: argparse.Namespace, settings: Settings) -> int:
    from magickbox.buckets.image import build_bucket_image

    bucket = find(settings, args.name)
    if not bucket.work_sh.is_file():
        raise CliError(f"{bucket.path} has no work.sh to build from", EXIT_MISSING)
    tag = args.tag or default_tag(args.name)
    build_bucket_image(container.find_engine(settings), bucket.path, tag)
    print(tag)
    return 0


def cmd_install(args: argparse.Namespace, settings: Settings) -> int:
    engine = container.find_engine(settings)
    if not container.image_exists(engine, args.image):
        raise CliError(f"image {args.image!r} is not installed in {engine.name}", EXIT_MISSING)
    try:
        info = container.read_image_info(engine, args.image)
    except ContainerError:
        if not args.aetitle:
            raise
        info = {}  # the flag says all the box needs
    aetitle = str(args.aetitle or info.get("AETitle", "")).strip()
    if not aetitle:
        raise CliError(f"image {args.image!r}: info.json has no AETitle; use --aetitle", 5)
    folder = check_free(settings, aetitle)
    info.update(AETitle=aetitle, image=args.image, enabled=0 if args.disabled else 1)
    info.setdefault("name", aetitle)
    container.make_spec(info, settings, "check", settings.memory / aetitle)  # bad fields?
    folder.mkdir(parents=True)
    registry.write_info(folder, info)
    print(f"installed {args.image} as bucket {aetitle} ({folder})")
    return 0


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    """Remove by AE title, or by folder (``X`` or ``bucketX``) when info.json is broken."""
    folder = removable_folder(settings, args.name)
    shutil.rmtree(folder)
    aetitle = folder.name[len(health.FOLDER_PREFIX) :]
    print(f"removed {folder} (kept its memory, {settings.memory / aetitle})")
    return 0


def removable_folder(settings: Settings, name: str) -> Path:
    bucket = registry.all_buckets(settings.streams).get(name)
    if bucket is not None:
        return bucket.path
    # A broken bucket has no AE title to find it by: its folder name stands in.
    for h in health.survey(settings):
        if h.bucket is None and name in (h.aetitle, h.folder.name):
            return h.folder
    raise CliError(f"no bucket {name!r} in {settings.streams}", EXIT_MISSING)


def cmd_enable(args: argparse.Namespace, settings: Settings) -> int:
    """What ``POST /api/v1/buckets/{name}/enable`` does, by the one who runs the command."""
    from magickbox.auth.audit import AuditLog, bucket_action
    from magickbox.auth.principal import Principal
    from magickbox.auth.roles import Role
    from magickbox.jobs.db import open_database

    enable = args.bucket_command == "enable"
    db = open_database(settings.db_url)  # first: no change the audit trail cannot record
    try:
        bucket = registry.set_enabled(settings.streams, args.name, enable)
        me = Principal("cli", getpass.getuser(), Role.admin, "local")
        AuditLog(db).record(me, bucket_action(enable), bucket.aetitle)
    except NotFound as exc:
        raise CliError(str(exc), EXIT_MISSING) from exc
    finally:
        db.kw["bind"].dispose()
    print(f"{bucket.aetitle}: {args.bucket_command}d")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    """Every bucket folder, broken ones too, each with what is wrong with it."""
    rows = [health.view(h) for h in health.survey(settings)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        runs = row["image"] or "work.sh"
        state = "enabled " if row["enabled"] else "disabled"
        problems = "".join(f"  ! {p}" for p in row["problems"] if not p.startswith("disabled"))
        print(f"{row['aetitle']:<16} {state} {runs}{problems}")
    return 0


# -- run -----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    bucket = registry.all_buckets(settings.streams).get(args.bucket)
    if bucket is not None:
        info, work_sh, aetitle = bucket.info, bucket.work_sh, bucket.aetitle
    else:  # an image that is not installed as a bucket: run its default command
        info, work_sh, aetitle = {"image": args.bucket}, Path("/nonexistent"), ""
        engine = container.find_engine(settings)
        if not container.image_exists(engine, args.bucket):
            raise CliError(f"{args.bucket!r} is neither a bucket nor an installed image", 4)
    if not args.input.is_dir():
        raise CliError(f"{args.input} is not a folder", EXIT_USAGE)
    args.output.mkdir(parents=True, exist_ok=True)
    if args.executor:
        info = {**info, "executor": args.executor}
    timeout = args.timeout or (bucket.timeout(settings.bucket_timeout) if bucket else 3600.0)
    with tempfile.TemporaryDirectory(prefix="mb-run.") as tmp:
        memory = settings.memory / aetitle if aetitle else Path(tmp) / "memory"
        memory.mkdir(parents=True, exist_ok=True)
        request = run_request(args, settings, info, work_sh, Path(tmp), memory, timeout)
        result = run_streaming(request, settings)
    if result.reason:
        print(f"magickbox buckets run: failed: {result.reason}", file=sys.stderr)
        return EXIT_FAILED
    return 0 if result.exit_code == 0 else (result.exit_code or EXIT_FAILED)


def run_request(
    args: argparse.Namespace,
    settings: Settings,
    info: dict[str, Any],
    work_sh: Path,
    job_dir: Path,
    memory: Path,
    timeout: float,
) -> RunRequest:
    output = args.output.resolve()
    folder = JobFolder(job_dir)
    run = RunFacts(
        scratchdir=f"run.{secrets.token_hex(4)}",
        called=str(info.get("AETitle", "")),
        caller_aet="magickbox-buckets-run",
        caller_ip="127.0.0.1",
        jobname=args.input.name,
    )
    # The verdict goes next to the results: there is no job folder to keep it in.
    facts = folder.environment(
        run,
        memory,
        settings.home,
        proc_json=output / PROC_JSON,
        measures_json=output / MEASURES_JSON,
    )
    folder.log.touch()
    return build_request(
        info,
        work_sh,
        settings,
        facts,
        job_dir,
        list(args.arguments),
        timeout,
        input_dir=args.input.resolve(),
        output_dir=output,
    )


def run_streaming(request: RunRequest, settings: Settings | None = None) -> RunResult:
    """Run like the box and copy processing.log to stdout while it grows."""
    finished = threading.Event()
    results: list[RunResult] = []

    def done(_req: RunRequest, result: RunResult) -> None:
        results.append(result)
        finished.set()

    slurm = request.executor == "slurm" and settings is not None
    executor = SlurmExecutor(settings) if slurm and settings else LocalExecutor()
    executor.start(request, done)
    log_path = JobFolder(request.job_dir).log
    with log_path.open("rb") as fh:
        try:
            while not finished.wait(0.1):
                sys.stdout.buffer.write(fh.read())
                sys.stdout.flush()
        except KeyboardInterrupt:
            executor.cancel(request.scratchdir) if slurm else executor.shutdown()
            finished.wait()
        sys.stdout.buffer.write(fh.read())
        sys.stdout.flush()
    return results[0]
