"""$MB_SERIES_JSON through every executor's request: the job folder names it (only once
written), a container gets it mounted read-only at /series.json, Slurm gets it mapped."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from magickbox.buckets.container import Engine, make_spec
from magickbox.buckets.runner import build_request
from magickbox.buckets.slurm import batch_script
from magickbox.config import Settings
from magickbox.jobfolder import JobFolder, RunFacts
from magickbox.study.views import series_manifest

ROW = {"study_uid": "1.2", "series_uid": "1.2.3", "series_number": 4, "description": "dwi",
       "modality": "MR", "classify_type": ["MR", "DWI"], "num_files": 2,
       "files": ["a.dcm", "b.dcm"]}  # fmt: skip


def folder_with_manifest(tmp_path: Path) -> JobFolder:
    folder = JobFolder(tmp_path / "scratch" / "sd1")
    folder.input.mkdir(parents=True)
    folder.write_series(series_manifest([ROW]))
    return folder


def facts_of(folder: JobFolder, tmp_path: Path) -> dict[str, str]:
    return folder.environment(RunFacts("sd1", "B", "C", "10.0.0.1"), tmp_path / "memory" / "B",
                              tmp_path)  # fmt: skip


def test_the_manifest_names_each_series_and_is_named_once_written(tmp_path: Path) -> None:
    folder = JobFolder(tmp_path / "scratch" / "sd1")
    folder.input.mkdir(parents=True)
    assert "MB_SERIES_JSON" not in facts_of(folder, tmp_path)  # no views kept: no variable
    folder.write_series(series_manifest([ROW]))
    env = facts_of(folder, tmp_path)
    assert env["MB_SERIES_JSON"] == str(folder.path / "series.json")
    assert json.loads(Path(env["MB_SERIES_JSON"]).read_text()) == {
        "input": "INPUT",
        "series": [{"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3", "SeriesNumber": 4,
                    "SeriesDescription": "dwi", "Modality": "MR", "ClassifyType": ["MR", "DWI"],
                    "NumFiles": 2, "files": ["a.dcm", "b.dcm"]}],
    }  # fmt: skip


def test_a_container_gets_the_manifest_mounted_read_only(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, container_engine="/usr/bin/podman")
    folder = folder_with_manifest(tmp_path)
    facts = facts_of(folder, tmp_path)
    req = build_request({"image": "img:1"}, tmp_path / "w.sh", settings, facts, folder.path,
                        [], 60.0)  # fmt: skip
    assert req.container is not None
    assert req.container.env["MB_SERIES_JSON"] == "/series.json"
    argv = req.argv()
    assert f"{folder.series_json}:/series.json:ro" in argv
    assert req.env["MB_SERIES_JSON"] == str(folder.series_json)  # a native run's path


def test_slurm_exports_the_manifest_path_as_the_nodes_see_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, slurm_path_map=[f"{tmp_path}=/nodes/mb"])
    folder = folder_with_manifest(tmp_path)
    facts = facts_of(folder, tmp_path)
    req = build_request({}, tmp_path / "w.sh", settings, facts, folder.path, [], 60.0)
    script = batch_script(req, settings)
    assert "export MB_SERIES_JSON=/nodes/mb/scratch/sd1/series.json" in script
    spec = make_spec({"image": "img:1"}, settings, "sd1", tmp_path / "memory" / "B")
    with_image = replace(req, container=replace(spec, engine=Engine("/usr/bin/podman"),
                                                series_json=folder.series_json))  # fmt: skip
    assert "-v /nodes/mb/scratch/sd1/series.json:/series.json:ro" in batch_script(
        with_image, settings
    )
