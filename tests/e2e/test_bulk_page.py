"""Acting on many jobs from the page, in Debian's Chromium, on a box fed by dcmtk's storescu:
select rows (or every job matching the filter), bulk retry, bulk delete with a confirmation
that says how many, one zip of many outputs, run again with another bucket, sort by a
column header and the bucket filter. Screenshots of the selection bar and the confirmation
go to ``test-artifacts/screenshots/`` (``bulk-*``)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from magickbox.auth.roles import Role
from magickbox.testing.dicomgen import write_study
from magickbox.testing.homes import fill_finished_jobs
from tests.conftest import BoxServer, copy_bucket
from tests.e2e.peers import QUICK, api_jobs, wait_for
from tests.e2e.test_console import NARROW, WIDE, _page
from tests.e2e.test_page import SHOTS

pytestmark = pytest.mark.e2e

sync_api = pytest.importorskip("playwright.sync_api")

# Fails until the test makes the gate file: a retry after that is done.
FLAKY = """#!/bin/sh
if [ ! -e "{gate}" ]; then echo "no gate yet"; exit 3; fi
echo '[{{"success": "success", "message": "gate found"}}]' > "$MB_PROC_JSON"
"""
PASSWORD = "bulk page password"


@dataclass
class Site:
    box: BoxServer
    folder: Path
    gate: Path
    cookie: dict[str, str]
    sent: int = 0

    def send(self, bucket: str, patient: str) -> str:
        """One study by storescu to ``bucket``; the scratchdir of the job it became, ended."""
        self.sent += 1
        folder = self.folder / f"study-{self.sent}"
        write_study(folder, n_images=2, rows=16, cols=16, patient_id=patient)
        before = {j["scratchdir"] for j in api_jobs(self.box)}
        res = self.box.storescu(folder, bucket, "SCANNER")
        assert res.returncode == 0, res.stderr
        return wait_for(f"the job of {patient}", lambda: self._new_ended(before))

    def _new_ended(self, before: set[str]) -> str | None:
        new = [j for j in api_jobs(self.box) if j["scratchdir"] not in before]
        return new[0]["scratchdir"] if new and new[0]["state"] in ("done", "failed") else None

    def job(self, name: str) -> dict:
        return self.box.get(f"/api/v1/jobs/{name}").json()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("bulk-page")
    home = folder / "home"
    gate = folder / "gate"
    copy_bucket(home, "First", QUICK, description="Lists its input")
    copy_bucket(home, "Second", QUICK, description="Lists its input too")
    copy_bucket(home, "Flaky", FLAKY.format(gate=gate), description="Fails until the gate")
    box = BoxServer(home, quiet=0.3, env={"MAGICKBOX_ANNOUNCE": "0"}).start()
    try:
        box.add_user("bulk", Role.operator, PASSWORD)
        yield Site(box, folder, gate, box.login_cookie("bulk", PASSWORD))
    finally:
        box.stop()


@pytest.fixture
def page(browser, site: Site) -> Iterator:  # type: ignore[no-untyped-def]
    yield from _page(browser, WIDE, site)  # logged in by the session cookie


def shot(pg, name: str) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"bulk-{name}.png"), full_page=True)


def open_jobs(pg, site: Site, query: str = "") -> None:  # type: ignore[no-untyped-def]
    pg.goto(f"{site.box.url}/#/jobs{'?' + query if query else ''}")
    pg.locator("#rows tr[data-job]").first.wait_for()


def pick(pg, *names: str) -> None:  # type: ignore[no-untyped-def]
    for name in names:
        pg.locator(f'#rows tr[data-job="{name}"] input.pick').check()


def answer_dialog(pg, button: str) -> str:  # type: ignore[no-untyped-def]
    """The confirmation's question, after clicking ``button`` (OK or Cancel) in it."""
    dialog = pg.locator("dialog#confirm")
    dialog.wait_for(state="visible")
    question = dialog.locator("#confirm-text").inner_text()
    dialog.get_by_role("button", name=button).click()
    dialog.wait_for(state="hidden")
    return question


