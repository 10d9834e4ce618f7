"""The Slurm batch script and options, without a cluster."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from magickbox.buckets.container import Engine, make_spec, run_argv
from magickbox.buckets.runner import RunRequest
from magickbox.buckets.slurm import batch_script, map_path, sbatch_options, slurm_time
from magickbox.config import Settings


def request(tmp_path: Path, **kw: object) -> RunRequest:
    job = tmp_path / "scratch" / "sd1"
    env = {"MB_SCRATCHDIR": "sd1", "MB_MEMORY": str(tmp_path / "memory"), "PATH": "/bin"}
    return RunRequest("sd1", job, tmp_path / "w.sh", ["a b"], env, 90.0, **kw)  # type: ignore[arg-type]


def test_bucket_options_override_the_box(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, slurm_partition="cpu", slurm_mem="1G", slurm_extra=["-N1"])
    req = request(tmp_path, slurm={"partition": "gpu", "gres": "gpu:1"})
    opts = sbatch_options(req, settings)
    assert "--partition=gpu" in opts and "--gres=gpu:1" in opts and "--mem=1G" in opts
    assert "--partition=cpu" not in opts and "-N1" in opts
    assert "--job-name=sd1" in opts and f"--comment=magickbox:{tmp_path}" in opts
    assert "--time=1:30" in opts


def test_path_map_rewrites_the_script_for_the_nodes(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, slurm_path_map=[f"{tmp_path}=/nodes/mb"])
    script = batch_script(request(tmp_path), settings)
    assert "cd /nodes/mb/scratch/sd1 ||" in script
    assert "export MB_MEMORY=/nodes/mb/memory" in script
    assert "/nodes/mb/w.sh /nodes/mb/scratch/sd1/INPUT /nodes/mb/scratch/sd1/OUTPUT 'a b'" in script
    assert "PATH" not in script.split("#SBATCH")[0]  # only MB_* facts are written out
    assert str(tmp_path) + "/" not in script
    assert map_path(f"{tmp_path}x/y", settings) == f"{tmp_path}x/y"  # a prefix, not a folder


def test_slurm_time_rounds_up_to_whole_seconds() -> None:
    assert slurm_time(0.2) == "0:01" and slurm_time(3600) == "60:00" and slurm_time(61.5) == "1:02"


def test_a_submit_token_goes_into_the_comment_beside_the_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    script = batch_script(request(tmp_path), settings, token="abc123")
    assert f"#SBATCH --comment=magickbox:{tmp_path};submit=abc123\n" in script


def test_a_container_bucket_runs_its_engine_on_the_node_and_is_removed_at_scancel(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path, slurm_path_map=[f"{tmp_path}=/nodes/mb"])
    spec = make_spec({"image": "img:1"}, settings, "sd1", tmp_path / "memory" / "B")
    engine = Engine("/usr/bin/podman")
    script = batch_script(request(tmp_path, container=replace(spec, engine=engine)), settings)
    assert "-v /nodes/mb/scratch/sd1/INPUT:/input:ro" in script
    assert "-v /nodes/mb/memory/B:/memory" in script and "--network none" in script
    assert "remove_container() { /usr/bin/podman rm -f mb-sd1 >/dev/null 2>&1; }" in script
    assert "trap 'remove_container; exit 143' TERM" in script and "wait $!" in script


def test_an_apptainer_engine_execs_with_containall_and_read_only_input(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, container_engine="apptainer")
    spec = make_spec({"image": "docker://img:1"}, settings, "sd1", tmp_path / "mem")
    argv = run_argv(spec, tmp_path / "in", tmp_path / "out", ["x"])
    assert argv[:3] == [spec.engine.program, "exec", "--containall"]
    assert f"{tmp_path}/in:/input:ro" in argv and argv[11:14] == ["--net", "--network", "none"]
    assert argv[-5:] == ["docker://img:1", "/root/work.sh", "/input", "/output", "x"]
    script = batch_script(request(tmp_path, container=spec), settings)
    assert "trap" not in script  # no named container to remove: scancel stops it
