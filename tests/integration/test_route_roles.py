"""Every route declares a minimum role, and the app enforces it: the role matrix over every
route (viewer, operator, admin, no credentials, revoked and expired tokens), trusted
networks, Host checks, cross-site refusals, and page logins with their CSRF token."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount

from magickbox.auth.roles import Role
from magickbox.auth.store import AuthStore
from magickbox.web.app import PUBLIC_MOUNTS
from magickbox.web.security import Requirement, endpoints, requirement_of
from tests.conftest import InProcessBox, in_process_box

SAMPLE = {"scratchdir": "tmp.nothere0", "send_id": "1", "study_uid": "1.2.3.4",
          "name": "nobody", "token": "nothing"}  # fmt: skip


def calls(app) -> list[tuple[str, str, Requirement]]:  # type: ignore[no-untyped-def]
    """(method, a path of it, its requirement) for every API route of ``app``."""
    found = []
    for ep in endpoints(app):
        if isinstance(ep.route, APIRoute):
            path = re.sub(r"\{(\w+)\}", lambda m: SAMPLE[m.group(1)], ep.path)
            found += [(m, path, requirement_of(ep.route)[0]) for m in sorted(ep.methods)]
    return found


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessBox]:
    """A box that trusts no network: only credentials count."""
    home = tmp_path_factory.mktemp("roles") / "home"
    with in_process_box(home, trusted_networks=[], login_max_failures=3) as ibox:
        yield ibox


@pytest.fixture(scope="module")
def tokens(untrusted: InProcessBox) -> dict[str, str]:
    return matrix_tokens(untrusted.box.auth.store)


def matrix_tokens(store: AuthStore) -> dict[str, str]:
    """A token of each role (named after it), a revoked and an expired admin token."""
    made = {role.name: store.create_token(role.name, role)[0] for role in Role if role}
    made["revoked"] = store.create_token("gone", Role.admin)[0]
    store.revoke_token("gone")
    made["expired"] = store.create_token("old", Role.admin, expires_at=time.time() - 1)[0]
    return made


def call(client: TestClient, method: str, path: str, token: str | None, **kw: object):  # type: ignore[no-untyped-def]
    """One request with ``token`` (None: no Authorization header at all)."""
    saved = client.headers.pop("Authorization", None)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))  # type: ignore[call-overload]
        return client.request(method, path, headers=headers, **kw)  # type: ignore[arg-type]
    finally:
        if saved is not None:
            client.headers["Authorization"] = saved


def test_every_route_declares_exactly_one_minimum_role(untrusted: InProcessBox) -> None:
    found = endpoints(untrusted.client.app)  # type: ignore[arg-type]
    api = [ep for ep in found if isinstance(ep.route, APIRoute)]
    assert len(api) > 40  # the walk does reach the included routers' routes
    assert [ep.path for ep in api if len(requirement_of(ep.route)) != 1] == []
    assert {ep.path for ep in found if isinstance(ep.route, Mount)} == PUBLIC_MOUNTS
    assert [ep.path for ep in found if not isinstance(ep.route, APIRoute | Mount)] == []


def test_the_walk_does_see_a_route_without_a_role(untrusted: InProcessBox) -> None:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/undeclared")
    def undeclared() -> None: ...

    route = next(r for r in app.routes if isinstance(r, APIRoute))
    assert requirement_of(route) == []


def role_matrix(
    routes: list[tuple[str, str, Requirement]],
    status_of: Callable[[str, str, str | None], int],
    tokens: dict[str, str],
) -> list[str]:
    """Every route as nobody, each role, a revoked and an expired token: what answered
    otherwise than the route's requirement says (``status_of(method, path, token)``)."""
    wrong = []
    for method, path, needed in routes:
        cases: list[tuple[str, str | None, bool]] = [("none", None, False)]
        cases += [(r.name, tokens[r.name], r >= needed.role) for r in Role if r]
        cases += [("revoked", tokens["revoked"], False), ("expired", tokens["expired"], False)]
        for who, token, allowed in cases:
            status = status_of(method, path, token)
            if needed.role is Role.public or allowed:
                ok = status not in (401, 403)
            else:
                ok = status == (403 if who in ("viewer", "operator") else 401)
            if not ok:
                wrong.append(f"{method} {path} as {who} (needs {needed.role.name}): {status}")
    return wrong


def test_the_role_matrix_over_every_route(untrusted: InProcessBox, tokens: dict[str, str]) -> None:
    client = untrusted.client
    routes = calls(client.app)
    assert role_matrix(routes, lambda m, p, t: call(client, m, p, t).status_code, tokens) == []


