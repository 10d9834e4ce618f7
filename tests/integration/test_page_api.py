"""The /api/v1 endpoints the web page uses that need no jobs, over the real app in this
process: setup, files of jobs that do not exist, and the page's own files.

The tests over jobs made by real DICOM sends stay in tests/e2e/test_page_api.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import InProcessBox, in_process_box
from tests.e2e.peers import QUICK, install_buckets


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessBox]:
    home = tmp_path_factory.mktemp("pageapi") / "home"
    install_buckets(home, ProcBucket=QUICK)
    with in_process_box(home) as app:
        yield app


def test_files_of_unknown_or_malformed_jobs(app: InProcessBox) -> None:
    assert app.get("/api/v1/jobs/tmp.nosuchjob/files").status_code == 404
    assert app.get("/api/v1/jobs/..%2F..%2Fetc/files").status_code in (400, 404)


def test_setup(app: InProcessBox) -> None:
    setup = app.get("/api/v1/setup").json()
    assert setup["dicom_port"] == app.dicom_port
    assert setup["web_port"] == app.web_port
    assert setup["editable"] is False and setup["aet"]


def test_the_page_and_its_files_are_served(app: InProcessBox) -> None:
    index = app.get("/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert '<script src="/page/app.js"' in index.text
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        res = app.get(f"/page/{asset}")
        assert res.status_code == 200 and kind in res.headers["content-type"]
    assert app.get("/page/../api.py").status_code == 404
    assert app.get("/docs").status_code == 200  # the API's own page stays
