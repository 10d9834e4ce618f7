"""What the page's job view and problem views ask of the API, over the real app in this
process: one file of a job (path-safe, inline only for images), DICOM drawn as PNG, the
proc.json verdict, bucket problems, per-bucket figures and the disk in df's terms."""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Iterator

import pytest
from PIL import Image

from magickbox.testing.dicomgen import write_study
from tests.conftest import InProcessBox, copy_bucket, in_process_box

# OUTPUT: a PNG, an HTML page, a copy of the first DICOM file, a file in a folder, a link
# out of the job and a link to a folder; proc.json with a message.
RESULTS = """#!/bin/sh
set -e
cp "{png}" "$2/preview.png"
echo '<script>alert(1)</script>' > "$2/page.html"
cp "$(find "$1" -type f | sort | head -n 1)" "$2/first.dcm"
mkdir "$2/sub" && echo deep > "$2/sub/a.txt"
ln -s /etc/passwd "$2/passwd"
ln -s "$1" "$2/input-link"
echo '[{{"success": "success", "message": "3 results"}}]' > "$MB_PROC_JSON"
"""
NO_VERDICT = "#!/bin/sh\necho 'no proc.json written'\n"
FAILS = "#!/bin/sh\nexit 4\n"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessBox]:
    folder = tmp_path_factory.mktemp("console-api")
    png = folder / "pic.png"
    Image.new("RGB", (8, 6), (200, 30, 30)).save(png)
    home = folder / "home"
    copy_bucket(home, "Results", RESULTS.format(png=png))
    copy_bucket(home, "NoVerdict", NO_VERDICT)
    copy_bucket(home, "Fails", FAILS)
    copy_bucket(home, "NoBang", "echo 'no #! line'\n")
    no_exec = copy_bucket(home, "NoX", NO_VERDICT)
    (no_exec / "work.sh").chmod(0o644)
    with in_process_box(home) as app:
        yield app


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = tmp_path_factory.mktemp("study")
    write_study(folder, n_images=2, rows=24, cols=40)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, path.name)
    return buf.getvalue()


def run_job(app: InProcessBox, bucket: str, study: bytes) -> dict:
    made = app.client.post("/api/v1/jobs", data={"bucket": bucket},
                           files={"file": ("s.zip", study, "application/zip")})  # fmt: skip
    assert made.status_code == 201, made.text
    name = made.json()["scratchdir"]
    deadline = time.monotonic() + 60
    while (job := app.get(f"/api/v1/jobs/{name}").json())["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


@pytest.fixture(scope="module")
def results(app: InProcessBox, study: bytes) -> dict:
    job = run_job(app, "Results", study)
    assert job["state"] == "done", job
    return job


def file_url(job: dict, name: str) -> str:
    return f"/api/v1/jobs/{job['scratchdir']}/files/{name}"


def test_files_say_what_they_are(app: InProcessBox, results: dict) -> None:
    listed = app.get(f"/api/v1/jobs/{results['scratchdir']}/files").json()
    kinds = {f["name"]: f["kind"] for f in listed["files"]}
    assert kinds == {"preview.png": "image", "first.dcm": "dicom", "page.html": "",
                     "sub/a.txt": ""}  # fmt: skip  (links are not listed)


def test_one_file_is_served_images_inline_the_rest_as_downloads(
    app: InProcessBox, results: dict
) -> None:
    output = app.home / "scratch" / results["scratchdir"] / "OUTPUT"
    png = app.get(file_url(results, "preview.png"))
    assert png.status_code == 200 and png.content == (output / "preview.png").read_bytes()
    assert png.headers["content-type"] == "image/png"
    assert png.headers["content-disposition"].startswith("inline")
    assert png.headers["x-content-type-options"] == "nosniff"
    html = app.get(file_url(results, "page.html"))
    assert html.headers["content-type"] == "application/octet-stream"  # never run as a page
    assert html.headers["content-disposition"].startswith("attachment")
    asked = app.get(file_url(results, "preview.png"), params={"download": "true"})
    assert asked.headers["content-disposition"].startswith("attachment")
    assert app.get(file_url(results, "sub/a.txt")).text == "deep\n"
    name = sorted(os.listdir(output.parent / "INPUT"))[0]
    first = app.get(file_url(results, name), params={"part": "INPUT"})
    assert first.content == (output / "first.dcm").read_bytes()


@pytest.mark.parametrize(
    ("name", "status"),
    [("passwd", 404), ("input-link/x", 404), ("sub", 404), ("missing.png", 404),
     ("%2e%2e/info.json", 400), ("sub/%2e%2e/%2e%2e/info.json", 400), ("a//b", 400)],
)  # fmt: skip
def test_no_file_outside_the_job_is_served(
    app: InProcessBox, results: dict, name: str, status: int
) -> None:
    res = app.get(file_url(results, name))
    assert res.status_code == status, res.text
    assert res.json()["detail"]  # a reason, not a bare status
    assert "root:" not in res.text


def test_bad_part_or_job_is_refused(app: InProcessBox, results: dict) -> None:
    assert app.get(file_url(results, "x"), params={"part": "../etc"}).status_code == 422
    assert app.get("/api/v1/jobs/tmp.nosuchjb/files/x").status_code == 404


def test_dicom_is_drawn_as_png_on_request(app: InProcessBox, results: dict) -> None:
    drawn = app.get(file_url(results, "first.dcm"), params={"render": "png"})
    assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(drawn.content))
    assert picture.size == (40, 24)  # columns x rows of the image sent
    assert picture.getextrema()[0] < picture.getextrema()[1]  # not a blank picture
    for name, params in (("preview.png", {"render": "png"}),
                         ("first.dcm", {"render": "png", "frame": "3"})):  # fmt: skip
        refused = app.get(file_url(results, name), params=params)
        assert refused.status_code == 400, refused.text
        assert name in refused.json()["detail"]
    assert app.get(file_url(results, "first.dcm"), params={"render": "svg"}).status_code == 422


