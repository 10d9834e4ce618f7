"""The web page at ``/`` in real headless Chromium, against a live box that received real
studies from dcmtk's storescu: list, live states, search and A–Z, a job's log, files and
zips, delete with confirmation, overview, buckets, admin. Screenshots of the main pages go
to ``test-artifacts/screenshots/`` (git-ignored; CI prints where), or to
``$MAGICKBOX_SCREENSHOTS``: ``MAGICKBOX_SCREENSHOTS=docs/screenshots`` refreshes the README's.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from magickbox.auth.roles import Role
from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer, copy_bucket
from tests.e2e.browser import logged_in_page
from tests.e2e.peers import QUICK, api_jobs, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.long]

sync_api = pytest.importorskip("playwright.sync_api")
SHOTS = Path(
    os.environ.get(
        "MAGICKBOX_SCREENSHOTS", Path(__file__).parents[2] / "test-artifacts/screenshots"
    )
)
WAIT_MS = 60_000  # the page polls every 2 s; generous, for a loaded CI machine

# A bucket that runs until the test opens its gate: its job stays "running" meanwhile.
GATED = """#!/bin/sh
echo "waiting for the gate"
while [ ! -e "{gate}" ]; do sleep 0.1; done
echo "gate open"
echo '[{{"success": "success", "message": "gated"}}]' > "$MB_PROC_JSON"
"""

# (folder, bucket, calling AE, patient ID)
SENDS = [("x1", "ProcBucket", "XRAY", "P-X1"), ("x2", "ProcBucket", "XRAY", "P-X2"),
         ("c1", "ProcBucket", "CTSCAN", "P-C1"), ("m1", "Analysis", "MRI", "P-M1"),
         ("f1", "Broken", "PACS01", "P-F1")]  # fmt: skip

BROKEN = """#!/bin/sh
echo "this bucket always fails"
exit 3
"""


@dataclass
class Site:
    box: BoxServer
    folder: Path
    gate: Path
    cookie: dict  # a page login's session cookie

    def job_of(self, **match: str) -> dict:
        jobs = [j for j in api_jobs(self.box) if all(j[k] == v for k, v in match.items())]
        assert jobs, f"no job with {match}"
        return jobs[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("page")
    home = folder / "home"
    gate = folder / "gate"
    copy_bucket(home, "ProcBucket", QUICK, description="Lists the files it was sent")
    copy_bucket(home, "Analysis", QUICK, description="A second bucket", version="2.1")
    copy_bucket(home, "Gated", GATED.format(gate=gate), description="Waits for a gate file")
    copy_bucket(home, "Broken", BROKEN, description="Fails on purpose")
    box = BoxServer(home).start()
    try:
        for name, bucket, calling, patient in SENDS:
            write_study(folder / name, n_images=2, rows=16, cols=16, patient_id=patient)
            res = box.storescu(folder / name, bucket, calling)
            assert res.returncode == 0, res.stderr
        wait_for("the jobs to finish", lambda: _finished(box) == len(SENDS), timeout=90)
        box.add_user("pagetest", Role.admin, "page test password")
        yield Site(box, folder, gate, box.login_cookie("pagetest", "page test password"))
    finally:
        box.stop()


def _finished(box: BoxServer) -> int:
    return sum(j["state"] in ("done", "failed") for j in api_jobs(box))


@pytest.fixture
def page(browser, site: Site) -> Iterator:  # type: ignore[no-untyped-def]
    # logged in as an admin (the login form: test_security.py)
    viewport = {"width": 1280, "height": 800}
    with logged_in_page(browser, site.cookie, WAIT_MS, viewport=viewport,
                        accept_downloads=True) as pg:  # fmt: skip
        yield pg


def shot(pg, name: str) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def row_names(pg) -> list[str]:  # type: ignore[no-untyped-def]
    return pg.locator("#rows tr[data-job]").evaluate_all("rows => rows.map(r => r.dataset.job)")


def wait_rows(pg, expected: set[str]) -> None:  # type: ignore[no-untyped-def]
    """Wait until the list shows exactly ``expected`` (the page redraws as answers come)."""
    pg.wait_for_function(
        "names => { const got = [...document.querySelectorAll('#rows tr[data-job]')]"
        ".map(r => r.dataset.job).sort(); return JSON.stringify(got) === JSON.stringify(names); }",
        arg=sorted(expected),
    )


# -- the list --------------------------------------------------------------------------------


def test_list_shows_received_jobs_newest_first(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.box.url + "/")
    jobs = api_jobs(site.box)
    wait_rows(page, {j["scratchdir"] for j in jobs})
    assert row_names(page) == [j["scratchdir"] for j in jobs]  # newest first, as the API
    first = page.locator(f'tr[data-job="{jobs[0]["scratchdir"]}"]')
    for value in (jobs[0]["bucket"], jobs[0]["caller_aet"], jobs[0]["caller_ip"]):
        assert value in first.inner_text()
    assert jobs[0]["state"].upper() == first.locator(".badge").inner_text().upper()
    assert f"of {len(jobs)} jobs" in page.locator("#count").inner_text()


def test_state_changes_live_without_reload(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.box.url + "/")
    page.wait_for_selector("#rows tr[data-job]")
    page.evaluate("window.__sameDocument = true")
    folder = site.folder / "gated"
    write_study(folder, n_images=2, rows=16, cols=16, patient_id="P-G1")
    assert site.box.storescu(folder, "Gated", "GATER").returncode == 0
    row = page.locator('#rows tr[data-state="running"]')
    row.wait_for()  # appeared and running, by polling alone
    name = row.get_attribute("data-job")
    assert site.job_of(scratchdir=name)["bucket"] == "Gated"
    shot(page, "jobs")  # the README's picture: running, done and failed side by side
    site.gate.touch()
    page.locator(f'#rows tr[data-job="{name}"][data-state="done"]').wait_for()
    assert page.evaluate("window.__sameDocument") is True  # no reload happened


def test_search_narrows_the_list(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.box.url + "/")
    page.wait_for_selector("#rows tr[data-job]")
    xray = {j["scratchdir"] for j in api_jobs(site.box, caller_aet="XRAY")}
    assert len(xray) == 2
    page.fill("#q", "xra")  # a substring, any case
    wait_rows(page, xray)
    uid = site.job_of(caller_aet="MRI")["study_uid"]
    page.fill("#q", uid[-12:])
    wait_rows(page, {site.job_of(caller_aet="MRI")["scratchdir"]})
    page.fill("#q", "no-such-thing")
    page.locator("td.empty").wait_for()
    assert row_names(page) == []


def test_letter_and_state_filters(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.box.url + "/#/jobs")
    page.wait_for_selector("#rows tr[data-job]")
    page.click('.letters button[data-letter="C"]')
    wait_rows(page, {site.job_of(caller_aet="CTSCAN")["scratchdir"]})
    page.click('.letters button[data-letter=""]')
    page.select_option("#state", "done")
    done = {j["scratchdir"] for j in api_jobs(site.box, state="done")}
    wait_rows(page, done)


# -- one job -----------------------------------------------------------------------------------


def test_job_view_log_files_and_zip(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    job = site.job_of(caller_aet="CTSCAN")
    page.goto(site.box.url + "/")
    page.click(f'tr[data-job="{job["scratchdir"]}"] a.mono')
    page.locator("#log").filter(has_text="listed 2 files").wait_for()
    page.locator("#files").filter(has_text="files.txt").wait_for()
    assert "CTSCAN" in page.locator("#info").inner_text()
    page.click('.seg button[data-part="INPUT"]')
    page.locator("#files tr").nth(1).wait_for()
    assert page.locator("#files tr").count() == 2  # the two images sent
    shot(page, "job")
    with page.expect_download() as info:
        page.click("#dl-output")
    data = Path(info.value.path()).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert f"{job['scratchdir']}/OUTPUT/files.txt" in zf.namelist()


def test_job_view_shows_identity_and_series(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    job = site.job_of(caller_aet="MRI")
    page.goto(site.box.url + f"/#/job/{job['scratchdir']}")
    page.locator("#info").filter(has_text="P-M1").wait_for()
    info = page.locator("#info").inner_text()
    assert "Test, Patient" in info and "2024-01-15" in info and "MR" in info
    (series,) = site.box.get(f"/api/v1/jobs/{job['scratchdir']}/series").json()
    row = page.locator(f'#series tr[data-series="{series["series_uid"]}"]')
    row.wait_for()
    assert " ".join(series["classify_type"]) == " ".join(row.locator(".chip").all_inner_texts())


def test_classification_editor_refuses_with_every_problem_and_tests(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.box.url + "/#/admin/classify")
    page.locator("#classify-text").wait_for()
    before = site.box.get("/api/v1/classify/rules").text
    page.fill("#classify-text", '[{"type": "A", "rules": [{"tag": ["x"], "operator": "lt"}]}]')
    page.click("#classify-save")
    msg = page.locator("#classify-msg.bad")
    msg.filter(has_text="[0].rules[0].operator").wait_for()
    assert "[0].rules[0].tag" in msg.inner_text()
    assert site.box.get("/api/v1/classify/rules").text == before
    page.click("#classify-reload")
    page.locator("#classify-text").wait_for()
    job = site.job_of(caller_aet="MRI")
    page.fill("#classify-study", job["study_uid"])
    page.click("#classify-test")
    result = page.locator("#classify-result .classified")
    result.wait_for()
    assert "T1" in result.locator(".chip").all_inner_texts()
    assert result.locator("tr.failed").count() > 0  # e.g. T2's TR rule, with its reason
    shot(page, "classify")


def test_log_tails_live(site: Site, page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = site.job_of(caller_aet="XRAY")
    page.goto(f"{site.box.url}/#/job/{job['scratchdir']}")
    page.locator("#log").filter(has_text="listed 2 files").wait_for()
    log = site.box.home / "scratch" / job["scratchdir"] / "processing.log"
    with log.open("a") as fh:
        fh.write("a line written later\n")
    page.locator("#log").filter(has_text="a line written later").wait_for()
    assert page.locator("#log").inner_text().count("listed 2 files") == 1  # appended, not reloaded


def test_retry_runs_a_finished_job_again(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    job = site.job_of(caller_aet="PACS01")
    assert job["state"] == "failed"
    page.goto(f"{site.box.url}/#/job/{job['scratchdir']}")
    page.locator("#log").filter(has_text="always fails").wait_for()
    page.click("#retry")
    page.locator("#jmsg.good").filter(has_text="Queued again").wait_for()
    # The runner notes the retry in the log, which the page tails without a reload.
    page.locator("#log").filter(has_text="retry requested").wait_for()
    page.wait_for_function(  # it ran again...
        "() => document.getElementById('log').textContent.split('always fails').length === 3"
    )
    wait_for("the second run to end", lambda: site.job_of(scratchdir=job["scratchdir"])["attempts"])
    page.locator("#jstate .s-failed").wait_for()  # ...and failed again, as it must


def test_delete_asks_first(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    name = site.job_of(caller_aet="XRAY")["scratchdir"]
    page.goto(f"{site.box.url}/#/job/{name}")
    page.locator("#info").filter(has_text="XRAY").wait_for()
    messages: list[str] = []

    def dismiss(dialog) -> None:  # type: ignore[no-untyped-def]
        messages.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.click("#delete")
    page.wait_for_function("() => true")  # let the click's handler run
    assert messages and name in messages[0]
    assert site.box.get(f"/api/v1/jobs/{name}").status_code == 200  # said no: still there
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete")
    page.wait_for_url("**/#/jobs")
    assert site.box.get(f"/api/v1/jobs/{name}").status_code == 404
    page.wait_for_selector("#rows tr[data-job]")
    assert name not in row_names(page)


# -- overview, buckets, admin ------------------------------------------------------------------


def test_overview_heat_map_hover_and_click(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.box.url + "/#/overview")
    total = len(api_jobs(site.box))  # every job was received today
    cell = page.locator(f'#heat rect[data-count="{total}"]')
    cell.hover()
    assert page.locator("#tip").inner_text() == f"{total} jobs on {cell.get_attribute('data-day')}"
    page.locator("#queue").filter(has_text="ProcBucket").wait_for()
    page.wait_for_function(  # the scratch folder's size, once summed in the background
        "() => /Scratch folder\\s*\\d/.test(document.getElementById('disk').innerText)"
    )
    page.mouse.move(0, 0)
    shot(page, "overview")
    cell.click()
    page.wait_for_url("**/#/jobs?day=*")
    wait_rows(page, {j["scratchdir"] for j in api_jobs(site.box)})
    assert "received" in page.locator("#dayfilter").inner_text()


def test_overview_lists_refused_associations(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    refused = site.box.storescu(site.folder / "x1", "NoSuchBucket", "INTRUDER")
    assert "Called AE Title Not Recognized" in refused.stdout + refused.stderr
    page.goto(site.box.url + "/#/overview")
    row = page.locator("#refused tr", has_text="INTRUDER")
    row.wait_for()
    text = row.inner_text()
    assert "NoSuchBucket" in text and "127.0.0.1" in text and "no enabled bucket" in text
    assert "newest first" in page.locator("#refused-total").inner_text()


def test_buckets_show_how_to_send(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.box.url + "/#/buckets")
    card = page.locator("article.bucket").filter(has_text="Analysis")
    card.wait_for()
    line = card.locator("code").inner_text()
    assert (
        line == f"storescu +sd +r -nh -aet ME -aec Analysis 127.0.0.1 {site.box.dicom_port} <dir>"
    )
    assert "2.1" in card.inner_text() and "A second bucket" in card.inner_text()
    shot(page, "buckets")


def test_setup_is_shown_read_only(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.box.url + "/#/admin/setup")
    page.locator("#admin").filter(has_text=str(site.box.dicom_port)).wait_for()
    assert "Read-only" in page.locator("#admin").inner_text()
    shot(page, "setup")


def test_routing_editor_shows_the_boxs_own_refusal(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.box.url + "/#/admin/routing")
    page.locator("#routing-text").wait_for()
    before = site.box.get("/api/v1/routing").json()
    for broken in ('{"routing": [', '{"routing": "not a list"}'):
        # What the box says of this text (it refuses it, so nothing is stored).
        answer = site.box.put("/api/v1/routing", content=broken)
        assert answer.status_code == 400, answer.text
        detail = answer.json()["detail"]
        page.fill("#routing-text", broken)
        page.click("#routing-save")
        page.locator("#routing-msg.bad").filter(has_text=detail).wait_for()
        assert page.locator("#routing-msg").inner_text() == detail
    assert site.box.get("/api/v1/routing").json() == before
    shot(page, "routing")


def test_a_change_made_before_the_page_knows_its_session_still_carries_it(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    """A quick Save on a slow box, before /me has answered: the change waits for the
    session's CSRF token instead of going without it (the box would refuse it, 403)."""
    held: list = []
    page.route("**/api/v1/me", lambda route: held.append(route))  # answered below
    page.goto(site.box.url + "/#/admin/routing")
    page.locator("#routing-text").wait_for()
    sent: list = []
    page.on("request", lambda r: sent.append(r) if r.method == "PUT" else None)
    page.fill("#routing-text", '{"routing": "not a list"}')
    page.click("#routing-save")
    page.wait_for_timeout(300)
    assert not sent, "the change went before the page knew its CSRF token"
    assert held, "the page did not ask /me"
    for route in held:
        route.continue_()
    detail = site.box.put("/api/v1/routing", content='{"routing": "not a list"}').json()["detail"]
    page.locator("#routing-msg.bad").filter(has_text=detail).wait_for()  # the box's own check
    assert sent and sent[0].headers.get("x-csrf-token")


