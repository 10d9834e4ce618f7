"""Security against real peers: the seed's commands from an untrusted address, a hostile
page in headless Chromium, logins in the browser, ``mb`` with and without a token, HTTPS
with a throwaway CA (curl --cacert, mb --ca-file), and a new home's first admin."""

from __future__ import annotations

import http.server
import json
import os
import stat
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from magickbox.auth.roles import Role
from magickbox.auth.store import PASSWORD_FILE
from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer, copy_bucket, dcmtk, free_port
from tests.e2e.peers import QUICK, wait_for
from tests.e2e.test_seed import DELETE, DOWNLOAD, FILE_LIST, LIST_FINISHED, SEND, bash, fill

pytestmark = pytest.mark.e2e

sync_api = pytest.importorskip("playwright.sync_api")
UNTRUSTED = ["--set", 'trusted_networks=["10.0.0.0/8=operator"]']  # 127.0.0.1 is not in it


def one_job(box: BoxServer, folder: Path, calling: str = "ip44") -> str:
    write_study(folder, n_images=1, rows=16, cols=16)
    assert box.storescu(folder, "ProcBucket", calling).returncode == 0
    jobs = wait_for("the job", lambda: [j for j in box.jobs() if j["processingTime"] != "0"
                                        and j["AETitleCaller"] == calling])  # fmt: skip
    return jobs[0]["scratchdir"]


def started(home: Path, **kw: object) -> BoxServer:
    copy_bucket(home, "ProcBucket", QUICK)
    return BoxServer(home, quiet=0.3, **kw).start()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoxServer]:
    box = started(tmp_path_factory.mktemp("untrusted") / "home", extra_args=UNTRUSTED)
    yield box
    box.stop()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoxServer]:
    """The defaults (127.0.0.0/8 trusted as operator); page logins end after 3 idle seconds."""
    box = started(tmp_path_factory.mktemp("local") / "home",
                  extra_args=["--set", "session_minutes=0.05"])  # fmt: skip
    yield box
    box.stop()


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "storescu").symlink_to(dcmtk("storescu"))
    return folder


def curl_status(url: str, *args: str) -> str:
    done = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args, url],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return done.stdout


# -- the seed's commands ---------------------------------------------------------------------


