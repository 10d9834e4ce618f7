"""Acting on many jobs through the API, over the real app and Box in this process: bulk
retry, delete and run again with another bucket, one zip of many OUTPUTs, sorting the list;
who may (a viewer gets 403), what a bad request gets, and 1,000 jobs in one action."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from magickbox.auth.audit import AuditFilter
from magickbox.auth.roles import Role
from magickbox.testing.dicomgen import write_study
from magickbox.testing.homes import fill_finished_jobs
from tests.conftest import InProcessBox, copy_bucket, in_process_box
from tests.integration.test_console_api import run_job

# OUTPUT: a file naming the bucket and the patient, and a file in a folder.
WRITES = """#!/bin/sh
set -e
echo "{name}" > "$2/made-by.txt"
mkdir "$2/sub" && ls "$1" > "$2/sub/inputs.txt"
echo '[{{"success": "success", "message": "ok"}}]' > "$MB_PROC_JSON"
"""
FAILS = "#!/bin/sh\necho 'no luck'\nexit 4\n"
PATIENTS = ("P-C", "P-A", "P-B")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessBox]:
    home = tmp_path_factory.mktemp("bulk-api") / "home"
    copy_bucket(home, "First", WRITES.format(name="First"))
    copy_bucket(home, "Second", WRITES.format(name="Second"))
    copy_bucket(home, "Fails", FAILS)
    with in_process_box(home) as app:
        yield app


def study_zip(folder: Path, patient_id: str) -> bytes:
    write_study(folder, n_images=2, rows=16, cols=16, patient_id=patient_id)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, path.name)
    return buf.getvalue()


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("studies")
    return {pid: study_zip(root / pid, pid) for pid in PATIENTS}


def jobs(app: InProcessBox, **query: str) -> list[dict]:
    answer = app.get("/api/v1/jobs", params={"limit": "1000", **query})
    assert answer.status_code == 200, answer.text
    return answer.json()["jobs"]


def bulk(app: InProcessBox, body: dict, **kw: object) -> dict:
    answer = app.client.post("/api/v1/jobs/bulk", json=body, **kw)  # type: ignore[arg-type]
    assert answer.status_code == 200, answer.text
    return answer.json()


def settle(app: InProcessBox, names: list[str]) -> list[dict]:
    deadline = time.monotonic() + 60
    while True:
        found = [app.get(f"/api/v1/jobs/{n}").json() for n in names]
        if all(j["state"] in ("done", "failed") for j in found):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def audited(app: InProcessBox, action: str, target: str) -> list[dict]:
    return app.box.audit_page(AuditFilter(action=action, target=target), 10, 0)["events"]


def token_headers(app: InProcessBox, role: Role) -> dict[str, str]:
    secret = app.box.auth.store.create_token(f"bulk-{role.value}", role)[0]
    return {"Authorization": f"Bearer {secret}"}


def test_bulk_retry_runs_each_named_job_again(app: InProcessBox, studies: dict) -> None:
    failed = [run_job(app, "Fails", studies[pid])["scratchdir"] for pid in PATIENTS[:2]]
    before = {j["scratchdir"]: j["started_at"] for j in settle(app, failed)}
    answer = bulk(app, {"action": "retry", "scratchdirs": [*failed, "tmp.nosuchjob"]})
    assert answer["done"] == failed and answer["matched"] == 3
    assert answer["failed"] == [
        {"scratchdir": "tmp.nosuchjob", "reason": "no job 'tmp.nosuchjob'"}
    ]
    assert {j["state"] for j in answer["jobs"]} <= {"queued", "running", "failed"}
    for job in settle(app, failed):
        assert job["state"] == "failed" and job["started_at"] > before[job["scratchdir"]]
        assert audited(app, "retry", job["scratchdir"])[0]["detail"] == {"bulk": True}


def test_bulk_retry_of_a_job_not_finished_says_why(app: InProcessBox, studies: dict) -> None:
    name = run_job(app, "Fails", studies["P-C"])["scratchdir"]
    first = bulk(app, {"action": "retry", "scratchdirs": [name]})
    second = bulk(app, {"action": "retry", "scratchdirs": [name]})  # may be queued still
    assert first["done"] == [name]
    if second["failed"]:
        assert "only finished jobs can be retried" in second["failed"][0]["reason"]
    settle(app, [name])


def test_bulk_delete_by_filter_takes_only_the_matching_jobs(
    app: InProcessBox, studies: dict
) -> None:
    doomed = [run_job(app, "Fails", studies[pid])["scratchdir"] for pid in PATIENTS]
    kept = run_job(app, "First", studies["P-A"])["scratchdir"]
    settle(app, doomed)
    answer = bulk(app, {"action": "delete", "filter": {"bucket": "Fails"}})
    assert set(doomed) <= set(answer["done"]) and answer["failed"] == []
    assert answer["matched"] == len(answer["done"]) and answer["freed_bytes"] > 0
    assert jobs(app, bucket="Fails") == []
    assert app.get(f"/api/v1/jobs/{kept}").status_code == 200
    for name in doomed:
        assert not (app.box.settings.scratch / name).exists()
        assert audited(app, "delete", name)


def test_bulk_run_again_with_another_bucket(app: InProcessBox, studies: dict) -> None:
    sources = [run_job(app, "First", studies[pid]) for pid in PATIENTS[:2]]
    names = [j["scratchdir"] for j in sources]
    answer = bulk(app, {"action": "run", "scratchdirs": names, "run": {"bucket": "Second"}})
    assert answer["done"] == names and answer["failed"] == []
    made = settle(app, [j["scratchdir"] for j in answer["jobs"]])
    assert [j["study_uid"] for j in made] == [j["study_uid"] for j in sources]
    for job in made:
        assert job["bucket"] == "Second" and job["state"] == "done" and job["source"] == "archive"
        out = app.get(f"/api/v1/jobs/{job['scratchdir']}/files/made-by.txt?download=1")
        assert out.text.strip() == "Second"
    detail = audited(app, "run", names[0])[0]["detail"]
    assert detail["bucket"] == "Second" and detail["job"] == answer["jobs"][0]["scratchdir"]


def test_bulk_run_again_names_a_missing_bucket(app: InProcessBox, studies: dict) -> None:
    name = run_job(app, "First", studies["P-B"])["scratchdir"]
    answer = bulk(app, {"action": "run", "scratchdirs": [name], "run": {"bucket": "Nope"}})
    assert answer["done"] == [] and "Nope" in answer["failed"][0]["reason"]


def zip_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        return {info.filename: zf.read(info) for info in zf.infolist()}


def test_one_zip_of_many_outputs(app: InProcessBox, studies: dict) -> None:
    made = [run_job(app, "First", studies[pid])["scratchdir"] for pid in PATIENTS[:2]]
    answer = app.get("/api/v1/jobs.zip", params=[("scratchdir", n) for n in made])
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    members = zip_members(answer.content)
    expected = {f"{n}/OUTPUT/{f}" for n in made for f in ("made-by.txt", "sub/inputs.txt")}
    assert expected <= set(members)
    assert {m.split("/OUTPUT/")[0] for m in members} == set(made)
    assert members[f"{made[0]}/OUTPUT/made-by.txt"] == b"First\n"
    assert audited(app, "download", made[1])[0]["detail"] == {"part": "OUTPUT", "bulk": True}


def test_zip_by_filter_holds_every_matching_job(app: InProcessBox, studies: dict) -> None:
    run_job(app, "Second", studies["P-C"])
    matching = {j["scratchdir"] for j in jobs(app, bucket="Second", state="done")}
    answer = app.get("/api/v1/jobs.zip", params={"bucket": "Second", "state": "done"})
    assert answer.status_code == 200
    assert {m.split("/")[0] for m in zip_members(answer.content)} == matching


def test_zip_of_an_unknown_job_is_404_before_any_byte(app: InProcessBox) -> None:
    answer = app.get("/api/v1/jobs.zip", params={"scratchdir": "tmp.nosuchjob"})
    assert answer.status_code == 404 and "tmp.nosuchjob" in answer.json()["detail"]


def test_a_viewer_may_download_but_not_act(app: InProcessBox, studies: dict) -> None:
    name = run_job(app, "First", studies["P-A"])["scratchdir"]
    viewer = token_headers(app, Role.viewer)
    for action in ("retry", "delete"):
        refused = app.client.post("/api/v1/jobs/bulk", headers=viewer,
                                  json={"action": action, "scratchdirs": [name]})  # fmt: skip
        assert refused.status_code == 403, refused.text
    zipped = app.get("/api/v1/jobs.zip", params={"scratchdir": name}, headers=viewer)
    assert zipped.status_code == 200
    assert app.get(f"/api/v1/jobs/{name}").json()["state"] == "done"  # nothing was done
    operator = token_headers(app, Role.operator)
    assert bulk(app, {"action": "delete", "scratchdirs": [name]}, headers=operator)["done"]


@pytest.mark.parametrize(
    "body",
    [
        {"action": "retry"},  # which jobs?
        {"action": "retry", "scratchdirs": ["tmp.a"], "filter": {}},  # both
        {"action": "run", "scratchdirs": ["tmp.a"]},  # run where?
        {"action": "explode", "scratchdirs": ["tmp.a"]},
        {"action": "delete", "filter": {"state": "gone"}},
        {"action": "delete", "filter": {"no_such_field": 1}},
        {"action": "delete", "scratchdirs": ["tmp.a"] * 10_001},
    ],
)
def test_a_bad_bulk_request_is_refused_and_changes_nothing(
    app: InProcessBox, body: dict
) -> None:
    before = app.get("/api/v1/jobs").json()["total"]
    answer = app.client.post("/api/v1/jobs/bulk", json=body)
    assert answer.status_code == 422, answer.text
    assert app.get("/api/v1/jobs").json()["total"] == before


def test_the_list_sorts_by_any_column_in_sql(app: InProcessBox, studies: dict) -> None:
    for pid in PATIENTS:
        run_job(app, "First", studies[pid])
    for key in ("patient_id", "scratchdir", "bucket", "received_at", "state", "log_size"):
        for order in ("asc", "desc"):
            got = jobs(app, sort=key, order=order)
            values = [j[key] for j in got]
            assert values == sorted(values, reverse=order == "desc"), (key, order)
    durations = [j["processing_seconds"] for j in jobs(app, sort="processing_seconds",
                                                         order="asc")]  # fmt: skip
    known = [d for d in durations if d is not None]
    assert known == sorted(known) and durations[: len(known)] == known  # unfinished last
    for bad in ({"sort": "password"}, {"sort": "state", "order": "up"}):
        assert app.get("/api/v1/jobs", params=bad).status_code == 422


def test_sorted_pages_neither_repeat_nor_skip(app: InProcessBox) -> None:
    # Many jobs share a bucket: the id breaks ties, so pages add up to the whole list.
    everything = [j["scratchdir"] for j in jobs(app, sort="bucket")]
    paged: list[str] = []
    for offset in range(0, len(everything), 2):
        paged += [j["scratchdir"] for j in jobs(app, sort="bucket", limit="2",
                                                 offset=str(offset))]  # fmt: skip
    assert paged == everything


def test_a_thousand_jobs_in_one_bulk_delete(tmp_path: Path) -> None:
    home = tmp_path / "home"
    fill_finished_jobs(home, 1000, folders=True)
    with in_process_box(home) as app:
        assert app.get("/api/v1/jobs").json()["total"] == 1000
        answer = bulk(app, {"action": "delete", "filter": {}})
        assert answer["matched"] == 1000 and len(answer["done"]) == 1000
        assert answer["failed"] == []
        assert app.get("/api/v1/jobs").json()["total"] == 0
        assert not list(app.box.settings.scratch.glob("tmp.f*"))
        assert app.box.audit_page(AuditFilter(action="delete"), 1, 0)["total"] == 1000


def test_a_thousand_jobs_in_one_bulk_retry(tmp_path: Path) -> None:
    home = tmp_path / "home"
    fill_finished_jobs(home, 1000, folders=True)
    with in_process_box(home) as app:
        answer = bulk(app, {"action": "retry", "filter": {"state": "failed"}})
        failed = 1000 // 17 + 1  # every 17th job of the home failed
        assert answer["matched"] == failed and len(answer["done"]) == failed
        assert app.box.audit_page(AuditFilter(action="retry"), 1, 0)["total"] == failed
