"""The HTTP API over the real app in this process: the bucket listings and the API's docs.

The tests over jobs made by real DICOM sends stay in tests/e2e/test_api.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import InProcessBox, in_process_box
from tests.e2e.peers import install_buckets
from tests.e2e.test_api import BUCKETS


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessBox]:
    home = tmp_path_factory.mktemp("api") / "home"
    install_buckets(home, **BUCKETS)
    with in_process_box(home) as app:
        yield app


def test_buckets_and_installed_buckets(app: InProcessBox) -> None:
    enabled = {"Alpha", "Beta", "Fail", "Sleepy", "ProcBucket"}
    installed = app.get("/code/php/getInstalledBuckets.php").json()
    assert {b["AETitle"] for b in installed} == enabled
    for info in installed:
        assert {"name", "description", "version", "AETitle", "license", "enabled"} <= set(info)
    listed = app.get("/api/v1/buckets").json()
    assert {b["aetitle"] for b in listed} == enabled
    assert all(b["enabled"] for b in listed)
    everything = {b["aetitle"]: b for b in app.get("/api/v1/buckets?all=true").json()}
    assert set(everything) == enabled | {"Hidden"}
    assert not everything["Hidden"]["enabled"]
    assert everything["Sleepy"]["info"]["timeout"] == 2


def test_docs_and_openapi(app: InProcessBox) -> None:
    docs = app.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = app.get("/openapi.json").json()["paths"]
    job = "/api/v1/jobs/{scratchdir}"
    for path in ("/api/v1/jobs", job, f"{job}/log", f"{job}/retry", f"{job}/output.zip",
                 "/api/v1/buckets", "/api/v1/queue"):  # fmt: skip
        assert path in paths, path
    assert {"get", "post"} <= set(paths["/api/v1/jobs"])
