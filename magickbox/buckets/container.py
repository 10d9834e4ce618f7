"""Container buckets: a bucket whose info.json names an image runs in docker or podman.

Everything goes through the engine's command line, never a shell. A run is one
``<engine> run --rm`` with the job's INPUT read-only at /input, OUTPUT at /output and the
bucket's persistent folder at /memory; its container is named after the job and labelled
with the box's home, so a timeout, a cancel or a restart after a crash can find and remove
it by name or label.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magickbox.config import Settings

log = logging.getLogger(__name__)

ENGINES = ("podman", "docker")
# Engines of HPC nodes: no daemon, no named containers, run by name only (never "auto").
APPTAINERS = ("apptainer", "singularity")
DEFAULT_COMMAND = ("/root/work.sh", "/input", "/output")
IMAGE_INFO = "/root/storage/info.json"
LABEL_JOB = "magickbox.job"
LABEL_HOME = "magickbox.home"
ENGINE_ERROR = 125  # docker and podman: the engine itself failed, not the command
# Facts a containerised bucket gets; paths are the ones inside the container.
CONTAINER_FACTS = (
    "MB_SCRATCHDIR",
    "MB_AETITLE_CALLED",
    "MB_AETITLE_CALLER",
    "MB_CALLER_IP",
    "MB_STUDY_UID",
    "MB_JOBNAME",
)
SERIES_JSON = "/series.json"  # where a container sees the job's series manifest (read-only)


class ContainerError(RuntimeError):
    """Something a person must fix: no engine, no image, a bad info.json."""


@dataclass(frozen=True)
class Engine:
    program: str  # absolute path of docker or podman
    global_args: tuple[str, ...] = ()
    run_args: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return Path(self.program).name

    @property
    def is_apptainer(self) -> bool:
        return self.name in APPTAINERS

    def argv(self, *args: str) -> list[str]:
        return [self.program, *self.global_args, *args]

    def call(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


@dataclass(frozen=True)
class ContainerSpec:
    """How a bucket's image is run: what the executor needs besides the RunRequest."""

    engine: Engine
    image: str
    name: str  # the container's name: mb-<scratchdir>
    home: Path
    memory_dir: Path
    command: tuple[str, ...] = DEFAULT_COMMAND
    network: bool = False
    as_root: bool = False
    cpus: float = 0.0
    memory: str = ""
    gpus: str = ""
    env: dict[str, str] = field(default_factory=dict)
    series_json: Path | None = None  # the job's manifest, mounted at SERIES_JSON
    owner: tuple[int, int] = field(default_factory=lambda: (os.getuid(), os.getgid()))


def find_engine(settings: Settings) -> Engine:
    """The configured engine, or the first of podman/docker on PATH for ``auto``."""
    choice = settings.container_engine.strip() or "auto"
    candidates = ENGINES if choice == "auto" else (choice,)
    for candidate in candidates:
        program = shutil.which(candidate)
        if not program and candidate in APPTAINERS:
            # Often only on the cluster's nodes (Slurm executor): the node's PATH finds it.
            program = candidate
        if program:
            return Engine(program, tuple(settings.engine_args), tuple(settings.run_args))
    wanted = " or ".join(candidates)
    raise ContainerError(
        f"no container engine: {wanted} is not installed (setting container_engine={choice!r})"
    )


def image_of(info: dict[str, Any]) -> str:
    """The image a bucket's info.json names, '' for a native (work.sh) bucket."""
    image = info.get("image")
    if image is None or image == "":
        return ""
    if not isinstance(image, str) or any(c.isspace() for c in image) or image.startswith("-"):
        raise ContainerError(f'info.json: "image" must be an image name or digest, not {image!r}')
    return image


def make_spec(
    info: dict[str, Any], settings: Settings, scratchdir: str, memory_dir: Path
) -> ContainerSpec:
    """The container run of a bucket's info.json; ContainerError says what is wrong."""
    return ContainerSpec(
        engine=find_engine(settings),
        image=image_of(info),
        name=f"mb-{scratchdir}",
        home=settings.home,
        memory_dir=memory_dir,
        command=_command(info.get("command")),
        network=_flag(info.get("network", False), "network"),
        as_root=_user(info.get("user")),
        cpus=_number(info.get("cpus", settings.container_cpus), "cpus"),
        memory=_text(info.get("memory", settings.container_memory), "memory"),
        gpus=_text(info.get("gpus", ""), "gpus"),
    )


