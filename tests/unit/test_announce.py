"""The box's zeroconf announcement: found on loopback, and harmless when mDNS fails."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import zeroconf

from magickbox.announce import Announcer
from magickbox.config import Settings
from magickbox.mb.discover import browse


def test_mdns_failure_is_a_warning_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_multicast(*_a: object, **_k: object) -> None:
        raise OSError("no multicast on this network")

    monkeypatch.setattr(zeroconf, "Zeroconf", no_multicast)
    announcer = Announcer(Settings(home=tmp_path, host="127.0.0.1"))
    with caplog.at_level(logging.WARNING, logger="magickbox.announce"):
        announcer.start()
        assert announcer._thread is not None
        announcer._thread.join(10)
    announcer.stop()
    assert "could not announce" in caplog.text and "no multicast" in caplog.text


def test_an_announced_box_is_browsed_on_loopback(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, host="127.0.0.1", web_port=1, dicom_port=2, aet="ANN")
    announcer = Announcer(settings)
    announcer.start()
    assert announcer._thread is not None
    announcer._thread.join(20)
    try:
        rows = [r for r in browse(1.5, ["127.0.0.1"]) if r["Port"] == "1"]
    finally:
        announcer.stop()
    assert rows and rows[0]["AETitle"] == "ANN" and rows[0]["DicomPort"] == "2"
    assert rows[0]["Machine"] == "127.0.0.1"
