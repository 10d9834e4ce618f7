"""Series views, identity and getArchive over the real app, fed by dcmtk's storescu.

The box's views are compared with what dcmtk's dcmdump reads from the very files the job
holds: no pydicom on the checking side.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from magickbox.testing.dicomgen import MALFORMED_KINDS, malformed_dataset_bytes, write_study
from tests.conftest import InProcessBox, dcmtk, in_process_box
from tests.e2e.peers import QUICK, install_buckets, wait_for

BUCKET = "Views"
# Tags compared with dcmdump: keyword -> how dcmdump's text becomes the view's JSON value.
COMPARED = {
    "0008,0060": "Modality",
    "0008,0070": "Manufacturer",
    "0010,0010": "PatientName",
    "0010,0020": "PatientID",
    "0008,0050": "AccessionNumber",
    "0008,0020": "StudyDate",
    "0008,1030": "StudyDescription",
    "0008,103e": "SeriesDescription",
    "0020,0011": "SeriesNumber",
    "0018,0080": "RepetitionTime",
    "0018,0081": "EchoTime",
    "0018,0050": "SliceThickness",
    "0020,0037": "ImageOrientationPatient",
    "0008,0008": "ImageType",
    "0028,0010": "Rows",
    "0028,0030": "PixelSpacing",
    "0018,0060": "KVP",
    "0020,000d": "StudyInstanceUID",
    "0020,000e": "SeriesInstanceUID",
}
NUMERIC = {"DS": float, "IS": int, "US": int}
DUMP_LINE = re.compile(r"^\((\w{4},\w{4})\) (\w\w) (.*?)\s+#\s*\d+,\s*\d+\s+(\w+)$")


def dcmdump(path: Path) -> dict[str, Any]:
    """The compared tags of one file as dcmdump prints them, as JSON values."""
    args = [dcmtk("dcmdump"), "-q", "+L"]
    for tag in COMPARED:
        args += ["+P", tag]
    out = subprocess.run([*args, str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    found: dict[str, Any] = {}
    for line in out.stdout.splitlines():
        m = DUMP_LINE.match(line.strip())
        if not m or m.group(3).startswith("(no value"):
            continue
        vr, raw = m.group(2), m.group(3)
        text = raw[1:-1] if raw.startswith("[") else raw
        parts = [p.strip() for p in text.split("\\")]
        values = [NUMERIC[vr](float(p)) if vr in NUMERIC else p for p in parts]
        found[COMPARED[m.group(1).lower()]] = values[0] if len(values) == 1 else values
    return found


def storescu(app: InProcessBox, folder: Path, calling: str) -> None:
    cmd = [dcmtk("storescu"), "+sd", "+r", "-nh", "-aet", calling, "-aec", BUCKET,
           "127.0.0.1", str(app.dicom_port), str(folder)]  # fmt: skip
    env = {**os.environ, "TCP_NODELAY": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr


def finished_job(app: InProcessBox, **params: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        jobs = app.get("/api/v1/jobs", params=params).json()["jobs"]
        return jobs[0] if len(jobs) == 1 and jobs[0]["state"] in ("done", "failed") else None

    return wait_for(f"one finished job of {params}", probe, timeout=60)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessBox]:
    home = tmp_path_factory.mktemp("views") / "home"
    install_buckets(home, **{BUCKET: QUICK})
    with in_process_box(home, dicom=True, quiet_seconds=0.3) as box:
        yield box


@pytest.fixture(scope="module")
def sent(app: InProcessBox, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An MR study of 4 series (explicit VR LE) and a CT study (big endian), by storescu."""
    root = tmp_path_factory.mktemp("studies")
    mr = write_study(
        root / "mr",
        n_images=12,
        series=4,
        rows=32,
        cols=32,
        seed=11,
        patient_id="VIEW-MR",
        patient_name="Doe^Jane",
        study_description="brain",
    )
    ct = write_study(root / "ct", n_images=2, modality="CT", rows=32, cols=32, seed=12,
                     transfer_syntax="bigendian", patient_id="VIEW-CT",
                     study_description="chest")  # fmt: skip
    storescu(app, root / "mr", "VIEWSMR")
    storescu(app, root / "ct", "VIEWSCT")
    return {
        "mr": mr,
        "ct": ct,
        "mr_job": finished_job(app, caller_aet="VIEWSMR"),
        "ct_job": finished_job(app, caller_aet="VIEWSCT"),
    }