def _command(value: object) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_COMMAND
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ContainerError('info.json: "command" must be a non-empty list of strings')


def _flag(value: object, key: str) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ContainerError(f'info.json: "{key}" must be true or false')


def _user(value: object) -> bool:
    if value in (None, ""):
        return False
    if value == "root":
        return True
    raise ContainerError('info.json: "user" may only be "root" (default: the box\'s own user)')


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ContainerError(f'info.json: "{key}" must be a number >= 0')
    return float(value)


def _text(value: object, key: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and not value.startswith("-") and " " not in value:
        return value
    raise ContainerError(f'info.json: "{key}" must be a string such as "4g" or "all"')


def container_env(facts: dict[str, str]) -> dict[str, str]:
    """The job's facts as a container sees them: its own paths, none of the host's."""
    env = {k: facts[k] for k in CONTAINER_FACTS if k in facts}
    env.update(
        MB_MEMORY="/memory",
        MB_PROC_JSON="/output/proc.json",
        MB_MEASURES="/output/measures.json",
    )
    if facts.get("MB_SERIES_JSON"):
        env["MB_SERIES_JSON"] = SERIES_JSON
    return env


def series_mount(facts: dict[str, str]) -> Path | None:
    """The host file of the job's series manifest (None: this run has none)."""
    path = facts.get("MB_SERIES_JSON")
    return Path(path) if path else None


def run_argv(
    spec: ContainerSpec, input_dir: Path, output_dir: Path, arguments: list[str]
) -> list[str]:
    """``<engine> run`` of one job, as an argv (no shell ever sees it)."""
    if spec.engine.is_apptainer:
        return apptainer_argv(spec, input_dir, output_dir, arguments)
    uid, gid = spec.owner
    args = [
        "run",
        "--rm",
        "--pull=never",  # an image is installed, never fetched behind the box's back
        "--name",
        spec.name,
        "--label",
        f"{LABEL_JOB}={spec.name.removeprefix('mb-')}",
        "--label",
        f"{LABEL_HOME}={spec.home}",
        "--user",
        "0:0" if spec.as_root else f"{uid}:{gid}",
        *_flagged("-v", mounts(spec, input_dir, output_dir)),
        "-w",
        "/output",
    ]
    if not spec.network:
        args += ["--network", "none"]
    if spec.cpus:
        args += ["--cpus", f"{spec.cpus:g}"]
    if spec.memory:
        args += ["--memory", spec.memory]
    if spec.gpus:
        args += gpu_args(spec.engine, spec.gpus)
    for key, value in sorted(spec.env.items()):
        args += ["-e", f"{key}={value}"]
    args += [*spec.engine.run_args, spec.image, *spec.command, *arguments]
    return spec.engine.argv(*args)


def apptainer_argv(
    spec: ContainerSpec, input_dir: Path, output_dir: Path, arguments: list[str]
) -> list[str]:
    """``apptainer exec`` with the same promises as ``run``: INPUT read-only at /input,
    /output, /memory, no network, only the job's facts in the environment (--containall
    also gives it its own /tmp, PID and IPC namespaces). It runs as the box's user."""
    args = [
        "exec",
        "--containall",
        *_flagged("--bind", mounts(spec, input_dir, output_dir)),
        "--pwd",
        "/output",
    ]
    if not spec.network:
        args += ["--net", "--network", "none"]
    if spec.cpus:
        args += ["--cpus", f"{spec.cpus:g}"]
    if spec.memory:
        args += ["--memory", spec.memory]
    if spec.gpus:
        args += ["--nv"]  # the GPUs Slurm gave the job (CUDA_VISIBLE_DEVICES)
    for key, value in sorted(spec.env.items()):
        args += ["--env", f"{key}={value}"]
    args += [*spec.engine.run_args, spec.image, *spec.command, *arguments]
    return spec.engine.argv(*args)


def mounts(spec: ContainerSpec, input_dir: Path, output_dir: Path) -> list[str]:
    """``host:container[:ro]`` of every folder a job's container sees, whatever the engine:
    INPUT read-only at /input, /output, /memory, and the series manifest read-only."""
    found = [f"{input_dir}:/input:ro", f"{output_dir}:/output", f"{spec.memory_dir}:/memory"]
    if spec.series_json is not None:
        found.append(f"{spec.series_json}:{SERIES_JSON}:ro")
    return found


def _flagged(flag: str, values: list[str]) -> list[str]:
    """``[flag, v1, flag, v2, ...]``: an engine's repeated option."""
    return [item for value in values for item in (flag, value)]


def gpu_args(engine: Engine, gpus: str) -> list[str]:
    """Docker's ``--gpus``; podman reaches GPUs through a CDI device."""
    if engine.name == "docker":
        return ["--gpus", gpus]
    device = gpus if "=" in gpus else f"nvidia.com/gpu={gpus}"
    return ["--device", device]


def stop(engine: Engine, name: str, grace: float) -> None:
    """Stop and remove a container; quiet when it is gone already."""
    engine.call("stop", "-t", str(max(0, round(grace))), name, timeout=grace + 60)
    engine.call("rm", "-f", name)


def remove_leftovers(engine: Engine, home: Path) -> list[str]:
    """Remove every container of this home (after a crash they are orphans)."""
    res = engine.call("ps", "-a", "-q", "--filter", f"label={LABEL_HOME}={home}")
    if res.returncode != 0:
        raise ContainerError(f"{engine.name} ps failed: {res.stderr.strip()}")
    ids = res.stdout.split()
    if ids:
        engine.call("rm", "-f", *kill_at_once(engine), *ids)
    return ids


def kill_at_once(engine: Engine) -> list[str]:
    """``rm -f``'s option to kill a running container at once, as docker's ``rm -f`` does:
    podman's would first send SIGTERM and wait 10 s, which an orphan of a crash (its job is
    run again from a clean OUTPUT, or failed) need not get, and a box start waits for."""
    return ["--time", "0"] if engine.name == "podman" else []


def image_exists(engine: Engine, image: str) -> bool:
    return engine.call("image", "inspect", image).returncode == 0


def why_engine_failed(engine: Engine, image: str) -> str:
    """The reason a run ended with the engine's own error code."""
    if not image_exists(engine, image):
        return f"image {image!r} is not installed in {engine.name} (see {engine.name} images)"
    return f"{engine.name} could not run the container (exit code {ENGINE_ERROR}; see the log)"


def read_image_info(engine: Engine, image: str) -> dict[str, Any]:
    """The image's /root/storage/info.json, copied out of a container that never runs."""
    if not image_exists(engine, image):
        raise ContainerError(f"image {image!r} is not installed in {engine.name}")
    created = engine.call("create", "--pull=never", image, "/root/work.sh")
    if created.returncode != 0:
        raise ContainerError(f"{engine.name} create {image}: {created.stderr.strip()}")
    cid = created.stdout.strip().splitlines()[-1]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "info.json"
            copied = engine.call("cp", f"{cid}:{IMAGE_INFO}", str(target))
            if copied.returncode != 0 or not target.is_file():
                raise ContainerError(f"image {image!r} has no {IMAGE_INFO}")
            try:
                info = json.loads(target.read_text())
            except ValueError as exc:
                raise ContainerError(f"image {image!r}: {IMAGE_INFO} is not JSON: {exc}") from exc
    finally:
        engine.call("rm", "-f", cid)
    if not isinstance(info, dict):
        raise ContainerError(f"image {image!r}: {IMAGE_INFO} is not a JSON object")
    return info


def give_back(output_dir: Path, uid: int, gid: int) -> None:
    """Make everything under OUTPUT the box's, after a bucket that ran as root."""
    for root, dirs, files in os.walk(output_dir):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), uid, gid)
    os.lchown(output_dir, uid, gid)


def give_back_in_container(spec: ContainerSpec, output_dir: Path) -> bool:
    """When the box may not chown (a non-root box with a rootful engine): chown inside."""
    uid, gid = spec.owner
    argv = spec.engine.argv(
        "run",
        "--rm",
        "--pull=never",
        "--network",
        "none",
        "--user",
        "0:0",
        "-v",
        f"{output_dir}:/output",
        *spec.engine.run_args,
        spec.image,
        "chown",
        "-R",
        f"{uid}:{gid}",
        "/output",
    )
    return subprocess.run(argv, capture_output=True, timeout=600).returncode == 0
