"""/metrics and webhooks against what real peers did: dcmtk's storescu sends, the box's
own router sends on, a stdlib HTTP server takes the webhooks.

One box (in this process, DICOM on a real socket) serves the whole module: the sends
happen once, then each test reads what they left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from magickbox.jobs.retention import STALE_SECONDS
from magickbox.testing.dicomgen import write_study
from tests.conftest import InProcessBox, copy_bucket, dcmtk, in_process_box
from tests.e2e.peers import associate, dataset_part, wait_for

QUICK = "#!/bin/sh\necho fine\n"
BAD = "#!/bin/sh\necho broken >&2\nexit 3\n"
PATIENT = ("MB-4711", "Secret^Patient")


@dataclass
class Webhook:
    """A local HTTP server taking webhook POSTs; it answers 500 to the first ``fail_first``."""

    fail_first: int = 1
    bodies: list[dict] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with hook.lock:
                    status = 500 if len(hook.answers) < hook.fail_first else 200
                    hook.answers.append(status)
                    if status == 200:
                        hook.raw.append(body)
                        hook.bodies.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        return Handler

    def events(self, kind: str) -> list[dict]:
        with self.lock:
            return [b for b in self.bodies if b["event"] == kind]


@dataclass
class Scene:
    app: InProcessBox
    hook: Webhook
    sent: dict[str, list[Path]]  # bucket -> the files storescu sent to it


def storescu(port: int, calling: str, called: str, folder: Path) -> subprocess.CompletedProcess:
    cmd = [dcmtk("storescu"), "+sd", "+r", "-nh", "-aet", calling, "-aec", called,
           "127.0.0.1", str(port), str(folder)]  # fmt: skip
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def routing_table(me_port: int) -> str:
    """Quick's INPUT goes to the Sink bucket of this very box and to an AE it refuses."""
    dest = {"IP": "$me", "PORT": "$port", "AETitleSender": "ROUTER"}
    rule = {"name": "copy", "AETitleIn": "^Quick$", "RouteDirectory": "INPUT",
            "send": [{".*": {**dest, "AETitleTo": "Sink"}},
                     {".*": {**dest, "AETitleTo": "Nope"}}]}  # fmt: skip
    return json.dumps({"routing": [rule]})


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("monitoring")
    home = root / "home"
    for name, script in (("Quick", QUICK), ("Bad", BAD), ("Sink", QUICK)):
        copy_bucket(home, name, script)
    hook = Webhook()
    server = ThreadingHTTPServer(("127.0.0.1", 0), hook.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    settings = {
        "heartbeat_seconds": 0,  # rounds are run by the tests
        "routing_retries": 0,
        "notify": [url],
        "notify_retry_delay": 0.05,
        "disk_warn_percent": 100.0,  # any disk is "low": the disk_low webhook goes out
    }
    with in_process_box(home, dicom=True, **settings) as app:
        (home / "routing.json").write_text(routing_table(app.dicom_port))
        sent = {
            "Quick": write_study(root / "quick", n_images=3, rows=16, cols=16,
                                 patient_id=PATIENT[0], patient_name=PATIENT[1]).paths,
            "Bad": write_study(root / "bad", n_images=2, rows=16, cols=16).paths,
        }  # fmt: skip
        assert storescu(app.dicom_port, "ip44", "Quick", root / "quick").returncode == 0
        assert storescu(app.dicom_port, "ct1", "Bad", root / "bad").returncode == 0
        assert storescu(app.dicom_port, "ct1", "Nope", root / "bad").returncode != 0
        wait_for("3 finished jobs and 2 ended sends", lambda: finished(app))
        yield Scene(app, hook, sent)
    server.shutdown()
    server.server_close()


def finished(app: InProcessBox) -> bool:
    jobs = app.get("/api/v1/jobs").json()["jobs"]
    sends = app.get("/api/v1/sends").json()
    return (
        len(jobs) == 3
        and all(j["state"] in ("done", "failed") for j in jobs)
        and len(sends) == 2
        and all(s["state"] in ("done", "failed") for s in sends)
    )


def samples(app: InProcessBox) -> dict[tuple[str, frozenset], float]:
    """/metrics parsed by Prometheus' own parser: {(sample name, labels): value}."""
    res = app.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(res.text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def sent_bytes(paths: list[Path]) -> int:
    """The data set bytes of these files: what went on the wire (the file meta does not)."""
    return sum(len(dataset_part(p)) for p in paths)


def test_metrics_count_what_storescu_and_the_router_sent(scene: Scene) -> None:
    m, quick, bad = samples(scene.app), scene.sent["Quick"], scene.sent["Bad"]
    got = value(m, "magickbox_received_images_total", calling_aet="ip44", called_aet="Quick")
    assert got == len(quick)
    got = value(m, "magickbox_received_bytes_total", calling_aet="ip44", called_aet="Quick")
    assert got == sent_bytes(quick)
    assert value(m, "magickbox_received_images_total", calling_aet="ct1", called_aet="Bad") == 2
    got = value(m, "magickbox_received_bytes_total", calling_aet="ct1", called_aet="Bad")
    assert got == sent_bytes(bad)
    # The router sent Quick's INPUT on, as it is, to the Sink bucket of this box.
    got = value(m, "magickbox_received_bytes_total", calling_aet="ROUTER", called_aet="Sink")
    assert got == sent_bytes(quick)
    # storescu's association to "Nope" and the router's: refused, by reason.
    assert value(m, "magickbox_associations_rejected_total", reason="called_aet_unknown") == 2
    assert value(m, "magickbox_associations_open") == 0


def test_metrics_count_open_associations(scene: Scene) -> None:
    held = [associate(scene.app.dicom_port, "Quick", echo=True) for _ in range(2)]
    try:
        assert value(samples(scene.app), "magickbox_associations_open") == 2
    finally:
        for assoc in held:
            assoc.release()
    wait_for("the associations to close",
             lambda: value(samples(scene.app), "magickbox_associations_open") == 0)  # fmt: skip


def test_metrics_jobs_by_state_histograms_and_sends(scene: Scene) -> None:
    m, port = samples(scene.app), scene.app.dicom_port
    assert value(m, "magickbox_jobs", bucket="Quick", state="done") == 1
    assert value(m, "magickbox_jobs", bucket="Sink", state="done") == 1
    assert value(m, "magickbox_jobs", bucket="Bad", state="failed") == 1
    assert value(m, "magickbox_jobs_finished_total", bucket="Bad", state="failed") == 1
    for bucket in ("Quick", "Bad", "Sink"):
        assert value(m, "magickbox_job_run_seconds_count", bucket=bucket) == 1
        assert value(m, "magickbox_job_queue_wait_seconds_count", bucket=bucket) == 1
        inf = value(m, "magickbox_job_run_seconds_bucket", bucket=bucket, le="+Inf")
        assert inf == 1
    sink, nope = f"Sink@127.0.0.1:{port}", f"Nope@127.0.0.1:{port}"
    assert value(m, "magickbox_sends_total", destination=sink, outcome="done") == 1
    assert value(m, "magickbox_sends_total", destination=nope, outcome="failed") == 1
    assert value(m, "magickbox_sends_total", destination=nope, outcome="done") == 0


def test_metrics_disk_and_scrubbed_bytes(scene: Scene) -> None:
    """The scrubbed bytes are what a real sweep freed: two stale leftovers of known size."""
    box = scene.app.box
    before = value(samples(scene.app), "magickbox_scrubbed_bytes_total")
    old = time.time() - STALE_SECONDS - 60
    for folder, size in ((box.settings.uploads, 1234), (box.settings.partial, 766)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "left-behind").write_bytes(os.urandom(size))
        os.utime(folder / "left-behind", (old, old))
    removed = box.sweep()
    assert sorted(r.freed for r in removed) == [766, 1234], removed
    m = samples(scene.app)
    assert value(m, "magickbox_scrubbed_bytes_total") == before + 2000
    total = shutil.disk_usage(box.settings.scratch).total
    assert value(m, "magickbox_disk_total_bytes") == total
    assert 0 < value(m, "magickbox_disk_free_bytes") <= total


def test_webhooks_for_jobs_and_sends_retried_and_without_patient_data(scene: Scene) -> None:
    hook = scene.hook
    wait_for("4 webhooks", lambda: len(hook.events("job_done")) == 2
             and hook.events("job_failed") and hook.events("send_failed"))  # fmt: skip
    assert hook.answers[0] == 500  # the first try failed and was retried
    (failed,) = hook.events("job_failed")
    assert failed["job"]["bucket"] == "Bad" and failed["job"]["state"] == "failed"
    assert "exited with code 3" in failed["job"]["reason"]
    assert failed["box"]["aet"] == scene.app.box.settings.aet
    assert sorted(e["job"]["bucket"] for e in hook.events("job_done")) == ["Quick", "Sink"]
    (send,) = hook.events("send_failed")
    assert send["send"]["destination"].startswith("Nope@") and send["job"]["bucket"] == "Quick"
    study_uid = scene.app.get("/api/v1/jobs").json()["jobs"][0]["study_uid"]
    for body in hook.raw:  # no patient data unless notify_phi
        for secret in (*PATIENT, study_uid):
            assert secret.encode() not in body
    assert all("study_uid" not in b.get("job", {}) for b in hook.bodies)


def test_disk_low_webhook_once_per_fall(scene: Scene) -> None:
    box = scene.app.box
    assert box.heartbeat_round()["disk"]["state"] == "low"
    box.heartbeat_round()  # still low: no second message
    (low,) = wait_for("the disk_low webhook", lambda: scene.hook.events("disk_low"))
    assert low["disk"]["total_bytes"] > 0 and 0 <= low["disk"]["free_percent"] <= 100
    health = scene.app.get("/api/v1/health")
    assert health.status_code == 200 and health.json()["parts"]["disk"]["state"] == "low"
    assert len(scene.hook.events("disk_low")) == 1