def test_a_job_carries_its_proc_json_verdict(
    app: InProcessBox, results: dict, study: bytes
) -> None:
    assert results["verdict"] == {"success": "success", "message": "3 results"}
    silent = run_job(app, "NoVerdict", study)
    assert silent["verdict"] is None
    listed = app.get("/api/v1/jobs").json()["jobs"]
    assert all("verdict" not in j for j in listed)  # lists do not read every folder


def test_buckets_carry_problems_and_figures(
    app: InProcessBox, results: dict, study: bytes
) -> None:
    failed = run_job(app, "Fails", study)
    assert failed["state"] == "failed"
    streams = app.home / "streams"
    (streams / "bucketNoExec").mkdir()
    (streams / "bucketNoExec" / "info.json").write_text('{"AETitle": "NoExec", "enabled": 1}')
    (streams / "bucketNoExec" / "work.sh").write_text("#!/bin/sh\n")
    (streams / "bucketJunk").mkdir()
    (streams / "bucketJunk" / "info.json").write_text("[1, 2")
    try:
        rows = {b["aetitle"]: b for b in app.get("/api/v1/buckets?all=true").json()}
        assert rows["NoExec"]["problems"] == ["work.sh is not executable (chmod +x work.sh)"]
        assert not rows["NoExec"]["ready"] and rows["NoExec"]["enabled"]
        assert rows["Junk"]["problems"][0].startswith("unreadable info.json")
        assert rows["Junk"]["folder"] == "bucketJunk" and not rows["Junk"]["enabled"]
        assert "Junk" not in {b["aetitle"] for b in app.get("/api/v1/buckets").json()}
        # A bucket with failed jobs only: no mean of done jobs, but its figures say why.
        fails = rows["Fails"]
        assert fails["mean_processing_seconds"] is None
        assert fails["stats"]["failed"] >= 1 and fails["stats"]["success_rate"] == 0
        assert fails["stats"]["mean_failed_seconds"] is not None
        stats = app.get("/api/v1/stats/buckets").json()
        assert stats["Results"]["success_rate"] == 1 and stats["Results"]["done"] >= 1
    finally:
        for name in ("bucketNoExec", "bucketJunk"):
            for path in sorted((streams / name).iterdir()):
                path.unlink()
            (streams / name).rmdir()


@pytest.mark.parametrize(
    ("bucket", "reason"),
    [("NoBang", "cannot start work.sh: Exec format error: "
                "work.sh has no #! line (e.g. #!/bin/sh): it cannot start"),
     ("NoX", "cannot start work.sh: Permission denied: "
             "work.sh is not executable (chmod +x work.sh)")],
)  # fmt: skip
def test_a_bucket_that_cannot_start_says_why(
    app: InProcessBox, study: bytes, bucket: str, reason: str
) -> None:
    job = run_job(app, bucket, study)
    assert (job["state"], job["reason"]) == ("failed", reason)


def test_disk_figures_add_up_as_df_counts_them(app: InProcessBox) -> None:
    disk = app.get("/api/v1/disk").json()
    st = os.statvfs(app.home / "scratch")
    assert disk["total"] == st.f_blocks * st.f_frsize
    assert disk["used"] + disk["free"] + disk["reserved"] == disk["total"]
    expected = 100 * disk["used"] / (disk["used"] + disk["free"])
    assert expected <= disk["use_percent"] < expected + 1  # rounded up, as df