def test_the_seeds_commands_from_an_untrusted_address_get_401(
    untrusted: BoxServer, tmp_path: Path, bindir: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    study = write_study(tmp_path / "s", n_images=2, rows=16, cols=16)
    bash(fill(SEND.replace("MySelf", "ip44"), untrusted, study.paths[0].parent), work, bindir)
    untrusted.wait_jobs(1)
    sd = untrusted.jobs()[0]["scratchdir"]
    base = f"http://127.0.0.1:{untrusted.web_port}/code/php"
    for url in (f"{base}/getScratch.php", f"{base}/getOutputZip.php?folder={sd}",
                f"{base}/deleteStudy.php?scratchdir={sd}",
                f"http://127.0.0.1:{untrusted.web_port}/scratch/{sd}/processing.log"):  # fmt: skip
        assert curl_status(url) == "401", url
    # The delete loop verbatim, over the list an admin sees: nothing goes.
    listing = json.dumps([{"scratchdir": sd, "pid": "x"}])
    out = bash(f"fileList='{listing}'\n" + fill(DELETE, untrusted), work, bindir)
    assert "log in" in out
    assert [j["scratchdir"] for j in untrusted.jobs()] == [sd]
    # With a token the same endpoints answer.
    assert (
        curl_status(f"{base}/getScratch.php", "-H", f"Authorization: Bearer {untrusted.token}")
        == "200"
    )


LAB = "127.0.0.2"  # a second loopback address: the "lab network" of the next test


def curl_from(bindir: Path, address: str) -> None:
    """``curl`` on the shell's PATH, sending from ``address`` (the seed's lines stay verbatim)."""
    real = subprocess.run(["sh", "-c", "command -v curl"], capture_output=True, text=True)
    wrapper = bindir / "curl"
    wrapper.write_text(f'#!/bin/sh\nexec {real.stdout.strip()} --interface {address} "$@"\n')
    wrapper.chmod(0o755)


def test_the_seeds_commands_from_a_trusted_network_pass_and_from_elsewhere_get_401(
    tmp_path: Path, bindir: Path
) -> None:
    """One box trusting only 127.0.0.2/32 (not 127.0.0.1): the seed's list, download and
    delete loops run verbatim from 127.0.0.2, and the same lines from 127.0.0.1 get 401."""
    trusted = ["--set", f'trusted_networks=["{LAB}/32=operator"]']
    box = started(tmp_path / "home", extra_args=trusted)
    try:
        work = tmp_path / "work"
        work.mkdir()
        study = write_study(tmp_path / "s", n_images=2, rows=16, cols=16)
        bash(fill(SEND.replace("MySelf", "ip44"), box, study.paths[0].parent), work, bindir)
        box.wait_jobs(1, finished=True, timeout=120)
        sd = box.jobs()[0]["scratchdir"]
        url = f"http://127.0.0.1:{box.web_port}/code/php/getScratch.php"
        assert curl_status(url) == "401"  # from 127.0.0.1: not trusted
        assert curl_status(url, "--interface", LAB) == "200"
        curl_from(bindir, LAB)
        finished = bash(fill(LIST_FINISHED, box), work, bindir)
        assert finished.count('"AETitleCaller": "ip44"') == 1
        bash(fill(FILE_LIST, box) + "\n" + fill(DOWNLOAD, box), work, bindir)
        with zipfile.ZipFile(work / study.study_uid / f"{study.study_uid}.zip") as zf:
            assert zf.testzip() is None and zf.namelist()[0].startswith(f"{sd}/OUTPUT/")
        out = bash(fill(FILE_LIST, box) + "\n" + fill(DELETE, box), work, bindir)
        assert out.count('"ok":true') == 1 and box.jobs() == []
        trail = box.get("/api/v1/audit", params={"target": sd}).json()["events"]
        assert {e["actor"] for e in trail} == {f"trusted:{LAB}/32"}
        assert [e["action"] for e in trail] == ["delete", "download"]
    finally:
        box.stop()


# -- a hostile page in a real browser --------------------------------------------------------


class EvilSite:
    """A page on another site (http://localhost:<port>) aimed at the box on 127.0.0.1."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_cross_site_page_changes_nothing(local: BoxServer, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sd = one_job(local, tmp_path / "victim", "VICTIM")
    pacs = {"IP": "127.0.0.1", "PORT": 104, "AETitleSender": "MB", "AETitleTo": "PACS"}
    table = {"routing": [{"name": "keep", "send": [{"success": pacs}]}]}
    assert local.put("/api/v1/routing", content=json.dumps(table)).status_code == 200
    box = local.url
    evil = EvilSite(f"""<!doctype html><body>
      <img src="{box}/code/php/deleteStudy.php?scratchdir={sd}">
      <iframe name="sink"></iframe><iframe name="sink2"></iframe>
      <form id="f" method="POST" action="{box}/code/php/saveRouting.php" target="sink">
        <input name="text" value='{{"routing": []}}'></form>
      <form id="g" method="POST" enctype="multipart/form-data" target="sink2"
        action="{box}/code/php/deleteStudy.php?scratchdir={sd}"><input name="x" value="1"></form>
      <script>
        document.getElementById("f").submit();
        document.getElementById("g").submit();
        fetch("{box}/api/v1/jobs/{sd}", {{method: "DELETE", mode: "no-cors"}}).catch(() => {{}});
      </script></body>""")
    try:
        ctx = browser.new_context()
        page = ctx.new_page()
        seen: dict[str, int] = {}
        page.on("response", lambda r: seen.__setitem__(r.url.split("?")[0], r.status))
        page.goto(evil.url)
        targets = {f"{box}/code/php/deleteStudy.php", f"{box}/code/php/saveRouting.php"}
        deadline = time.monotonic() + 60
        while not targets <= set(seen) and time.monotonic() < deadline:
            page.wait_for_timeout(100)  # Playwright delivers its events while it waits
        assert seen[f"{box}/code/php/deleteStudy.php"] == 403
        assert seen[f"{box}/code/php/saveRouting.php"] == 403
        ctx.close()
    finally:
        evil.close()
    assert local.get(f"/api/v1/jobs/{sd}").status_code == 200
    assert local.get("/api/v1/routing").json() == table
    # The same GET from a shell on the box (a trusted network) does delete: the refusal
    # above was the browser's cross-site mark, not a broken endpoint.
    url = f"{box}/code/php/deleteStudy.php?scratchdir={sd}"
    assert json.loads(subprocess.run(["curl", "-s", url], capture_output=True, text=True,
                                     timeout=60).stdout)["ok"] is True  # fmt: skip


def test_login_logout_csrf_and_session_expiry_in_the_browser(local: BoxServer, browser) -> None:  # type: ignore[no-untyped-def]
    local.add_user("olga", Role.operator, "olga's password")
    ctx = browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    page.goto(local.url + "/")
    page.wait_for_url("**/login")  # the page needs a login, even from a trusted network
    page.fill("#name", "olga")
    page.fill("#password", "wrong password")
    page.click("#submit")
    page.locator("#error").filter(has_text="wrong user name or password").wait_for()
    page.fill("#password", "olga's password")
    page.click("#submit")
    page.wait_for_url(local.url + "/")
    page.locator("#who .user").filter(has_text="olga (operator)").wait_for()
    cookie = next(c for c in ctx.cookies() if c["name"] == "mb_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # A script's change without the page's CSRF token is refused; with it, let through.
    status = page.evaluate(
        "fetch('/api/v1/jobs/tmp.nothere0', {method: 'DELETE'}).then(r => r.status)"
    )
    assert status == 403
    status = page.evaluate(
        "fetch('/api/v1/me').then(r => r.json()).then(me => fetch('/api/v1/jobs/tmp.nothere0',"
        " {method: 'DELETE', headers: {'X-CSRF-Token': me.csrf}})).then(r => r.status)"
    )
    assert status == 404
    page.click("#logout")
    page.wait_for_url("**/login")
    assert page.evaluate("fetch('/api/v1/me').then(r => r.status)") == 401
    # Log in again, leave the page, come back after the idle time: the form again.
    page.fill("#name", "olga")
    page.fill("#password", "olga's password")
    page.click("#submit")
    page.locator("#who .user").filter(has_text="olga").wait_for()
    page.goto("about:blank")
    time.sleep(3.5)  # session_minutes=0.05 of this box
    page.goto(local.url + "/")
    page.wait_for_url("**/login")
    ctx.close()
    # Secrets never in the logs (the box's own and its console).
    logs = (local.home / "logs" / "magickbox.log").read_text() + local.log_path.read_text()
    assert "olga's password" not in logs and local.token not in logs


# -- mb ----------------------------------------------------------------------------------------


def mb(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MB_CONFIG_DIR": str(config)}
    return subprocess.run([sys.executable, "-m", "magickbox.mb.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def token_file(path: Path, token: str, mode: int = 0o600) -> Path:
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def test_mb_with_and_without_a_token(untrusted: BoxServer, tmp_path: Path) -> None:
    one_job(untrusted, tmp_path / "s", "MBTEST")
    cfg, port = tmp_path / "mb", str(untrusted.web_port)
    assert mb(cfg, "activeMachines", "add", "127.0.0.1", port).returncode == 0
    done = mb(cfg, "list", "MBTEST")
    assert done.returncode != 0 and "HTTP 401" in done.stderr and "--token-file" in done.stderr
    viewer = token_file(tmp_path / "viewer.token", untrusted.make_token(Role.viewer, "v"), 0o644)
    done = mb(cfg, "activeMachines", "add", "127.0.0.1", port, "--token-file", str(viewer))
    assert done.returncode != 0 and "chmod 600" in done.stderr
    viewer.chmod(0o600)
    assert (
        mb(cfg, "activeMachines", "add", "127.0.0.1", port, "--token-file", str(viewer)).returncode
        == 0
    )
    assert untrusted.token not in (cfg / "machines.json").read_text()
    done = mb(cfg, "list", "MBTEST")
    assert done.returncode == 0 and json.loads(done.stdout)[0]["AETitleCaller"] == "MBTEST"
    done = mb(cfg, "remove", "-y", "MBTEST")
    assert "HTTP 403" in done.stderr and "role may not" in done.stderr
    operator = token_file(tmp_path / "op.token", untrusted.make_token(Role.operator, "op"))
    assert mb(cfg, "a", "add", "127.0.0.1", port, "--token-file", str(operator)).returncode == 0
    assert mb(cfg, "remove", "-y", "MBTEST").returncode == 0
    assert not [j for j in untrusted.jobs() if j["AETitleCaller"] == "MBTEST"]


# -- HTTPS ---------------------------------------------------------------------------------


def throwaway_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1/localhost signed by it (openssl CLI)."""
    folder.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=MagickBox test CA")  # fmt: skip
    openssl("req", *ec, "-keyout", "box.key", "-out", "box.csr", "-subj", "/CN=127.0.0.1")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "box.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "box.pem", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip
    return folder / "ca.pem", folder / "box.pem", folder / "box.key"


def test_https_with_a_throwaway_ca(tmp_path: Path) -> None:
    ca, cert, key = throwaway_ca(tmp_path / "pki")
    args = ["--set", f"tls_cert={cert}", "--set", f"tls_key={key}"]
    box = started(tmp_path / "home", extra_args=args, ca_file=ca)
    try:
        url = f"https://127.0.0.1:{box.web_port}"
        assert curl_status(f"{url}/api/v1/health", "--cacert", str(ca)) == "200"
        refused = subprocess.run(["curl", "-s", f"{url}/api/v1/health"], timeout=60)
        assert refused.returncode == 60  # curl: the peer's certificate cannot be verified
        auth = ["-H", f"Authorization: Bearer {box.token}"]
        assert curl_status(f"{url}/api/v1/jobs", "--cacert", str(ca), *auth) == "200"
        assert curl_status(f"http://127.0.0.1:{box.web_port}/api/v1/health") != "200"
        # A page login under HTTPS: the cookie is Secure.
        box.add_user("sam", Role.viewer, "sam's password")
        res = box.post("/api/v1/login", data={"name": "sam", "password": "sam's password"},
                       headers={"Authorization": ""})  # fmt: skip
        assert res.status_code == 200 and "secure" in res.headers["set-cookie"].lower()
        # mb verifies the certificate with the machine's CA file, and refuses without it.
        cfg, port = tmp_path / "mb", str(box.web_port)
        tok = token_file(tmp_path / "t", box.token)
        assert (
            mb(cfg, "a", "add", "127.0.0.1", port, "--https", "--token-file", str(tok)).returncode
            == 0
        )
        done = mb(cfg, "list")
        assert done.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in done.stderr
        assert mb(cfg, "a", "add", "127.0.0.1", port, "--ca-file", str(ca),
                  "--token-file", str(tok)).returncode == 0  # fmt: skip
        done = mb(cfg, "list")
        assert done.returncode == 0 and json.loads(done.stdout) == []
    finally:
        box.stop()


# -- a new home ------------------------------------------------------------------------------


def test_a_new_home_prints_its_admin_password_once(tmp_path: Path) -> None:
    box = BoxServer(tmp_path / "home", admin_token=False).start()
    try:
        path = box.home / PASSWORD_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        name, password = path.read_text().split()
        assert f"password {password}" in box.log_path.read_text()  # on the console
        assert password not in (box.home / "logs" / "magickbox.log").read_text()
        res = httpx.post(f"{box.url}/api/v1/login", data={"name": name, "password": password})
        assert res.status_code == 200 and res.json()["role"] == "admin"
    finally:
        box.stop()
    box.start()  # a second start: no new password
    try:
        assert box.log_path.read_text().count("first start") == 1
    finally:
        box.stop()
    assert free_port()


# -- buckets enabled and disabled by an admin on the page --------------------------------------


def test_an_admin_disables_and_enables_a_bucket_on_the_page(untrusted: BoxServer, browser) -> None:  # type: ignore[no-untyped-def]
    folder = copy_bucket(untrusted.home, "Switch", QUICK)
    untrusted.add_user("ada", Role.admin, "ada's password")
    untrusted.add_user("vic", Role.viewer, "vic's password")
    ctx = browser.new_context()
    ctx.add_cookies([untrusted.login_cookie("ada", "ada's password")])
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    page.on("dialog", lambda d: d.accept())  # "Disable bucket Switch?"
    page.goto(untrusted.url + "/#/buckets")
    card = page.locator('article[data-bucket="Switch"]')
    card.locator('button[data-toggle="disable"]').click()
    card.locator('button[data-toggle="enable"]').wait_for()  # drawn again, now disabled
    card.locator(".badge").filter(has_text="disabled").wait_for()
    assert json.loads((folder / "info.json").read_text())["enabled"] == 0
    card.locator('button[data-toggle="enable"]').click()
    card.locator('button[data-toggle="disable"]').wait_for()
    assert json.loads((folder / "info.json").read_text())["enabled"] == 1
    ctx.close()
    trail = untrusted.get("/api/v1/audit", params={"target": "Switch"}).json()["events"]
    assert [(e["action"], e["actor"]) for e in trail] == [
        ("bucket_enable", "user:ada"), ("bucket_disable", "user:ada")]  # fmt: skip
    # A viewer sees the bucket but no button to change it.
    ctx = browser.new_context()
    ctx.add_cookies([untrusted.login_cookie("vic", "vic's password")])
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    page.goto(untrusted.url + "/#/buckets")
    page.locator('article[data-bucket="Switch"]').wait_for()
    page.locator("#who .user").filter(has_text="vic (viewer)").wait_for()
    assert page.locator("button[data-toggle]").count() == 0
    ctx.close()


# -- Host names, secrets in URLs and logs ------------------------------------------------------


def test_foreign_hosts_and_tokens_in_urls_are_refused_and_no_secret_is_logged(
    untrusted: BoxServer,
) -> None:
    url = f"http://127.0.0.1:{untrusted.web_port}/api/v1/jobs"
    auth = ["-H", f"Authorization: Bearer {untrusted.token}"]
    assert curl_status(url, *auth) == "200"
    # DNS rebinding: a name that resolves to the box but is not one of its names.
    assert curl_status(url, *auth, "-H", "Host: rebound.evil.example") == "400"
    assert curl_status(url, *auth, "-H", f"Host: localhost:{untrusted.web_port}") == "200"
    # A token is never taken from the URL (URLs end up in logs, histories and Referers).
    for name in ("token", "access_token", "api_key"):
        assert curl_status(f"{url}?{name}={untrusted.token}") == "401", name
    untrusted.add_user("lou", Role.viewer, "lou's password")
    assert curl_status(f"http://127.0.0.1:{untrusted.web_port}/api/v1/login",
                       "-d", "name=lou", "-d", "password=lou's password") == "200"  # fmt: skip
    assert curl_status(f"http://127.0.0.1:{untrusted.web_port}/api/v1/login",
                       "-d", "name=lou", "-d", "password=not lou's") == "401"  # fmt: skip
    logs = (untrusted.home / "logs" / "magickbox.log").read_text() + untrusted.log_path.read_text()
    assert "lou's password" not in logs and "not lou's" not in logs
    assert untrusted.token not in logs
    trail = untrusted.get("/api/v1/audit", params={"target": "lou"}).json()["events"]
    assert [(e["action"], e["address"]) for e in trail] == [
        ("login_failed", "127.0.0.1"), ("login", "127.0.0.1")]  # fmt: skip
    assert "not lou's" not in json.dumps(trail) and "lou's password" not in json.dumps(trail)


# -- page logins and restarts ----------------------------------------------------------------


def test_a_page_login_survives_a_restart_of_the_box(tmp_path: Path) -> None:
    from magickbox.auth.sessions import COOKIE

    box = started(tmp_path / "home")
    try:
        box.add_user("rita", Role.operator, "rita's password")
        res = httpx.post(f"{box.url}/api/v1/login",
                         data={"name": "rita", "password": "rita's password"})  # fmt: skip
        assert res.status_code == 200
        cookie, csrf = {COOKIE: res.cookies[COOKIE]}, res.json()["csrf"]
        box.stop()
        box.start()
        me = httpx.get(f"{box.url}/api/v1/me", cookies=cookie)
        assert me.status_code == 200 and me.json()["name"] == "rita"
        assert me.json()["csrf"] == csrf  # the page's CSRF token still holds too
        gone = httpx.delete(f"{box.url}/api/v1/jobs/tmp.nothere0", cookies=cookie,
                            headers={"X-CSRF-Token": csrf})  # fmt: skip
        assert gone.status_code == 404  # let through (no such job)
        out = httpx.post(f"{box.url}/api/v1/logout", cookies=cookie,
                         headers={"X-CSRF-Token": csrf})  # fmt: skip
        assert out.status_code == 204
        assert httpx.get(f"{box.url}/api/v1/me", cookies=cookie).status_code == 401
    finally:
        box.stop()


# -- the role matrix over a real socket ---------------------------------------------------------


def test_the_role_matrix_over_every_route_of_a_running_box(tmp_path: Path) -> None:
    """The same matrix as tests/integration/test_route_roles.py, sent by httpx to a real
    ``magickbox serve`` that trusts no network (the routes are read off the app)."""
    from magickbox.auth.store import AuthStore
    from magickbox.box import Box
    from magickbox.config import load_settings
    from magickbox.jobs.db import open_database
    from magickbox.testing.server import settings_of
    from magickbox.web.app import create_app
    from tests.integration.test_route_roles import calls, matrix_tokens, role_matrix

    box = started(tmp_path / "home", extra_args=["--set", "trusted_networks=[]"])
    try:
        db = open_database(settings_of(box.home, box.extra_env, box.extra_args).db_url)
        try:
            tokens = matrix_tokens(AuthStore(db))
        finally:
            db.kw["bind"].dispose()
        routes = calls(create_app(Box(load_settings(tmp_path / "other", announce=False))))
        assert len(routes) > 40
        client = httpx.Client(base_url=box.url, timeout=60)

        def status_of(method: str, path: str, token: str | None) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return client.request(method, path, headers=headers).status_code

        try:
            assert role_matrix(routes, status_of, tokens) == []
        finally:
            client.close()
        assert box.get("/api/v1/health").status_code == 200  # still serving after all that
    finally:
        box.stop()