def test_routing_log_shows_the_evaluated_jobs(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    # Every finished job is evaluated (no table: "no routing table"), on the router's workers.
    deadline = time.monotonic() + 30
    while not (rows := site.box.get("/api/v1/routing/log").json()):
        assert time.monotonic() < deadline, "no routing log rows for the finished jobs"
        time.sleep(0.2)
    page.goto(site.box.url + "/#/admin/routing-log")
    first = page.locator("#admin table.jobs tbody tr").first
    first.wait_for()
    assert rows[0]["scratchdir"] in page.locator("#admin table.jobs").inner_text()


def test_archive_lists_and_deletes_studies(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.box.url + "/#/admin/archive")
    row = page.locator("#admin tr[data-uid]").filter(has_text="P-M1")
    row.wait_for()
    uid = row.get_attribute("data-uid")
    assert uid == site.job_of(caller_aet="MRI")["study_uid"]
    assert "Test, Patient" in row.inner_text() and "2024-01-15" in row.inner_text()
    shot(page, "archive")
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button[data-del]").click()
    page.locator(f'#admin tr[data-uid="{uid}"]').wait_for(state="detached")
    assert not (site.box.home / "scratch" / "archive" / uid).exists()
    assert not api_jobs(site.box, study_uid=uid)


def test_narrow_screen(site: Site, browser) -> None:  # type: ignore[no-untyped-def]
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                              extra_http_headers=site.box.headers)  # fmt: skip
    pg = ctx.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.goto(site.box.url + "/")
    pg.wait_for_selector("#rows tr[data-job]")
    # Everything fits: no sideways scrolling of the whole page.
    assert pg.evaluate("document.documentElement.scrollWidth") <= 390
    assert pg.locator('.tabs a[data-tab="admin"]').is_visible()
    shot(pg, "jobs-narrow")
    ctx.close()