def input_dumps(app: InProcessBox, job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    folder = app.home / "scratch" / job["scratchdir"] / "INPUT"
    return {p.name: dcmdump(p) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("which", ["mr", "ct"])
def test_series_views_match_dcmdump_of_the_received_files(
    app: InProcessBox, sent: dict[str, Any], which: str
) -> None:
    job = sent[f"{which}_job"]
    dumps = input_dumps(app, job)
    by_series: dict[str, list[str]] = {}
    for name, dump in dumps.items():
        by_series.setdefault(dump["SeriesInstanceUID"], []).append(name)
    res = app.get(f"/api/v1/jobs/{job['scratchdir']}/series")
    assert res.status_code == 200, res.text
    series = res.json()
    assert {s["series_uid"] for s in series} == set(by_series) == set(sent[which].series_uids)
    for s in series:
        names = sorted(by_series[s["series_uid"]])
        assert sorted(s["files"]) == names
        assert s["num_files"] == s["view"]["NumFiles"] == len(names)
        first = dumps[names[0]]  # every compared tag is series-level: the first file's
        assert {k: s["view"].get(k) for k in first} == first
        # and the original's file in the home says the same
        raw = app.home / "views" / "raw" / job["study_uid"] / f"{s['series_uid']}.json"
        assert json.loads(raw.read_text()) == s["view"]


def test_received_series_are_classified(app: InProcessBox, sent: dict[str, Any]) -> None:
    mr = app.get(f"/api/v1/jobs/{sent['mr_job']['scratchdir']}/series").json()
    assert {s["description"]: s["classify_type"] for s in mr} == {
        "t1": ["MR", "T1", "axial"],
        "t2": ["MR", "T2", "axial"],
        "flair": ["MR", "FLAIR", "axial"],
        "dwi": ["MR", "DWI", "axial"],
    }
    assert [s["series_number"] for s in mr] == [1, 2, 3, 4]
    (ct,) = app.get(f"/api/v1/jobs/{sent['ct_job']['scratchdir']}/series").json()
    assert ct["classify_type"] == ["CT", "axial"] and ct["modality"] == "CT"


def test_identity_of_each_job_in_the_api_and_getscratch(
    app: InProcessBox, sent: dict[str, Any]
) -> None:
    for which, modality in (("mr", "MR"), ("ct", "CT")):
        job = app.get(f"/api/v1/jobs/{sent[f'{which}_job']['scratchdir']}").json()
        dump = next(iter(input_dumps(app, job).values()))
        assert job["patient_id"] == dump["PatientID"]
        assert job["patient_name"] == dump["PatientName"]
        assert job["accession_number"] == dump["AccessionNumber"]
        assert job["study_date"] == dump["StudyDate"]
        assert job["study_description"] == dump["StudyDescription"]
        assert job["modalities"] == [modality]
        assert job["series_count"] == len(sent[which].series_uids)
        (row,) = [r for r in app.jobs() if r["scratchdir"] == job["scratchdir"]]
        assert row["PatientID"] == dump["PatientID"]
        assert row["PatientName"] == dump["PatientName"]
        assert row["AccessionNumber"] == dump["AccessionNumber"]
        assert row["StudyDate"] == dump["StudyDate"]
        assert row["StudyDescription"] == dump["StudyDescription"]
        assert row["Modalities"] == [modality]
        assert row["SeriesCount"] == job["series_count"]
        # the original fields stay as they were
        assert row["pid"] == job["study_uid"] and row["processingTime"] != "0"


def scratchdirs(app: InProcessBox, **params: str) -> set[str]:
    res = app.get("/api/v1/jobs", params=params)
    assert res.status_code == 200, res.text
    return {j["scratchdir"] for j in res.json()["jobs"]}


def test_job_filters_on_identity(app: InProcessBox, sent: dict[str, Any]) -> None:
    mr, ct = sent["mr_job"]["scratchdir"], sent["ct_job"]["scratchdir"]
    assert scratchdirs(app, patient_id="VIEW-CT") == {ct}
    assert scratchdirs(app, q="view-mr") == {mr}  # q finds the PatientID
    assert scratchdirs(app, q="Doe^Ja") == {mr}  # and the name
    assert mr not in scratchdirs(app, modality="CT") and ct in scratchdirs(app, modality="CT")
    assert scratchdirs(app, modality="M") == set()  # a whole modality, not a part
    date = app.get(f"/api/v1/jobs/{mr}").json()["study_date"]
    assert {mr, ct} <= scratchdirs(app, study_date=date)
    assert {mr, ct} <= scratchdirs(app, study_date=f"19000101-{date}")
    assert scratchdirs(app, study_date="19000101-19000102") == set()
    bad = app.get("/api/v1/jobs", params={"study_date": "2024-01-01"})
    assert bad.status_code == 422


def test_get_archive_lists_the_studies(app: InProcessBox, sent: dict[str, Any]) -> None:
    res = app.get("/code/php/getArchive.php")
    assert res.status_code == 200
    rows = {r["SIUID"]: r for r in res.json()}
    for which in ("mr", "ct"):
        job = sent[f"{which}_job"]
        dump = next(iter(input_dumps(app, job).values()))
        assert rows[job["study_uid"]] == {
            "PatientID": dump["PatientID"],
            "AccessionNumber": dump["AccessionNumber"],
            "SIUID": job["study_uid"],
            "StudyDate": dump["StudyDate"],
            "PatientName": dump["PatientName"],
            "StudyDescription": dump["StudyDescription"],
        }


def test_a_study_sent_again_counts_each_file_once_in_views_raw(
    app: InProcessBox, sent: dict[str, Any]
) -> None:
    folder = sent["mr"].paths[0].parent
    storescu(app, folder, "VIEWSAGAIN")
    again = finished_job(app, caller_aet="VIEWSAGAIN")
    assert again["scratchdir"] != sent["mr_job"]["scratchdir"]
    assert again["series_count"] == 4
    raw = app.home / "views" / "raw" / again["study_uid"]
    counts = {json.loads(p.read_text())["NumFiles"] for p in raw.glob("*.json")}
    assert counts == {3}  # 12 images in 4 series, each file once though sent twice


def test_deleting_a_study_removes_its_views(app: InProcessBox, sent: dict[str, Any]) -> None:
    job = sent["ct_job"]
    raw = app.home / "views" / "raw" / job["study_uid"]
    assert raw.is_dir()
    assert app.client.delete(f"/api/v1/studies/{job['study_uid']}").status_code == 200
    assert not raw.exists()
    assert app.get(f"/api/v1/jobs/{job['scratchdir']}/series").status_code == 404
    assert job["study_uid"] not in {r["SIUID"] for r in app.get("/code/php/getArchive.php").json()}


# -- uploads, rules and the test endpoint (no DICOM port needed) -------------------------


def study_zip(tmp_path: Path, **kw: Any) -> bytes:
    info = write_study(tmp_path / "zip", rows=16, cols=16, **kw)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in info.paths:
            zf.write(p, f"study/{p.name}")
    return buf.getvalue()


def upload(app: InProcessBox, data: bytes) -> dict[str, Any]:
    res = app.client.post(
        "/api/v1/jobs", data={"bucket": BUCKET}, files={"file": ("s.zip", data, "application/zip")}
    )
    assert res.status_code == 201, res.text
    return res.json()


@pytest.fixture
def plain(app_factory: Any, tmp_path: Path) -> InProcessBox:
    home = tmp_path / "home"
    install_buckets(home, **{BUCKET: QUICK})
    return app_factory(home=home)


def test_an_upload_gets_views_and_identity(plain: InProcessBox, tmp_path: Path) -> None:
    job = upload(plain, study_zip(tmp_path, n_images=4, series=2, seed=21, patient_id="UP-1"))
    assert job["patient_id"] == "UP-1" and job["series_count"] == 2
    series = plain.get(f"/api/v1/jobs/{job['scratchdir']}/series").json()
    assert [s["num_files"] for s in series] == [2, 2]
    assert all(f.startswith("study/") for s in series for f in s["files"])
    assert [s["classify_type"] for s in series] == [["MR", "T1", "axial"], ["MR", "T2", "axial"]]


def test_views_can_be_switched_off(app_factory: Any, tmp_path: Path) -> None:
    home = tmp_path / "off"
    install_buckets(home, **{BUCKET: QUICK})
    off = app_factory(home=home, series_views=False)
    job = upload(off, study_zip(tmp_path, n_images=2, seed=22))
    assert job["series_count"] == 0 and job["patient_id"] == ""
    assert off.get(f"/api/v1/jobs/{job['scratchdir']}/series").json() == []
    assert not (home / "views").exists()


def test_rules_are_the_default_at_first_start(plain: InProcessBox) -> None:
    from magickbox.study.views import default_rules_text

    stored = plain.home / "classifyRules.json"
    assert stored.read_text() == default_rules_text()
    res = plain.get("/api/v1/classify/rules")
    assert res.status_code == 200 and res.text == default_rules_text()


def test_bad_rules_are_refused_with_every_problem_by_place(plain: InProcessBox) -> None:
    before = plain.get("/api/v1/classify/rules").text
    bad = [
        {"type": "A", "rules": [{"tag": ["0x0008", "0x0060"], "operator": "lt", "value": 1}]},
        {"type": "B", "rules": [{"tag": ["0x0018"], "value": 1}]},
        {"type": "C", "rules": [{"rule": "nope"}]},
        {"type": "D", "rules": [{"tag": ["0x0008", "0x103e"], "value": "(unclosed"}]},
    ]
    res = plain.client.put("/api/v1/classify/rules", content=json.dumps(bad))
    assert res.status_code == 400
    body = res.json()
    assert body["ok"] is False
    places = [p.split(":")[0] for p in body["problems"]]
    assert places == ["[0].rules[0].operator", "[1].rules[0].tag", "[3].rules[0].value",
                      "[2].rules[0].rule"]  # fmt: skip
    not_json = plain.client.put("/api/v1/classify/rules", content="[{")
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["detail"]
    assert plain.get("/api/v1/classify/rules").text == before  # unchanged


EVERY_OPERATOR = [
    {"type": "regexp", "rules": [{"tag": ["0x0008", "0x103e"], "value": "^t[12]$"}]},
    {"type": "eq", "rules": [{"tag": ["0x0020", "0x0011"], "value": 2, "operator": "=="}]},
    {"type": "ne", "rules": [{"tag": ["0x0008", "0x0060"], "value": "CT", "operator": "!="}]},
    {"type": "lt", "rules": [{"tag": ["0x0018", "0x0080"], "value": 1000, "operator": "<"}]},
    {"type": "gt", "rules": [{"tag": ["0x0018", "0x0081"], "value": 60, "operator": ">"}]},
    {"type": "exist", "rules": [{"tag": ["0x0018", "0x0087"], "operator": "exist"}]},
    {"type": "notexist", "rules": [{"tag": ["0x0018", "0x0082"], "operator": "notexist"}]},
    {"type": "contains", "rules": [{"tag": ["0x0008", "0x0008"], "value": "PRIMARY",
                                    "operator": "contains"}]},
    {"type": "approx", "rules": [{"tag": ["0x0020", "0x0037"], "value": [1, 0, 0, 0, 1, 0.05],
                                  "operator": "approx", "approxLevel": 0.1}]},
    {"type": "index", "rules": [{"tag": ["0x0008", "0x0008", 2], "value": "AXIAL"}]},
    {"type": "files", "rules": [{"tag": ["NumFiles"], "value": 1, "operator": ">"}]},
    {"type": "negated", "rules": [{"tag": ["0x0008", "0x103e"], "value": "t1", "negate": "yes"}]},
    {"type": "reuse", "id": "reuse", "rules": [{"rule": "t2ish"}]},
    {"type": "t2ish", "id": "t2ish", "rules": [{"tag": ["0x0018", "0x0080"], "value": 2000,
                                                "operator": ">"}]},
    {"type": "late", "check": "SeriesLevel",
     "rules": [{"tag": ["ClassifyType"], "value": "gt", "operator": "contains"}]},
]  # fmt: skip


def test_saved_rules_with_every_operator_classify_new_jobs(
    plain: InProcessBox, tmp_path: Path
) -> None:
    res = plain.client.put("/api/v1/classify/rules", content=json.dumps(EVERY_OPERATOR))
    assert res.status_code == 200, res.text
    assert res.json() == {"ok": True, "types": len(EVERY_OPERATOR)}
    job = upload(plain, study_zip(tmp_path, n_images=4, series=2, seed=23))
    series = plain.get(f"/api/v1/jobs/{job['scratchdir']}/series").json()
    # dicomgen: series 1 "t1" TR 500 TE 12, series 2 "t2" TR 4000 TE 90; 2 files each
    common = ["exist", "notexist", "contains", "approx", "index", "files"]
    assert series[0]["classify_type"] == ["regexp", "ne", "lt", *common]  # file order
    assert series[1]["classify_type"] == [
        "regexp", "eq", "ne", "gt", *common, "negated", "reuse", "t2ish", "late"
    ]  # fmt: skip


def test_classify_test_explains_a_stored_series(plain: InProcessBox, tmp_path: Path) -> None:
    job = upload(plain, study_zip(tmp_path, n_images=2, seed=24))
    (series,) = plain.get(f"/api/v1/jobs/{job['scratchdir']}/series").json()
    res = plain.client.post(
        "/api/v1/classify/test",
        data={"study_uid": job["study_uid"], "series_uid": series["series_uid"]},
    )
    assert res.status_code == 200, res.text
    (result,) = res.json()["series"]
    assert result["ClassifyType"] == ["MR", "T1", "axial"] == series["classify_type"]
    types = {t["type"]: t for t in result["types"] if t["type"] in ("T1", "T2")}
    assert types["T1"]["matched"] and not types["T2"]["matched"]
    failed = [r for r in types["T2"]["rules"] if not r["held"]]
    assert any("RepetitionTime" in r["rule"] and "500 > 2000 is False" in r["reason"]
               for r in failed)  # fmt: skip
    assert result["view"]["NumFiles"] == 2


def test_classify_test_with_a_file_and_unsaved_rules(plain: InProcessBox) -> None:
    import pydicom.data

    path = Path(pydicom.data.__file__).parent / "test_files" / "MR_small.dcm"
    files = {"file": ("MR_small.dcm", path.read_bytes(), "application/dicom")}
    res = plain.client.post("/api/v1/classify/test", files=files)
    assert res.status_code == 200, res.text
    (result,) = res.json()["series"]
    assert result["ClassifyType"] == ["MR", "T2", "axial"]
    rules = json.dumps([{"type": "long TE", "rules": [
        {"tag": ["0x0018", "0x0081"], "value": 200, "operator": ">"}]}])  # fmt: skip
    res = plain.client.post("/api/v1/classify/test", files=files, data={"rules": rules})
    (result,) = res.json()["series"]
    assert result["ClassifyType"] == ["long TE"]
    assert result["types"][0]["rules"][0]["reason"] == "240 > 200 is True"


def test_classify_test_refuses_bad_input(plain: InProcessBox) -> None:
    post = plain.client.post
    assert post("/api/v1/classify/test").status_code == 400  # nothing to classify
    not_dicom = post("/api/v1/classify/test", files={"file": ("x.txt", b"hello", "text/plain")})
    assert not_dicom.status_code == 400 and "DICOM" in not_dicom.json()["detail"]
    unknown = post("/api/v1/classify/test", data={"study_uid": "1.2.3.4"})
    assert unknown.status_code == 404
    bad_uid = post("/api/v1/classify/test", data={"study_uid": "../etc"})
    assert bad_uid.status_code == 400
    bad_rules = post("/api/v1/classify/test", data={"study_uid": "1.2.3", "rules": "[1]"})
    assert bad_rules.status_code == 400 and bad_rules.json()["problems"]


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_classify_test_on_broken_files_answers_without_a_500(
    plain: InProcessBox, kind: str
) -> None:
    files = {"file": ("bad.dcm", malformed_dataset_bytes(kind), "application/dicom")}
    res = plain.client.post("/api/v1/classify/test", files=files)
    # a header that still parses is classified; one that does not is refused by name
    assert res.status_code in (200, 400), res.text
    if res.status_code == 400:
        assert "DICOM" in res.json()["detail"]


def test_an_arrival_left_by_a_crash_gets_views_at_the_next_start(
    app_factory: Any, tmp_path: Path
) -> None:
    """No views in memory after a crash: the job reads its INPUT's headers once."""
    home = tmp_path / "crashed"
    install_buckets(home, **{BUCKET: QUICK})
    incoming = home / "scratch" / ".incoming"
    info = write_study(incoming / "a1", n_images=4, series=2, rows=16, cols=16, seed=31)
    key = {"caller_aet": "CRASHED", "called_aet": BUCKET, "caller_ip": "127.0.0.1",
           "study_uid": info.study_uid, "started": 1.0}  # fmt: skip
    (incoming / "a1.json").write_text(json.dumps(key))
    app = app_factory(home=home)
    job = finished_job(app, caller_aet="CRASHED")
    assert job["series_count"] == 2 and job["patient_id"] == "MB-0001"
    series = app.get(f"/api/v1/jobs/{job['scratchdir']}/series").json()
    assert sorted(f for s in series for f in s["files"]) == sorted(p.name for p in info.paths)
    assert (home / "views" / "raw" / info.study_uid).is_dir()


def test_a_hostile_series_uid_never_becomes_a_path(plain: InProcessBox, tmp_path: Path) -> None:
    import pydicom

    from magickbox.names import study_key

    info = write_study(tmp_path / "evil", n_images=1, rows=16, cols=16, seed=41)
    ds = pydicom.dcmread(info.paths[0])
    ds.SeriesInstanceUID = "../../../evil"
    ds.save_as(info.paths[0])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(info.paths[0], "evil.dcm")
    job = upload(plain, buf.getvalue())
    (series,) = plain.get(f"/api/v1/jobs/{job['scratchdir']}/series").json()
    assert series["series_uid"] == "../../../evil"  # kept as it came, in the database
    written = sorted(p.relative_to(plain.home) for p in (plain.home / "views").rglob("*.json"))
    assert written == [Path("views/raw", info.study_uid, f"{study_key('../../../evil')}.json")]
    assert not list(tmp_path.rglob("evil.json"))
