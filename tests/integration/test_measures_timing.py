"""Measures, timing, ETAs and live settings over the real app in this process, with jobs
made by uploads and run by real bucket scripts.

20 jobs (each a study of its own patient) write measures.json ($MB_MEASURES or OUTPUT) and
come back as a 20-row CSV the csv module (and pandas, if installed) reads, with each job's
PatientID, StudyDate and series types from the files; timing.php is checked against a
hand computation over the jobs' own times; ETAs are checked against the queue played
forward by hand; setup.php changes a live setting and the queue follows it.
"""

from __future__ import annotations

import csv
import io
import statistics
import subprocess
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from magickbox.testing.dicomgen import write_study
from tests.conftest import InProcessBox, copy_bucket, dcmtk, in_process_box
from tests.e2e.peers import wait_for

# Writes what it measured of its INPUT; with the argument "output" into OUTPUT/ instead of
# $MB_MEASURES. The jobname is sub-<i>, so the expected values follow from the name alone.
MEASURE_SH = """#!/bin/sh
n=$(find "$1" -type f | wc -l)
i=${MB_JOBNAME#sub-}
where="$MB_MEASURES"
[ "$3" = output ] && where="$2/measures.json"
printf '{"subject": "%s", "files": %d, "half": %s.5, "label": "s,\\\\"%s\\\\""}' \\
  "$MB_JOBNAME" "$n" "$i" "$i" > "$where"
"""
BAD_SH = """#!/bin/sh
echo '{"volume": [1, 2]}' > "$MB_MEASURES"
"""
LINK_SH = """#!/bin/sh
ln -s /etc/passwd "$2/measures.json"
"""
# Holds each job until $MB_HOME/go-<bucket> exists.
GATE_SH = """#!/bin/sh
while [ ! -f "$MB_HOME/go-$MB_AETITLE_CALLED" ]; do sleep 0.05; done
"""
N_JOBS = 20


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessBox]:
    home = tmp_path_factory.mktemp("measures") / "home"
    copy_bucket(home, "Measure", MEASURE_SH, concurrency=2)
    copy_bucket(home, "Bad", BAD_SH)
    copy_bucket(home, "Link", LINK_SH)
    copy_bucket(home, "Gate", GATE_SH, concurrency=1)
    copy_bucket(home, "Gate2", GATE_SH)  # concurrency from the settings
    with in_process_box(home) as app:
        yield app


@pytest.fixture(scope="module")
def study_zip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return zip_of_study(tmp_path_factory.mktemp("study"))


def zip_of_study(folder: Path, patient_id: str = "MB-0001") -> bytes:
    """A zip of a 3-image MR study (one series, SeriesDescription "t1") of ``patient_id``."""
    study = write_study(folder, n_images=3, rows=16, cols=16, patient_id=patient_id)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in study.paths:
            zf.write(path, f"study/{path.name}")
    return buf.getvalue()


def upload(app: InProcessBox, content: bytes, bucket: str, jobname: str, args: str = "") -> str:
    res = app.client.post(
        "/code/php/processZip.php",
        data={"aetitle": bucket, "sender": "tester", "jobname": jobname, "arguments": args},
        files={"theFile": ("study.zip", content, "application/zip")},
    )
    assert res.status_code == 200, res.text
    return res.json()["scratchdir"]


def api_jobs(app: InProcessBox, **params: str) -> list[dict]:
    return app.get("/api/v1/jobs", params={"limit": 1000, **params}).json()["jobs"]


def finished(app: InProcessBox, bucket: str, n: int) -> list[dict]:
    def probe() -> list[dict] | None:
        jobs = api_jobs(app, bucket=bucket)
        done = len(jobs) == n and all(j["state"] in ("done", "failed") for j in jobs)
        return jobs if done else None

    return wait_for(f"{n} finished jobs of {bucket}", probe)


