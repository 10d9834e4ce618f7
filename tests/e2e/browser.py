"""Debian's Chromium under Playwright, shared by the page tests (the ``browser`` fixture of
tests/conftest.py: one browser per module)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def launch() -> Iterator[sync_api.Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@contextlib.contextmanager
def logged_in_page(
    browser: sync_api.Browser, cookie: dict, wait_ms: int = 60_000, **context: object
) -> Iterator[sync_api.Page]:
    """A page in a new browser context, logged in by ``cookie`` (a login's session cookie),
    that fails the test for any JavaScript error it raised. ``wait_ms``: generous, the
    page polls every 2 s and CI machines are loaded."""
    ctx = browser.new_context(**context)  # type: ignore[arg-type]
    ctx.add_cookies([cookie])  # type: ignore[list-item]
    pg = ctx.new_page()
    pg.set_default_timeout(wait_ms)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
    finally:
        ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