def test_page_loads_nothing_from_outside(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    asked: list[str] = []
    page.on("request", lambda req: asked.append(req.url))
    page.goto(site.box.url + "/")
    page.wait_for_selector("#rows tr[data-job]")
    outside = [u for u in asked if not u.startswith(site.box.url) and not u.startswith("data:")]
    assert not outside


def test_page_survives_a_restart_of_the_box(box_factory, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    box = box_factory()
    copy_bucket(box.home, "ProcBucket", QUICK)
    write_study(tmp_path / "s", n_images=1, rows=16, cols=16)
    assert box.storescu(tmp_path / "s", "ProcBucket", "XRAY").returncode == 0
    wait_for("the job", lambda: api_jobs(box))
    ctx = browser.new_context(extra_http_headers=box.headers)
    pg = ctx.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.goto(box.url + "/")
    pg.wait_for_selector("#rows tr[data-job]")
    box.stop()
    pg.locator("#status.down").wait_for()  # the poll failed: the page says so
    pg.evaluate("window.__sameDocument = true")
    box.start()
    pg.locator("#status.ok").wait_for()  # and carries on by itself once the box is back
    pg.wait_for_selector("#rows tr[data-job]")
    assert pg.evaluate("window.__sameDocument") is True
    ctx.close()


def test_admin_audit_page(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.box.url + "/#/admin/audit")
    # The fixture's login of this session, newest first among the logins.
    row = page.locator("#audit-rows tbody tr", has_text="user:pagetest").filter(has_text="login")
    row.first.wait_for()
    page.select_option("#audit-action", "delete")
    # The table is drawn again with the filter (waited for: the old rows linger a moment).
    sync_api.expect(page.locator("#audit-rows tbody")).not_to_contain_text("login")
    shot(page, "audit")


def test_page_says_when_the_disk_is_below_its_reserve(box_factory, browser) -> None:  # type: ignore[no-untyped-def]
    """A reserve of 99.9 % of the filesystem: the box is always low, on every view."""
    box = box_factory(extra_args=["--set", "disk_reserve=99.9%"])
    ctx = browser.new_context(extra_http_headers=box.headers)
    pg = ctx.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.goto(box.url + "/#/jobs")
    banner = pg.locator("#disk-low")
    banner.wait_for(state="visible")
    assert "Disk low" in banner.inner_text() and "refuses new sends" in banner.inner_text()
    pg.goto(box.url + "/#/overview")
    pg.locator("#disk", has_text="low: refusing data").wait_for()
    ctx.close()