def dom_jobs(pg) -> list[str]:  # type: ignore[no-untyped-def]
    return pg.locator("#rows tr[data-job]").evaluate_all("rs => rs.map(r => r.dataset.job)")


def test_select_and_bulk_retry(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    failed = [site.send("Flaky", f"P-R{i}") for i in range(2)]
    assert all(site.job(n)["state"] == "failed" for n in failed)
    open_jobs(page, site, "bucket=Flaky&state=failed")
    for name in failed:  # each failed row says why, as the job's reason does
        why = page.locator(f'#rows tr[data-job="{name}"] .why').inner_text()
        assert why == site.job(name)["reason"] and "3" in why
    page.locator("#pickpage").check()  # the whole page: both failed jobs
    assert page.locator("#bulkcount").inner_text() == "2 jobs selected"
    shot(page, "selected")
    site.gate.touch()
    page.locator("#bulk-retry").click()
    assert answer_dialog(page, "OK").startswith("Run 2 jobs again?")
    page.locator("#bulkmsg").filter(has_text="Queued again: 2 jobs").wait_for()
    wait_for("the retried jobs done", lambda: all(site.job(n)["state"] == "done" for n in failed))
    page.locator("#state").select_option("done")
    for name in failed:
        page.locator(f'#rows tr[data-job="{name}"][data-state="done"]').wait_for()


def test_bulk_delete_asks_how_many_first(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    doomed = [site.send("Second", f"P-D{i}") for i in range(2)]
    open_jobs(page, site, "bucket=Second")
    pick(page, *doomed)
    page.locator("#bulk-delete").click()
    shot(page, "confirm-delete")
    assert answer_dialog(page, "Cancel").startswith("Delete 2 jobs and all their files?")
    assert all(site.job(n)["state"] == "done" for n in doomed)  # nothing happened
    page.locator("#bulk-delete").click()
    assert answer_dialog(page, "OK").startswith("Delete 2 jobs")
    page.locator("#bulkmsg").filter(has_text="Deleted: 2 jobs").wait_for()
    for name in doomed:
        assert site.box.get(f"/api/v1/jobs/{name}").status_code == 404
        page.locator(f'#rows tr[data-job="{name}"]').wait_for(state="detached")
    assert page.locator("#bulkbar").is_hidden()


def test_bulk_download_is_one_zip_of_the_outputs(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    made = [site.send("First", f"P-Z{i}") for i in range(2)]
    open_jobs(page, site, "bucket=First")
    pick(page, *made)
    with page.expect_download() as info:
        page.locator("#bulk-download").click()
    data = Path(info.value.path()).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        members = {name: zf.read(name) for name in zf.namelist()}
    assert set(members) == {f"{n}/OUTPUT/files.txt" for n in made}
    for name in made:  # each member is that job's own file, byte for byte
        own = site.box.get(f"/api/v1/jobs/{name}/files/files.txt", params={"download": "1"})
        assert members[f"{name}/OUTPUT/files.txt"] == own.content and own.content


def test_run_again_with_another_bucket(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    source = site.send("First", "P-AGAIN")
    open_jobs(page, site, "bucket=First")
    pick(page, source)
    page.locator("#bulk-bucket").select_option("Second")
    page.locator("#bulk-run").click()
    assert "1 job of bucket Second" in answer_dialog(page, "OK")
    page.locator("#bulkmsg").filter(has_text="New jobs made for: 1 job").wait_for()
    study = site.job(source)["study_uid"]
    again = wait_for("the new job", lambda: [
        j for j in api_jobs(site.box, bucket="Second", study_uid=study)
        if j["state"] == "done"])  # fmt: skip
    assert again[0]["source"] == "archive" and again[0]["scratchdir"] != source
    page.locator("#bucket").select_option("Second")
    page.locator(f'#rows tr[data-job="{again[0]["scratchdir"]}"]').wait_for()


def test_sort_by_a_column_header(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    for patient in ("P-S2", "P-S1", "P-S3"):
        site.send("First", patient)
    open_jobs(page, site)
    header = page.locator('button.sort[data-sort="patient_id"]')
    for order in ("desc", "asc"):
        header.click()
        page.wait_for_function(f"location.hash.includes('order={order}')")
        expected = [j["scratchdir"] for j in api_jobs(site.box, sort="patient_id", order=order,
                                                       limit=50)]  # fmt: skip
        page.wait_for_function(
            "want => [...document.querySelectorAll('#rows tr[data-job]')]"
            ".map(r => r.dataset.job).join() === want.join()", arg=expected)  # fmt: skip
        patients = [j["patient_id"] for j in api_jobs(site.box, sort="patient_id", order=order)]
        assert patients == sorted(patients, reverse=order == "desc")
        aria = "ascending" if order == "asc" else "descending"
        assert page.locator("th", has=header).get_attribute("aria-sort") == aria
    shot(page, "sorted")


def test_bucket_filter_control(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    site.send("Second", "P-B1")
    open_jobs(page, site)
    # the bucket list is fetched apart from the rows: it may come after them
    page.wait_for_function(
        "want => want.every(b => [...document.querySelectorAll('#bucket option')]"
        ".some(o => o.value === b))", arg=["First", "Second", "Flaky"])  # fmt: skip
    page.locator("#bucket").select_option("Second")
    page.wait_for_function("location.hash.includes('bucket=Second')")
    total = len(api_jobs(site.box, bucket="Second"))
    page.locator("#count").filter(has_text=f"of {total} jobs").wait_for()
    buckets = page.locator('#rows td[data-label="Bucket"]').all_inner_texts()
    assert buckets and set(buckets) == {"Second"} and len(buckets) == total


def test_all_matching_the_filter_beyond_one_page(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    fill_finished_jobs(home, 120, folders=True)  # every 17th failed: 112 done, more than a page
    failed = len(range(0, 120, 17))
    done = 120 - failed
    box = BoxServer(home, env={"MAGICKBOX_ANNOUNCE": "0"}).start()
    try:
        box.add_user("bulk", Role.operator, PASSWORD)
        site = Site(box, tmp_path, tmp_path / "gate", box.login_cookie("bulk", PASSWORD))
        for pg in _page(browser, NARROW, site):
            open_jobs(pg, site, "state=done")
            pg.locator("#pickpage-narrow").check()  # a phone has no table header
            pg.locator("#bulkcount").filter(has_text="50 jobs selected").wait_for()
            pg.locator("#pickall").click()
            assert pg.locator("#bulkcount").inner_text() == f"{done} jobs (all matching the filter)"
            shot(pg, "all-matching-narrow")
            assert pg.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
            pg.locator("#bulk-delete").click()
            assert answer_dialog(pg, "OK").startswith(f"Delete {done} jobs")
            pg.locator("#bulkmsg").filter(has_text=f"Deleted: {done} jobs").wait_for()
        assert box.get("/api/v1/jobs", params={"state": "done"}).json()["total"] == 0
        assert box.get("/api/v1/jobs", params={"state": "failed"}).json()["total"] == failed
    finally:
        box.stop()


def test_a_viewer_is_offered_the_download_only(site: Site, browser) -> None:  # type: ignore[no-untyped-def]
    name = site.send("First", "P-V1")
    site.box.add_user("looker", Role.viewer, PASSWORD)
    viewer = Site(site.box, site.folder, site.gate, site.box.login_cookie("looker", PASSWORD))
    for pg in _page(browser, WIDE, viewer):
        open_jobs(pg, viewer, "bucket=First")
        pick(pg, name)
        pg.locator("#bulk-download").wait_for()
        for action in ("retry", "delete", "run"):
            assert pg.locator(f"#bulk-{action}").count() == 0
        with pg.expect_download() as info:
            pg.locator("#bulk-download").click()
        with zipfile.ZipFile(info.value.path()) as zf:
            assert zf.namelist() == [f"{name}/OUTPUT/files.txt"]