@pytest.fixture(scope="module")
def measured(app: InProcessBox, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    root = tmp_path_factory.mktemp("subjects")
    for i in range(N_JOBS):
        content = zip_of_study(root / f"sub-{i}", patient_id=f"P-{i:03d}")
        upload(app, content, "Measure", f"sub-{i}", "output" if i % 2 else "")
    return finished(app, "Measure", N_JOBS)


def dumped_study_date(app: InProcessBox, job: dict) -> str:
    """StudyDate of one INPUT file of the job as dcmtk's dcmdump reads it (not pydicom)."""
    inputs = app.box.settings.scratch / job["scratchdir"] / "INPUT"
    path = sorted(p for p in inputs.rglob("*") if p.is_file())[0]
    out = subprocess.run([dcmtk("dcmdump"), "-q", "+P", "0008,0020", str(path)],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    return out.stdout.split("[", 1)[1].split("]", 1)[0]


def test_measures_of_20_jobs_are_a_20_row_csv(app: InProcessBox, measured: list[dict]) -> None:
    res = app.get("/api/v1/measures", params={"bucket": "Measure", "format": "csv"})
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/csv")
    assert 'filename="measures-Measure.csv"' in res.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(res.text)))
    assert len(rows) == N_JOBS
    assert list(rows[0]) == ["jobname", "scratchdir", "state", "PatientID", "StudyDate",
                             "series_types", "subject", "files", "half", "label"]  # fmt: skip
    by_name = {r["jobname"]: r for r in rows}
    assert set(by_name) == {f"sub-{i}" for i in range(N_JOBS)}
    scratchdirs = {j["jobname"]: j["scratchdir"] for j in measured}
    study_date = dumped_study_date(app, measured[0])
    assert len(study_date) == 8 and study_date.isdigit()
    for i in range(N_JOBS):
        row = by_name[f"sub-{i}"]
        assert row["scratchdir"] == scratchdirs[f"sub-{i}"] and row["state"] == "done"
        assert row["PatientID"] == f"P-{i:03d}" and row["StudyDate"] == study_date
        assert {"MR", "T1"} <= set(row["series_types"].split(";"))  # the "t1" series
        assert "T2" not in row["series_types"].split(";")
        assert row["subject"] == f"sub-{i}" and int(row["files"]) == 3
        assert float(row["half"]) == i + 0.5
        assert row["label"] == f's,"{i}"'  # a comma and quotes survive the CSV


def test_pandas_reads_the_measures_csv(app: InProcessBox, measured: list[dict]) -> None:
    pandas = pytest.importorskip("pandas")
    res = app.get("/api/v1/measures", params={"bucket": "Measure", "format": "csv"})
    frame = pandas.read_csv(io.StringIO(res.text), dtype={"PatientID": str, "StudyDate": str})
    assert len(frame) == N_JOBS
    assert sorted(frame["PatientID"]) == [f"P-{i:03d}" for i in range(N_JOBS)]
    assert sorted(frame["half"]) == [i + 0.5 for i in range(N_JOBS)]


def test_measures_as_json_getscratch_and_db_php(app: InProcessBox, measured: list[dict]) -> None:
    table = app.get("/api/v1/measures", params={"bucket": "Measure"}).json()
    assert table["columns"][:3] == ["jobname", "scratchdir", "state"]
    assert len(table["rows"]) == N_JOBS
    job = next(j for j in measured if j["jobname"] == "sub-3")
    expected = {"subject": "sub-3", "files": 3, "half": 3.5, "label": 's,"3"'}
    listed = {e["scratchdir"]: e for e in app.jobs()}
    assert listed[job["scratchdir"]]["measures"] == expected  # the original's field
    assert list(listed[job["scratchdir"]])[-1] == "processingLast"
    assert app.get(f"/api/v1/jobs/{job['scratchdir']}/measures").json() == expected
    db = app.get("/code/php/db.php", params={"sender": "tester", "query": job["scratchdir"]})
    assert db.json() == {"measures.json": expected}
    path = f"/data/scratch/{job['scratchdir']}"  # the original passed a path
    assert app.get("/code/php/db.php", params={"query": path}).json() == db.json()
    parsed = app.get("/code/php/db.php", params={"parse": job["scratchdir"]}).json()
    assert parsed == {"ok": True, "message": "measures.json: kept 4 measures in 1 rows"}
    assert app.get("/code/php/db.php").status_code == 400
    assert app.get("/code/php/db.php", params={"query": "tmp.nosuchjob"}).status_code == 404


def test_a_bad_measures_file_is_a_log_line_never_a_failed_job(
    app: InProcessBox, study_zip: bytes
) -> None:
    bad = upload(app, study_zip, "Bad", "bad")
    link = upload(app, study_zip, "Link", "link")
    finished(app, "Bad", 1)
    finished(app, "Link", 1)
    for name, says in (
        (bad, 'measures.json["volume"] is a list; a measure is a number, a text or null'),
        (link, "measures.json is not a regular file"),
    ):
        job = app.get(f"/api/v1/jobs/{name}").json()
        assert job["state"] == "done", job
        log = app.get(f"/api/v1/jobs/{name}/log").text
        assert says in log and "no measures kept" in log
        assert app.get(f"/api/v1/jobs/{name}/measures").json() is None
        assert "measures" not in {e["scratchdir"]: e for e in app.jobs()}[name]
        assert app.get("/code/php/db.php", params={"query": name}).json() == {}
    assert "root:" not in app.get(f"/api/v1/jobs/{link}/log").text


