"""The job view links the other parts of its study, in real headless Chromium against a
real ``magickbox serve``: a bucket with ``grouping: "series"`` gets a two-series study
from dcmtk's storescu and makes two jobs, each linking the other."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from magickbox.auth.roles import Role
from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer, copy_bucket
from tests.e2e.browser import logged_in_page
from tests.e2e.peers import QUICK, api_jobs, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.long]
pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BoxServer, list[str]]]:
    folder = tmp_path_factory.mktemp("parts")
    home = folder / "home"
    copy_bucket(home, "PerSeries", QUICK, grouping="series", quiet_seconds=0.5)
    box = BoxServer(home).start()
    try:
        write_study(folder / "study", n_images=4, series=2, rows=16, cols=16)
        res = box.storescu(folder / "study", "PerSeries", "PARTS")
        assert res.returncode == 0, res.stderr
        jobs = wait_for("two finished jobs", lambda: _two_finished(box), timeout=90)
        box.add_user("partsview", Role.viewer, "parts page password")
        yield box, [j["scratchdir"] for j in jobs]
    finally:
        box.stop()


def _two_finished(box: BoxServer) -> list[dict] | None:
    jobs = api_jobs(box)
    return jobs if len(jobs) == 2 and all(j["state"] == "done" for j in jobs) else None


def test_the_job_view_links_the_other_part_and_the_link_opens_it(
    browser, served: tuple[BoxServer, list[str]]  # type: ignore[no-untyped-def]
) -> None:
    box, (first, second) = served
    cookie = box.login_cookie("partsview", "parts page password")
    with logged_in_page(browser, cookie, viewport={"width": 1280, "height": 800}) as pg:
        pg.goto(f"{box.url}/#/job/{first}")
        link = pg.locator("#jparts a")
        link.wait_for()
        assert link.count() == 1 and link.inner_text() == second
        link.click()
        pg.wait_for_function(
            "name => document.querySelector('.crumbs .mono')?.textContent === name", arg=second
        )
        pg.locator("#jparts a").wait_for()
        assert pg.locator("#jparts a").inner_text() == first

