"""Numbers out of range get 422 with the place named, never a 500 (found by trying)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from magickbox.box import Box
from magickbox.config import load_settings
from magickbox.testing.server import free_port
from tests.conftest import admin_client

TOO_BIG = "99999999999999999999"  # past SQLite's 64-bit integers


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    home = Path(tmp_path_factory.mktemp("oor")) / "home"
    box = Box(load_settings(home, announce=False, dicom_port=free_port()))
    with admin_client(box, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "url", "where"),
    [
        ("GET", f"/api/v1/jobs?offset={TOO_BIG}", "offset"),
        ("GET", f"/api/v1/archive?offset={TOO_BIG}", "offset"),
        ("GET", f"/api/v1/routing/log?offset={TOO_BIG}", "offset"),
        ("GET", f"/code/php/getRoutingLog.php?offset={TOO_BIG}", "offset"),
        ("GET", f"/api/v1/sends/{TOO_BIG}", "send_id"),
        ("POST", f"/api/v1/sends/{TOO_BIG}/retry", "send_id"),
        ("GET", "/api/v1/sends/0", "send_id"),
    ],
)
def test_out_of_range_numbers_are_refused(
    client: TestClient, method: str, url: str, where: str
) -> None:
    answer = client.request(method, url)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"][-1] == where


def test_a_big_offset_in_range_is_an_empty_page(client: TestClient) -> None:
    answer = client.get(f"/api/v1/jobs?offset={2**62}")
    assert answer.status_code == 200
    assert answer.json()["jobs"] == []


def test_a_long_search_is_answered(client: TestClient) -> None:
    answer = client.get("/api/v1/jobs", params={"q": "x" * 20_000})
    assert answer.status_code == 200 and answer.json()["total"] == 0


@pytest.mark.parametrize(
    ("key", "title"),
    [("AETitleSender", "é"), ("AETitleSender", "A\\B"), ("AETitleTo", "X" * 17),
     ("AETitleTo", "  "), ("AETitleTo", "TAB\tBED")],
)  # fmt: skip
def test_bad_ae_titles_in_an_echo_are_400_with_the_key_named(
    client: TestClient, key: str, title: str
) -> None:
    dest = {"IP": "127.0.0.1", "PORT": free_port(), "AETitleSender": "MB", "AETitleTo": "PACS",
            "any_destination": True, key: title}  # fmt: skip
    answer = client.post("/api/v1/destinations/echo", json=dest)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"].startswith(f"{key}: ")


def test_a_routing_table_with_a_bad_ae_title_is_refused_on_save(client: TestClient) -> None:
    dest = {"IP": "127.0.0.1", "PORT": 104, "AETitleSender": "ÄRZTE", "AETitleTo": "PACS"}
    table = {"routing": [{"name": "r", "send": [{".*": dest}]}]}
    answer = client.put("/api/v1/routing", json=table)
    assert answer.status_code == 400, answer.text
    assert "AETitleSender: 'ÄRZTE' is no AE title" in answer.text