def test_a_role_too_low_is_told_which_it_needs(untrusted: InProcessBox, tokens: dict) -> None:
    res = call(untrusted.client, "PUT", "/api/v1/routing", tokens["operator"], content=b"{}")
    assert res.status_code == 403 and "admin" in res.json()["detail"]
    res = call(untrusted.client, "GET", "/api/v1/jobs", None)
    assert res.status_code == 401 and res.headers["www-authenticate"].startswith("Bearer")
    res = call(untrusted.client, "GET", "/api/v1/jobs", None, headers={"Authorization": "Basic x"})
    assert res.status_code == 401


def test_trusted_networks_reach_only_the_original_endpoints(tmp_path: Path) -> None:
    with in_process_box(tmp_path / "home") as ibox:  # 127.0.0.0/8=operator, the default
        client = ibox.client
        for method, path, needed in calls(client.app):
            status = call(client, method, path, None).status_code
            reachable = needed.role is Role.public or (
                needed.legacy and needed.role <= Role.operator
            )
            assert (status not in (401, 403)) == reachable, (method, path, status)
        # The seed's delete loop's GET works from there ...
        res = call(client, "GET", "/code/php/deleteStudy.php?scratchdir=tmp.nothere0", None)
        assert res.status_code == 404
        # ... but never when a browser says a page of another site asked for it.
        for header in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                       {"Referer": "http://evil.example/x"}):  # fmt: skip
            res = call(
                client, "GET", "/code/php/deleteStudy.php?scratchdir=x", None, headers=header
            )
            assert res.status_code == 403, header
        # The page needs a login, from anywhere: a browser is sent to the form.
        res = call(
            client, "GET", "/", None, headers={"Accept": "text/html"}, follow_redirects=False
        )
        assert res.status_code == 303 and res.headers["location"] == "/login"


def test_foreign_hosts_and_cross_site_changes_are_refused(untrusted: InProcessBox) -> None:
    client = untrusted.client
    assert client.get("/api/v1/jobs", headers={"Host": "rebound.evil.example"}).status_code == 400
    assert client.get("/api/v1/jobs", headers={"Host": "localhost:2813"}).status_code == 200
    text = '{"routing": []}'
    for header in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                   {"Origin": "null"}):  # fmt: skip
        res = client.post("/code/php/saveRouting.php", data={"text": text}, headers=header)
        assert res.status_code == 403, header
        assert client.delete("/api/v1/jobs/tmp.nothere0", headers=header).status_code == 403
    same = {"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"}
    res = client.post("/code/php/saveRouting.php", data={"text": text}, headers=same)
    assert res.status_code == 200


def test_gets_that_change_something_need_an_operator_and_never_a_browser(
    untrusted: InProcessBox, tokens: dict
) -> None:
    """timing.php?time= and db.php?parse= change state by GET: reading stays a viewer's,
    the change needs an operator and is refused cross-site and to a page login."""
    client = untrusted.client
    add = "/code/php/timing.php?aetitle=Gauge&time=30"
    figures = "/code/php/timing.php?aetitle=Gauge"
    assert call(client, "GET", add, tokens["viewer"]).status_code == 403
    assert call(client, "GET", figures, tokens["viewer"]).json() == []  # nothing was added
    for header in ({"Sec-Fetch-Site": "cross-site"}, {"Referer": "http://evil.example/x"}):
        assert call(client, "GET", add, tokens["operator"], headers=header).status_code == 403
    assert call(client, "GET", figures, tokens["viewer"]).json() == []
    assert call(client, "GET", add, tokens["operator"]).status_code == 200
    assert call(client, "GET", figures, tokens["viewer"]).json()["avg"] == 30
    assert call(client, "GET", "/code/php/db.php?parse=tmp.nothere0",
                tokens["viewer"]).status_code == 403  # fmt: skip
    assert call(client, "GET", "/code/php/db.php?parse=tmp.nothere0",
                tokens["operator"]).status_code == 404  # let through: no such job  # fmt: skip
    # A page login (an <img> on any page would carry its cookie) reads but never adds.
    untrusted.box.auth.store.add_user("gauge", Role.admin, "gauge's password")
    page = httpx.Client(transport=client._transport, base_url="http://127.0.0.1")  # type: ignore[attr-defined]
    res = page.post("/api/v1/login", data={"name": "gauge", "password": "gauge's password"})
    assert res.status_code == 200
    assert page.get(add).status_code == 403 and page.get(figures).json()["n"] == 1
    page.close()


