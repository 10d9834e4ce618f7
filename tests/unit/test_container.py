"""The container runner's argv and info.json checks, without an engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from magickbox.buckets import container
from magickbox.buckets.container import ContainerError, Engine, make_spec, run_argv
from magickbox.config import Settings

ENGINE = Engine("/usr/bin/podman", ("--runtime", "runc"), ("--ulimit", "nproc=1000:1000"))


def settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(home=tmp_path, container_engine="sh", **kw)  # any program on PATH


def spec(tmp_path: Path, **info: object) -> container.ContainerSpec:
    from dataclasses import replace

    made = make_spec({"image": "lab/seg:2", **info}, settings(tmp_path), "tmp.x1", tmp_path / "m")
    return replace(made, engine=ENGINE, owner=(1000, 1001))


def argv(tmp_path: Path, **info: object) -> list[str]:
    return run_argv(spec(tmp_path, **info), Path("/j/INPUT"), Path("/j/OUTPUT"), ["-v", "x y"])


def test_the_default_run_is_locked_down(tmp_path: Path) -> None:
    args = argv(tmp_path)
    assert args[:4] == ["/usr/bin/podman", "--runtime", "runc", "run"]
    assert "--rm" in args and "--pull=never" in args
    joined = " ".join(args)
    assert "--name mb-tmp.x1" in joined
    assert "--label magickbox.job=tmp.x1" in joined
    assert f"--label magickbox.home={tmp_path}" in joined
    assert "-v /j/INPUT:/input:ro" in joined and "-v /j/OUTPUT:/output " in joined
    assert f"-v {tmp_path / 'm'}:/memory" in joined
    assert "--network none" in joined and "--user 1000:1001" in joined
    assert "--cpus" not in args and "--memory" not in args
    assert "--gpus" not in args and "--device" not in args
    # engine run args, then the image, its command and the job's arguments, as they are
    assert args[-8:] == [
        "--ulimit",
        "nproc=1000:1000",
        "lab/seg:2",
        "/root/work.sh",
        "/input",
        "/output",
        "-v",
        "x y",
    ]


def test_a_bucket_may_ask_for_network_root_limits_gpus_and_a_command(tmp_path: Path) -> None:
    args = argv(
        tmp_path, network=True, user="root", cpus=2, memory="4g", gpus="all", command=["/run"]
    )
    joined = " ".join(args)
    assert "--network" not in args
    assert "--user 0:0" in joined
    assert "--cpus 2 " in joined and "--memory 4g" in joined
    assert "--device nvidia.com/gpu=all" in joined
    assert args[-3:] == ["/run", "-v", "x y"]


def test_docker_gets_gpus_flag() -> None:
    assert container.gpu_args(Engine("/usr/bin/docker"), "all") == ["--gpus", "all"]


def test_box_wide_limits_apply_when_info_names_none(tmp_path: Path) -> None:
    made = make_spec(
        {"image": "a:1"},
        settings(tmp_path, container_cpus=1.5, container_memory="2g"),
        "j",
        tmp_path,
    )
    assert (made.cpus, made.memory) == (1.5, "2g")


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"image": "a b"}, '"image"'),
        ({"image": "--privileged"}, '"image"'),
        ({"image": "a:1", "command": "/root/work.sh"}, '"command"'),
        ({"image": "a:1", "network": "yes"}, '"network"'),
        ({"image": "a:1", "user": "1000"}, '"user"'),
        ({"image": "a:1", "cpus": "many"}, '"cpus"'),
        ({"image": "a:1", "memory": "--privileged"}, '"memory"'),
    ],
)
def test_bad_info_json_says_what_is_wrong(tmp_path: Path, info: dict, message: str) -> None:
    with pytest.raises(ContainerError, match=message):
        make_spec(info, settings(tmp_path), "j", tmp_path)


def test_a_missing_engine_is_named(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, container_engine="no-such-engine")
    with pytest.raises(ContainerError, match="no-such-engine is not installed"):
        container.find_engine(s)


def test_the_container_sees_its_own_paths_only() -> None:
    env = container.container_env(
        {"MB_SCRATCHDIR": "tmp.1", "MB_HOME": "/srv/mb", "MB_MEMORY": "/srv/mb/memory/A"}
    )
    assert env == {
        "MB_SCRATCHDIR": "tmp.1",
        "MB_MEMORY": "/memory",
        "MB_PROC_JSON": "/output/proc.json",
        "MB_MEASURES": "/output/measures.json",
    }


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_output_written_as_root_is_given_back(tmp_path: Path) -> None:
    out = tmp_path / "OUTPUT"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "f").write_text("x")
    for path in (out, out / "sub", out / "sub" / "f"):
        os.chown(path, 4321, 4321)
    container.give_back(out, 1234, 1235)
    assert {(p.stat().st_uid, p.stat().st_gid) for p in [out, *out.rglob("*")]} == {(1234, 1235)}


def test_leftovers_are_killed_at_once_by_podman_and_docker() -> None:
    # podman's plain rm -f of a running orphan waits its stop timeout (10 s) first;
    # docker's rm -f kills at once and has no --time
    assert container.kill_at_once(ENGINE) == ["--time", "0"]
    assert container.kill_at_once(Engine("/usr/bin/docker")) == []
