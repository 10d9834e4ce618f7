"""A webhook that fails keeps its message through a crash: a real ``magickbox serve`` is
told 500 by a local HTTP server, killed with -9 while the retry waits an hour, started
again, and delivers the very message at once; the outbox in the home is then empty."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from magickbox.notify import OUTBOX
from magickbox.testing.dicomgen import write_study
from magickbox.testing.server import BoxServer
from tests.e2e.peers import install_buckets, send_files, wait_for, wait_jobs
from tests.integration.test_monitoring import Webhook

pytestmark = pytest.mark.e2e

BAD = "#!/bin/sh\necho broken >&2\nexit 3\n"


@pytest.fixture
def hook() -> Iterator[tuple[Webhook, str]]:
    hook = Webhook(fail_first=1)  # the first POST is answered 500, the rest 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), hook.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield hook, f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_an_undelivered_webhook_survives_a_kill9_and_goes_out_after_the_restart(
    box_factory, hook: tuple[Webhook, str], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    webhook, url = hook
    home = tmp_path / "home"
    install_buckets(home, Bad=BAD)
    args = ["--set", f"notify={json.dumps([url])}", "--set", 'notify_events=["job_failed"]',
            "--set", "notify_retry_delay=3600"]  # fmt: skip
    box: BoxServer = box_factory(home=home, quiet=0.3, extra_args=args)
    study = write_study(tmp_path / "s", n_images=1, rows=16, cols=16)
    assert len(send_files(box.dicom_port, "Bad", study.paths).ok) == 1
    (job,) = wait_jobs(box, 1)
    wait_for("the refused first try", lambda: webhook.answers == [500])
    outbox = home / OUTBOX
    # The outbox is saved before the first POST (tries 0) and again after its 500 (tries 1):
    # the answer can be seen here before the second save is on disk.
    (kept,) = wait_for("the outbox to count the refused try", lambda: _outbox_after_a_try(outbox))
    assert kept["url"] == url and kept["tries"] == 1
    assert kept["message"]["job"]["scratchdir"] == job["scratchdir"]

    box.kill9()  # no stop ran: only what was on disk survives
    box.start()

    (told,) = wait_for("the delivery after the restart", lambda: webhook.events("job_failed"))
    assert webhook.answers == [500, 200]
    assert told == kept["message"]  # the same message, built before the crash
    assert told["job"]["state"] == "failed"
    wait_for("the outbox to empty", lambda: not outbox.exists())


def _outbox_after_a_try(outbox: Path) -> list[dict[str, Any]]:
    """The outbox's rows once its first counts a try, else none (not yet rewritten)."""
    try:
        rows: list[dict[str, Any]] = json.loads(outbox.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return rows if rows and rows[0].get("tries") == 1 else []