def test_timing_php_against_a_hand_computation(app: InProcessBox, measured: list[dict]) -> None:
    times = [j["processing_seconds"] for j in api_jobs(app, bucket="Measure")]
    mean, std = statistics.fmean(times), statistics.stdev(times)
    got = app.get("/code/php/timing.php", params={"aetitle": "Measure"}).json()
    assert got["aetitle"] == "Measure" and got["n"] == N_JOBS
    assert isinstance(got["avg"], int) and abs(got["avg"] - mean) <= 0.5 + 1e-3
    assert abs(got["std"] - std) <= 0.005 + 1e-3
    bucket = next(b for b in app.get("/api/v1/buckets").json() if b["aetitle"] == "Measure")
    assert bucket["timing"]["n"] == N_JOBS
    assert bucket["timing"]["mean_seconds"] == pytest.approx(mean, abs=2e-3)
    assert bucket["timing"]["std_seconds"] == pytest.approx(std, abs=2e-3)
    # The quoted form the original trimmed, and a bucket with no runs yet.
    quoted = app.get("/code/php/timing.php", params={"aetitle": '"Measure"'}).json()
    assert quoted == got
    assert app.get("/code/php/timing.php", params={"aetitle": "Nobody"}).json() == []


def test_timing_php_time_adds_a_sample(app: InProcessBox) -> None:
    for t in ("10", "20"):
        got = app.get("/code/php/timing.php", params={"aetitle": "Hand", "time": t}).json()
    assert got == {"aetitle": "Hand", "avg": 15.0, "std": "0", "n": 2}
    app.get("/code/php/timing.php", params={"aetitle": "Hand", "time": "60"})
    got = app.get("/code/php/timing.php", params={"aetitle": "Hand"}).json()
    # by hand: mean 30; deviations -20, -10, 30; std = sqrt((400 + 100 + 900) / 2)
    assert got == {"aetitle": "Hand", "avg": 30, "std": 26.46, "n": 3}
    for bad in ({"time": "x"}, {"time": "-1"}, {"time": "nan"}, {}):
        res = app.get("/code/php/timing.php", params={"aetitle": "Hand", **bad})
        assert res.status_code == 400 if bad else res.status_code == 200
    assert app.get("/code/php/timing.php").status_code == 400


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_eta_plays_the_queue_forward(app: InProcessBox, study_zip: bytes) -> None:
    for t in ("90", "100", "110"):  # the bucket's history: a mean of 100 s
        app.get("/code/php/timing.php", params={"aetitle": "Gate", "time": t})
    names = [upload(app, study_zip, "Gate", f"g{i}") for i in range(3)]

    def lined_up() -> dict[str, dict] | None:
        jobs = {j["scratchdir"]: j for j in api_jobs(app, bucket="Gate")}
        states = [jobs[n]["state"] for n in names]
        return jobs if states == ["running", "queued", "queued"] else None

    jobs = wait_for("one Gate job running, two queued", lined_up)
    run, q1, q2 = (jobs[n]["eta"] for n in names)
    started = seconds(jobs[names[0]]["started_at"])
    assert seconds(run["finishes_at"]) == pytest.approx(started + 100, abs=2e-3)
    assert seconds(q1["starts_at"]) == pytest.approx(started + 100, abs=2e-3)
    assert seconds(q2["starts_at"]) == pytest.approx(started + 200, abs=2e-3)
    assert seconds(q2["finishes_at"]) == pytest.approx(started + 300, abs=2e-3)
    assert (run["ahead"], q1["ahead"], q2["ahead"]) == (0, 1, 2)
    assert run["mean_seconds"] == 100.0
    single = app.get(f"/api/v1/jobs/{names[2]}").json()["eta"]
    assert single["starts_at"] == q2["starts_at"]
    (app.home / "go-Gate").touch()
    done = finished(app, "Gate", 3)
    assert all(j["eta"] is None for j in done)