def login_client(ibox: InProcessBox) -> TestClient:
    """A second client of the same app with no token (a browser: cookies only)."""
    return TestClient(ibox.client.app, base_url="http://127.0.0.1")


def test_a_page_login_sets_a_strict_cookie_and_needs_csrf(untrusted: InProcessBox) -> None:
    untrusted.box.auth.store.add_user("olga", Role.operator, "olga's password")
    browser = httpx.Client(transport=untrusted.client._transport, base_url="http://127.0.0.1")  # type: ignore[attr-defined]
    res = browser.post("/api/v1/login", data={"name": "olga", "password": "olga's password"})
    assert res.status_code == 200, res.text
    cookie = res.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
    csrf = res.json()["csrf"]
    assert browser.get("/api/v1/me").json() == {"name": "olga", "role": "operator",
                                                "kind": "user", "csrf": csrf}  # fmt: skip
    assert browser.delete("/api/v1/jobs/tmp.nothere0").status_code == 403  # no CSRF token
    res = browser.delete("/api/v1/jobs/tmp.nothere0", headers={"X-CSRF-Token": csrf})
    assert res.status_code == 404  # let through: there is no such job
    assert browser.get("/code/php/deleteStudy.php?scratchdir=tmp.nothere0").status_code == 403
    assert (
        browser.put("/api/v1/routing", content=b"{}", headers={"X-CSRF-Token": csrf}).status_code
        == 403
    )
    assert browser.post("/api/v1/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert browser.get("/api/v1/me").status_code == 401
    browser.close()


def test_failed_logins_are_throttled_and_audited(untrusted: InProcessBox, tokens: dict) -> None:
    untrusted.box.auth.store.add_user("pat", Role.viewer, "pat's password")
    client = login_client(untrusted)
    for _ in range(3):
        res = client.post("/api/v1/login", data={"name": "pat", "password": "guess"})
        assert res.status_code == 401
    res = client.post("/api/v1/login", data={"name": "pat", "password": "pat's password"})
    assert res.status_code == 429 and int(res.headers["retry-after"]) > 0
    audit = call(untrusted.client, "GET", "/api/v1/audit?action=login_failed&target=pat",
                 tokens["admin"]).json()  # fmt: skip
    assert audit["total"] == 3 and "guess" not in str(audit)


def test_admins_manage_users_and_tokens_over_http(untrusted: InProcessBox, tokens: dict) -> None:
    client, admin = untrusted.client, tokens["admin"]
    res = call(client, "POST", "/api/v1/users", admin,
               json={"name": "vic", "role": "viewer", "password": "vic's password"})  # fmt: skip
    assert res.status_code == 201
    assert (
        call(
            client, "POST", "/api/v1/users", admin, json={"name": "vic", "password": "x" * 8}
        ).status_code
        == 409
    )
    assert (
        call(
            client, "POST", "/api/v1/users", admin, json={"name": "w", "password": "short"}
        ).status_code
        == 422
    )
    assert {"name": "vic", "role": "viewer"}.items() <= next(
        u for u in call(client, "GET", "/api/v1/users", admin).json() if u["name"] == "vic"
    ).items()
    res = call(client, "POST", "/api/v1/tokens", admin, json={"name": "ci", "role": "operator"})
    assert res.status_code == 201
    secret = res.json()["token"]
    assert call(client, "GET", "/api/v1/jobs", secret).status_code == 200
    assert secret not in call(client, "GET", "/api/v1/tokens", admin).text
    assert call(client, "DELETE", "/api/v1/tokens/ci", admin).status_code == 200
    assert call(client, "GET", "/api/v1/jobs", secret).status_code == 401
    assert call(client, "PUT", "/api/v1/users/vic/password", admin,
                json={"password": "a new password"}).status_code == 200  # fmt: skip
    assert call(client, "DELETE", "/api/v1/users/vic", admin).status_code == 200
    actions = [
        e["action"]
        for e in call(client, "GET", "/api/v1/audit?actor=token:admin", admin).json()["events"]
    ]
    assert actions[:5] == [
        "user_remove",
        "user_password",
        "token_revoke",
        "token_create",
        "user_add",
    ]


def test_auth_off_lets_everyone_do_everything(tmp_path: Path) -> None:
    with in_process_box(tmp_path / "home", auth=False, trusted_networks=[]) as ibox:
        assert call(ibox.client, "GET", "/api/v1/setup", None).status_code == 200
        assert call(ibox.client, "GET", "/api/v1/audit", None).status_code == 200
