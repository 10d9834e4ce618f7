"""With ``notify_phi = true`` the job_done webhook carries the study: a real Box in this
process, DICOM on a real socket, pynetdicom sends a study with patient tags, a stdlib HTTP
server takes the webhook."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from magickbox.testing.dicomgen import write_study
from tests.conftest import copy_bucket, in_process_box
from tests.e2e.peers import send_files, wait_for
from tests.integration.test_monitoring import Webhook


def test_with_notify_phi_the_webhook_names_the_patient_and_study(tmp_path: Path) -> None:
    hook = Webhook(fail_first=0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), hook.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    home = tmp_path / "home"
    copy_bucket(home, "Quick", "#!/bin/sh\nexit 0\n")
    study = write_study(tmp_path / "s", n_images=2, rows=16, cols=16, patient_id="MB-0815",
                        patient_name="Known^Patient")  # fmt: skip
    try:
        with in_process_box(home, dicom=True, notify=[url], notify_phi=True,
                            notify_events=["job_done"]) as app:  # fmt: skip
            assert len(send_files(app.dicom_port, "Quick", study.paths).ok) == 2
            (done,) = wait_for("the job_done webhook", lambda: hook.events("job_done"))
    finally:
        server.shutdown()
        server.server_close()
    job = done["job"]
    assert job["study_uid"] == study.study_uid and job["state"] == "done"
    assert job["study"]["PatientID"] == "MB-0815"
    assert job["study"]["PatientName"] == "Known^Patient"