def test_setup_php_get_and_set_a_live_setting(app: InProcessBox, study_zip: bytes) -> None:
    got = app.get("/code/php/setup.php", params={"command": "get"}).json()
    assert got["concurrency"] == 1 and "concurrency" in got["live"]
    assert {s["name"]: s["live"] for s in got["settings"]}["dicom_port"] is False
    names = [upload(app, study_zip, "Gate2", f"h{i}") for i in range(2)]

    def states() -> list[str]:
        jobs = {j["scratchdir"]: j["state"] for j in api_jobs(app, bucket="Gate2")}
        return [jobs[n] for n in names]

    wait_for("one Gate2 job running", lambda: states() == ["running", "queued"])
    res = app.get("/code/php/setup.php", params={"command": "set", "value": "concurrency=2"})
    assert res.status_code == 200, res.text
    assert res.json()["changed"] == {"concurrency": 2}
    wait_for("both Gate2 jobs running", lambda: states() == ["running", "running"])
    assert "\nconcurrency = 2\n" in (app.home / "magickbox.toml").read_text()
    assert app.get("/api/v1/setup").json()["concurrency"] == 2
    (app.home / "go-Gate2").touch()
    finished(app, "Gate2", 2)
    res = app.client.patch("/api/v1/setup", json={"concurrency": 1, "quiet_seconds": 0.3})
    assert res.status_code == 200, res.text
    assert app.box.grouper.quiet == 0.3 and app.box.settings.concurrency == 1


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("dicom_port=1", "cannot change while the box runs"),
        ("concurrency=0", "concurrency must be at least 1"),
        ("routing_retries=-1", "must be at least 0"),
        ("concurrency=lots", "concurrency:"),
        ("nonsense", "not NAME=VALUE"),
        ("", "no value to set"),
    ],
)
def test_setup_php_refuses_a_bad_change(app: InProcessBox, value: str, says: str) -> None:
    before = (app.home / "magickbox.toml").read_text()
    res = app.get("/code/php/setup.php", params={"command": "set", "value": value})
    assert res.status_code == 400 and says in res.json()["detail"], res.text
    assert (app.home / "magickbox.toml").read_text() == before
    assert app.get("/code/php/setup.php", params={"command": "nope"}).status_code == 400


@pytest.mark.parametrize("bucket", ["\u0100x", 'a"b', "a\r\nSet-Cookie: x=1", "ü"])
def test_a_csv_for_any_bucket_name_keeps_its_header_whole(app: InProcessBox, bucket: str) -> None:
    """The bucket is the caller's text: a name no header may carry is not a 500 (found by
    schemathesis with "\u0100") and never splits the header."""
    res = app.get("/api/v1/measures", params={"bucket": bucket, "format": "csv"})
    assert res.status_code == 200, res.text
    disposition = res.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="measures-') and disposition.isascii()
    assert "set-cookie" not in res.headers


@pytest.mark.parametrize(
    ("method", "path", "kw", "status"),
    [
        ("get", "/api/v1/jobs/..%2F..%2Fetc/measures", {}, 404),
        ("get", "/api/v1/jobs/tmp.nosuchjob/measures", {}, 404),
        ("get", "/code/php/db.php", {"params": {"query": "/data/scratch/../../etc"}}, 400),
        ("get", "/code/php/db.php", {"params": {"parse": "tmp.nosuchjob"}}, 404),
        ("get", "/api/v1/measures", {"params": {"bucket": "x" * 65}}, 422),
        ("get", "/api/v1/measures", {"params": {"format": "xlsx"}}, 422),
        ("get", "/code/php/timing.php", {"params": {"aetitle": "x" * 65, "time": "1"}}, 400),
        ("patch", "/api/v1/setup", {"json": ["concurrency"]}, 422),
        ("patch", "/api/v1/setup", {"json": {}}, 400),
        ("patch", "/api/v1/setup", {"json": {"concurrency": [2]}}, 400),
        ("patch", "/api/v1/setup", {"json": {"routing_port": 70000}}, 400),
        ("post", "/api/v1/studies/run", {"content": b"not json"}, 422),
        ("post", "/api/v1/studies/1.2.3/run", {"json": {"bucket": ""}}, 422),
    ],
)
def test_bad_requests_get_a_clear_error(
    app: InProcessBox, method: str, path: str, kw: dict, status: int
) -> None:
    res = app.client.request(method.upper(), path, **kw)
    assert res.status_code == status, res.text
    assert "detail" in res.json()
