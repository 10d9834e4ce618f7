"""Seeing results and problems on the page, in Debian's Chromium, on one box fed by dcmtk:
broken buckets, a job's verdict, images, files and sends, the grouped routing log, C-ECHO,
the Overview's figures, the disk as df sees it, the narrow Setup, the offline banner and a
line per job in the server's log. Screenshots of every page at 1400x900 and 390x844 go to
``test-artifacts/screenshots/`` (``console-*``).

One box and one browser for the module; the routing table sends the example bucket's
results to a bucket of the same box (done sends) and a crashed bucket's to a port where
nothing listens (a failed send, tried once: ``routing_retries = 0``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from magickbox.auth.roles import Role
from magickbox.routing.rules import NO_PROC_JSON
from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer, copy_bucket, free_port
from tests.e2e.browser import logged_in_page
from tests.e2e.peers import QUICK, api_job, api_jobs, wait_for
from tests.e2e.test_page import SHOTS, WAIT_MS

pytestmark = pytest.mark.e2e

sync_api = pytest.importorskip("playwright.sync_api")

CRASH = "#!/bin/sh\necho 'about to crash'\nexit 7\n"  # no proc.json: couldNotReadProcJSON
WIDE, NARROW = {"width": 1400, "height": 900}, {"width": 390, "height": 844}
# Each page by its address, and what shows it has drawn its answers.
PAGES = {"jobs": ("#/jobs", "#rows tr[data-job]"),
         "overview": ("#/overview", "#bucket-stats"),
         "buckets": ("#/buckets", "article.bucket"),
         "setup": ("#/admin/setup", "#admin dd"),
         "routing": ("#/admin/routing", "#dests tr[data-dest]"),
         "routing-log": ("#/admin/routing-log", "#admin table.sends"),
         "archive": ("#/admin/archive", "#admin tr[data-uid]"),
         "classify": ("#/admin/classify", "#classify-text"),
         "audit": ("#/admin/audit", "#audit-rows tbody tr")}  # fmt: skip
IMAGES_DRAWN = ("() => [...document.querySelectorAll('#images img')]"
                ".every(i => i.complete && i.naturalWidth > 0)")  # fmt: skip


@dataclass
class Site:
    box: BoxServer
    folder: Path
    dead_port: int
    cookie: dict[str, str]  # an admin's page login

    def job_of(self, **match: str) -> dict:
        jobs = [j for j in api_jobs(self.box) if all(j[k] == v for k, v in match.items())]
        assert jobs, f"no job with {match}"
        return jobs[0]

    def sends(self) -> list[dict]:
        return self.box.get("/api/v1/sends").json()


def _routing(dead_port: int) -> dict:
    me = {"IP": "$me", "PORT": "$port", "AETitleSender": "MAGICKBOX", "AETitleTo": "Sink"}
    dead = {"IP": "127.0.0.1", "PORT": dead_port, "AETitleSender": "MAGICKBOX",
            "AETitleTo": "NOBODY"}  # fmt: skip
    return {"routing": [
        {"name": "results", "AETitleIn": "^ProcBucket$", "send": [{"success": me}]},
        # "fail" alone never matches a crash (no proc.json); the second key names it. The study
        # goes (there is no OUTPUT) to a port where nothing listens.
        {"name": "crashes", "AETitleIn": "^Crash$", "RouteDirectory": "INPUT",
         "send": [{"fail": dict(dead, AETitleTo="FAILONLY")},
                  {f"fail|{NO_PROC_JSON}": dead}]},
    ]}  # fmt: skip


def _broken_buckets(home: Path) -> None:
    copy_bucket(home, "Sink", QUICK, description="Receives the routed results")
    copy_bucket(home, "Crash", CRASH, description="Crashes without a proc.json")
    no_exec = copy_bucket(home, "NoExec", QUICK, description="work.sh lost its exec bit")
    (no_exec / "work.sh").chmod(0o644)
    copy_bucket(home, "NoBang", "echo 'no #! line'\n", description="work.sh has no #!")
    copy_bucket(home, "Off", QUICK, description="Switched off", enabled=0)
    bad = home / "streams" / "bucketBadInfo"
    bad.mkdir(parents=True)
    (bad / "info.json").write_text('{"AETitle": "BadInfo", "enabled": 1,')  # cut short


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("console")
    home = folder / "home"
    _broken_buckets(home)  # ProcBucket is the home's example bucket, as shipped
    dead_port = free_port()
    (home / "routing.json").write_text(json.dumps(_routing(dead_port)))
    env = {"MAGICKBOX_ROUTING_RETRIES": "0", "MAGICKBOX_ANNOUNCE": "0"}
    box = BoxServer(home, quiet=0.3, env=env).start()
    try:
        for name, bucket in (("proc", "ProcBucket"), ("crash", "Crash")):
            write_study(folder / name, n_images=2, rows=32, cols=32, patient_id=f"P-{name}")
            res = box.storescu(folder / name, bucket, "SCANNER")
            assert res.returncode == 0, res.stderr
        # The example's results come back to the box as a job of Sink; every send ends.
        wait_for("the routed job", lambda: _settled(box), timeout=90)
        box.add_user("console", Role.admin, "console test password")
        yield Site(box, folder, dead_port, box.login_cookie("console", "console test password"))
    finally:
        box.stop()


def _settled(box: BoxServer) -> bool:
    jobs = api_jobs(box)
    sends = box.get("/api/v1/sends").json()
    return (
        len(jobs) == 3
        and all(j["state"] in ("done", "failed") for j in jobs)
        and len(sends) == 2
        and all(s["state"] in ("done", "failed") for s in sends)
    )


@pytest.fixture
def page(browser, site: Site) -> Iterator:  # type: ignore[no-untyped-def]
    yield from _page(browser, WIDE, site)


def _page(browser, viewport: dict, site: Site, **kw: object) -> Iterator:  # type: ignore[no-untyped-def]
    # Logged in as an admin, by the session cookie a login gives (the login form itself is
    # test_security.py's).
    with logged_in_page(browser, site.cookie, WAIT_MS, viewport=viewport,
                        accept_downloads=True, **kw) as pg:  # fmt: skip
        yield pg


def shot(pg, name: str) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"console-{name}.png"), full_page=True)


# -- buckets ----------------------------------------------------------------------------------


def test_buckets_show_their_problems(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    api = {b["aetitle"]: b for b in site.box.get("/api/v1/buckets?all=true").json()}
    assert api["ProcBucket"]["ready"] and not api["ProcBucket"]["problems"]
    assert "not executable" in " ".join(api["NoExec"]["problems"])
    assert "no #! line" in " ".join(api["NoBang"]["problems"])
    assert "unreadable info.json" in " ".join(api["BadInfo"]["problems"])
    assert api["Off"]["problems"] == ["disabled: sends to its AE title are refused"]
    page.goto(site.box.url + "/#/buckets")
    page.locator('article[data-bucket="BadInfo"]').wait_for()  # listed, not hidden
    for name in ("NoExec", "NoBang", "BadInfo"):
        card = page.locator(f'article[data-bucket="{name}"]')
        assert card.locator(".badge").inner_text().upper() == "BROKEN"
        for problem in api[name]["problems"]:
            assert problem in card.locator(".problems").inner_text()
    assert page.locator('article[data-bucket="Off"] .badge').inner_text().upper() == "DISABLED"
    green = page.locator("article.bucket:has(.badge.s-done)").evaluate_all(
        "cards => cards.map(c => c.dataset.bucket)"
    )
    assert set(green) == {b for b, row in api.items() if row["ready"]}  # never a broken one
    broken = [
        b for b, row in api.items() if any(not p.startswith("disabled") for p in row["problems"])
    ]
    assert sorted(broken) == ["BadInfo", "NoBang", "NoExec"]
    assert f"{len(broken)} buckets need fixing" in page.locator("#buckets-broken").inner_text()


def test_mean_time_of_a_bucket_with_only_failed_jobs(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.box.url + "/#/buckets")
    mean = page.locator('article[data-bucket="Crash"] [data-stat="mean"]').inner_text()
    assert mean.startswith("no job done yet; 1 failed (mean ")
    done = page.locator('article[data-bucket="ProcBucket"] [data-stat="mean"]').inner_text()
    assert re.fullmatch(r"[\d.]+ s", done), done


def test_buckets_remove_takes_a_broken_bucket(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    home = site.box.home
    cli = [sys.executable, "-m", "magickbox.cli", "buckets"]
    listed = subprocess.run([*cli, "list", "--home", str(home)], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"NoExec .*! work.sh is not executable", listed.stdout), listed.stdout
    gone = subprocess.run([*cli, "remove", "BadInfo", "--home", str(home)],
                          capture_output=True, text=True)  # fmt: skip
    assert gone.returncode == 0, gone.stderr
    assert not (home / "streams" / "bucketBadInfo").exists()
    page.goto(site.box.url + "/#/buckets")
    page.locator('article[data-bucket="NoExec"]').wait_for()
    assert page.locator('article[data-bucket="BadInfo"]').count() == 0


# -- one job ----------------------------------------------------------------------------------


def test_failed_job_banner_and_send_retry(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    job = site.job_of(bucket="Crash")
    assert job["state"] == "failed" and job["reason"] == "work.sh exited with code 7"
    page.goto(f"{site.box.url}/#/job/{job['scratchdir']}")
    assert page.locator("#jbanner.bad #jreason").inner_text() == job["reason"]
    (send,) = [s for s in site.sends() if s["scratchdir"] == job["scratchdir"]]
    assert send["state"] == "failed" and send["destination"]["AETitleTo"] == "NOBODY"
    row = page.locator(f'#sends tr[data-send="{send["id"]}"]')
    assert f"NOBODY@127.0.0.1:{site.dead_port}" in row.inner_text()
    assert row.locator(".badge").inner_text().upper() == "FAILED"
    steps = _send_steps(site, send["id"])
    row.locator("button[data-retry-send]").click()
    page.locator("#jmsg.good").filter(has_text="tried again").wait_for()
    # Tried again for real: the box notes the retry and a new failure of the dead port.
    wait_for("the retried send", lambda: _send_steps(site, send["id"]) >= steps + 2)
    page.locator(f'#sends tr[data-send="{send["id"]}"][data-state="failed"]').wait_for()
    shot(page, "job-failed")


def _send_steps(site: Site, send_id: int) -> int:
    rows = site.box.get("/api/v1/routing/log", params={"limit": 1000}).json()
    return sum(r["send"] == send_id for r in rows)


def test_job_page_shows_verdict_images_files_and_sends(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    job = site.job_of(bucket="ProcBucket")
    verdict = api_job(site.box, job["scratchdir"])["verdict"]
    assert verdict["success"] == "success" and verdict["message"]
    page.goto(f"{site.box.url}/#/job/{job['scratchdir']}")
    assert verdict["message"] in page.locator("#jverdict").inner_text()
    images = page.locator("#images img")
    images.nth(1).wait_for()
    kinds = images.evaluate_all("imgs => imgs.map(i => i.dataset.kind)")
    assert "image" in kinds and "dicom" in kinds  # preview.png and the derived series
    page.wait_for_function(IMAGES_DRAWN)  # every one drawn: PNG as is, DICOM by the box
    (send,) = [s for s in site.sends() if s["scratchdir"] == job["scratchdir"]]
    row = page.locator(f'#sends tr[data-send="{send["id"]}"]')
    assert row.locator(".badge").inner_text().upper() == "DONE"
    assert f"{send['accepted']} of {send['files']}" in row.inner_text() and send["files"] > 0
    link = page.locator('#files tr[data-file="preview.png"] a')
    with page.expect_download() as info:
        link.click()
    got = Path(info.value.path()).read_bytes()
    output = site.box.home / "scratch" / job["scratchdir"] / "OUTPUT"
    assert got == (output / "preview.png").read_bytes()
    assert info.value.suggested_filename == "preview.png"
    shot(page, "job")


def test_retry_of_a_done_job_asks_first(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    job = site.job_of(bucket="Sink")
    page.goto(f"{site.box.url}/#/job/{job['scratchdir']}")
    page.locator("#jstate .s-done").wait_for()
    asked: list[str] = []

    def dismiss(dialog) -> None:  # type: ignore[no-untyped-def]
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.click("#retry")
    page.wait_for_function("() => true")
    assert asked and "sent) again" in asked[0]
    after = api_job(site.box, job["scratchdir"])
    assert (after["state"], after["finished_at"]) == ("done", job["finished_at"])  # said no
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#retry")
    page.locator("#jmsg.good").filter(has_text="Queued again").wait_for()
    page.locator("#log").filter(has_text="retry requested").wait_for()
    wait_for("the second run", lambda: api_job(site.box, job["scratchdir"])["finished_at"]
             not in (None, job["finished_at"]))  # fmt: skip


# -- routing ----------------------------------------------------------------------------------


def test_routing_log_is_grouped_per_send(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    sends = site.sends()
    page.goto(site.box.url + "/#/admin/routing-log")
    page.locator("#admin table.sends").wait_for()
    rows = page.locator("#admin table.sends tbody tr")
    assert rows.count() == len(sends)  # one row per send, not one per step
    for s in sends:
        row = page.locator(f'#admin tr[data-send="{s["id"]}"]')
        assert row.get_attribute("data-state") == s["state"]  # the latest state
        assert f"{s['accepted']} of {s['files']}" in row.inner_text()
    notes = page.locator("#routing-notes").inner_text()
    assert "evaluated" in notes and NO_PROC_JSON in notes  # the crash's note, said here too
    assert "queued" not in notes  # the steps of sends are folded into their rows


def test_crash_note_explains_the_fail_key(site: Site) -> None:
    crash = site.job_of(bucket="Crash")
    log = site.box.get("/api/v1/routing/log", params={"limit": 1000}).json()
    (evaluated,) = [
        r for r in log if r["scratchdir"] == crash["scratchdir"] and r["outcome"] == "evaluated"
    ]
    assert "a key 'fail' does not match it" in evaluated["message"]
    keys = {s["key"] for s in site.sends() if s["scratchdir"] == crash["scratchdir"]}
    assert keys == {f"fail|{NO_PROC_JSON}"}  # the plain "fail" key sent nothing


def test_echo_button_per_destination(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.box.url + "/#/admin/routing")
    page.locator("#dests tr[data-dest]").nth(2).wait_for()  # Sink, FAILONLY and NOBODY
    answers = {}
    for i in range(page.locator("#dests tr[data-dest]").count()):
        row = page.locator(f'#dests tr[data-dest="{i}"]')
        row.locator("button[data-echo]").click()
        out = row.locator(".echo-answer.good, .echo-answer.bad")
        out.wait_for()
        answers[row.locator("td").first.inner_text().split()[0]] = out.get_attribute("class")
    me = "Sink@$me:$port"
    assert answers[me].endswith("good")  # the box itself answers for its bucket
    assert answers[f"NOBODY@127.0.0.1:{site.dead_port}"].endswith("bad")


# -- overview, setup --------------------------------------------------------------------------


def test_overview_bucket_figures_and_failing_sends(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    stats = site.box.get("/api/v1/stats/buckets").json()
    assert stats["Crash"]["success_rate"] == 0 and stats["ProcBucket"]["success_rate"] == 1
    page.goto(site.box.url + "/#/overview")
    crash = page.locator('#bucket-stats tr[data-bucket="Crash"]')
    crash.wait_for()
    assert crash.locator('[data-stat="success"]').inner_text() == "0 %"
    assert page.locator('#bucket-stats tr[data-bucket="ProcBucket"] [data-stat="success"]'
                        ).inner_text() == "100 %"  # fmt: skip
    assert crash.locator('[data-stat="run"]').inner_text().endswith("(failed)")
    for bucket, figures in stats.items():
        rate = page.locator(f'#bucket-stats tr[data-bucket="{bucket}"] [data-stat="rate"]')
        assert rate.inner_text().split()[0] == str(figures["finished_recently"])
        assert figures["finished_recently"] == figures["done"] + figures["failed"]  # all today
        assert figures["mean_wait_seconds"] is not None
    failing = [s for s in site.sends() if s["state"] == "failed"]
    for s in failing:
        page.locator(f'#failing li[data-send="{s["id"]}"]').wait_for()
    assert "NOBODY" in page.locator("#failing").inner_text()


def test_disk_figures_agree_with_df(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    scratch = site.box.home / "scratch"
    df = subprocess.run(["df", "-B1", "--output=size,used,avail,pcent", str(scratch)],
                        capture_output=True, text=True, check=True)  # fmt: skip
    size, used, avail, pcent = df.stdout.split("\n")[1].split()
    disk = site.box.get("/api/v1/disk").json()
    assert disk["total"] == int(size)
    # The disk is shared with other work: figures may move a little between two looks.
    assert abs(disk["used"] - int(used)) < 0.01 * int(size)
    assert abs(disk["free"] - int(avail)) < 0.01 * int(size)
    assert abs(disk["use_percent"] - int(pcent.rstrip("%"))) <= 1
    page.goto(site.box.url + "/#/overview")
    shown = page.locator('#disk [data-disk="use_percent"]')
    shown.wait_for()
    assert abs(int(shown.inner_text().split()[0]) - int(pcent.rstrip("%"))) <= 1
    assert "as df" in page.locator("#disk").inner_text()


def test_setup_fits_a_phone(site: Site, browser) -> None:  # type: ignore[no-untyped-def]
    for pg in _page(browser, NARROW, site, is_mobile=True):
        pg.goto(site.box.url + "/#/admin/setup")
        pg.locator("#admin dd").first.wait_for()
        assert pg.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
        widths = pg.locator("#admin dd").evaluate_all(
            "dds => dds.map(d => d.getBoundingClientRect().width)"
        )
        assert min(widths) > 200  # each value gets the card's width, not one character


# -- every page, wide and narrow ----------------------------------------------------------------


def test_screenshots_of_every_page(site: Site, browser) -> None:  # type: ignore[no-untyped-def]
    job = site.job_of(bucket="ProcBucket")["scratchdir"]
    pages = {**PAGES, "job": (f"#/job/{job}", "#images img")}
    for size, viewport in (("wide", WIDE), ("narrow", NARROW)):
        for pg in _page(browser, viewport, site):
            for name, (hash_, drawn) in pages.items():
                pg.goto(f"{site.box.url}/{hash_}")
                pg.locator(drawn).first.wait_for()
                if name == "job":
                    pg.wait_for_function(IMAGES_DRAWN)
                wide = pg.evaluate("document.documentElement.scrollWidth")
                assert wide <= viewport["width"], f"{name} scrolls sideways at {size}"
                shot(pg, f"{name}-{size}")
        # The login form, to someone not logged in (a context without the session cookie).
        ctx = browser.new_context(viewport=viewport)
        try:
            pg = ctx.new_page()
            pg.goto(site.box.url + "/")
            pg.wait_for_url("**/login**")
            pg.locator("#name").wait_for()
            assert pg.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
            shot(pg, f"login-{size}")
        finally:
            ctx.close()


# -- the server's log, and the box going away (last: it stops the box) -------------------------


def test_server_log_says_when_each_job_ends(site: Site) -> None:
    text = site.box.log_path.read_text()
    for job in api_jobs(site.box):
        if job["state"] == "done":
            pattern = rf"job {job['scratchdir']} \({job['bucket']}\) done in [\d.]+ s"
        else:
            pattern = rf"job {job['scratchdir']} \({job['bucket']}\) failed in [\d.]+ s: "
            pattern += re.escape(job["reason"])
        assert re.search(pattern, text), f"no end line for {job['scratchdir']}"


def test_banner_when_the_box_is_not_reachable(site: Site, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.box.url + "/#/jobs")
    page.wait_for_selector("#rows tr[data-job]")
    assert page.locator("#offline").is_hidden()
    site.box.stop()
    banner = page.locator("#offline")
    banner.wait_for(state="visible")
    box = banner.bounding_box()
    assert box and box["width"] >= WIDE["width"] - 20  # across the page, not a dot
    shot(page, "offline")
    site.box.start()
    banner.wait_for(state="hidden")  # and gone by itself once the box answers again
