"""The heartbeat's round logic and the metrics registry, with stand-in parts; the real
parts are restarted in tests/integration/test_health.py."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from magickbox import heartbeat
from magickbox.disk import DiskStatus
from magickbox.events import DiskLow, EventBus, ImageReceived, PartRestarted
from magickbox.heartbeat import DOWN, LOW, OK, Heartbeat, PartState, disk
from magickbox.metrics import Metrics
from magickbox.pulse import Pulse


class Part:
    """A part that is down until repaired (or whose repair fails)."""

    def __init__(self, repair_works: bool = True) -> None:
        self.up, self.repair_works, self.repairs = False, repair_works, 0

    def check(self) -> PartState:
        return PartState(OK) if self.up else PartState(DOWN, "stopped")

    def repair(self) -> None:
        self.repairs += 1
        if not self.repair_works:
            raise RuntimeError("the port is taken")
        self.up = True


def recorded(bus: EventBus, kind: type) -> list:
    seen: list = []
    bus.subscribe(kind, seen.append)
    return seen


def test_a_round_repairs_what_is_down_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    bus, part, stuck = EventBus(), Part(), Part(repair_works=False)
    restarted = recorded(bus, PartRestarted)
    beat = Heartbeat({"a": part.check, "b": stuck.check, "db": lambda: PartState(DOWN, "gone")},
                     {"a": part.repair, "b": stuck.repair}, bus, 0)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        states = beat.run_once()
    assert states["a"] == PartState(OK) and part.repairs == 1
    assert states["b"].down and stuck.repairs == 1  # the repair failed: still down
    assert states["db"].down  # no repair for it: reported only
    assert restarted == [PartRestarted("a", "stopped")]
    assert "restarting b failed" in caplog.text and "a restarted: now ok" in caplog.text
    beat.run_once()
    assert part.repairs == 1  # up now: left alone


def test_a_check_that_raises_counts_as_down() -> None:
    def broken() -> PartState:
        raise OSError("no such file")

    states = Heartbeat({"x": broken}, {}, EventBus(), 0).check()
    assert states["x"].down and "no such file" in states["x"].detail


def test_disk_low_is_told_once_per_fall() -> None:
    bus = EventBus()
    lows = recorded(bus, DiskLow)
    level = [LOW]
    beat = Heartbeat({"disk": lambda: PartState(level[0], "", {"free": 5, "total": 100})},
                     {}, bus, 0)  # fmt: skip
    beat.run_once()
    beat.run_once()
    level[0] = OK
    beat.run_once()
    level[0] = LOW
    beat.run_once()
    assert lows == [DiskLow(5, 100), DiskLow(5, 100)]


def test_disk_check(tmp_path: Path) -> None:
    assert disk(tmp_path, 0.0).state == OK
    assert disk(tmp_path, 100.0).state == LOW  # no disk is 100 % free
    assert disk(tmp_path / "gone", 0.0).state == DOWN
    facts = disk(tmp_path, 0.0).facts
    assert 0 < facts["free"] <= facts["total"]


def test_pulse_knows_sleeping_from_hung() -> None:
    pulse = Pulse()
    pulse.sleeping()
    assert pulse.busy_for() == 0.0
    pulse.working()
    assert pulse.busy_for() >= 0.0
    asked = time.monotonic()
    assert not pulse.came_round_since(asked, 0.05)  # working, never came round
    pulse.sleeping()
    assert pulse.came_round_since(asked, 0.05)


class Source:
    def job_counts(self) -> dict[str, dict[str, int]]:
        return {"Seg": {"done": 2}}

    def open_associations(self) -> int:
        return 0

    def disk_space(self) -> tuple[int, int]:
        return 10, 20


def test_each_box_has_its_own_registry() -> None:
    one, two = EventBus(), EventBus()
    m1, m2 = Metrics(one, Source()), Metrics(two, Source())
    one.publish(ImageReceived("ip44", "Seg", 100))

    def images(m: Metrics) -> float:
        for family in text_string_to_metric_families(m.text().decode()):
            for s in family.samples:
                if s.name == "magickbox_received_images_total":
                    return s.value
        return 0.0

    assert (images(m1), images(m2)) == (1.0, 0.0)


def test_alive_while_rounds_go_on() -> None:
    rounds: list[int] = []
    beat = Heartbeat({"x": lambda: rounds.append(1) or PartState(OK)}, {}, EventBus(), 0.02)
    assert beat.alive()  # not started (no heartbeat configured): nothing to vouch against
    beat.start()
    deadline = time.monotonic() + 10
    while len(rounds) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(rounds) >= 2 and beat.alive()
    beat.stop()
    assert not beat.alive()  # its thread ended: the systemd watchdog is no longer fed


def test_the_disk_is_down_while_below_the_reserve_and_told_as_low(tmp_path: Path) -> None:
    def status(low: bool) -> DiskStatus:
        return DiskStatus(str(tmp_path), 100, 95, 5, 10, low)

    below = disk(tmp_path, 0.0, lambda: status(True))
    assert below.down and "below the reserve of 10" in below.detail
    assert disk(tmp_path, 0.0, lambda: status(False)).state == OK
    bus = EventBus()
    lows = recorded(bus, DiskLow)
    Heartbeat({"disk": lambda: below}, {}, bus, 0).run_once()
    assert lows == [DiskLow(5, 100)]


def test_one_lost_echo_answer_is_asked_again_before_the_receiver_counts_as_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pynetdicom 3.0's requestor can lose a quick C-ECHO response (its reactor thread takes
    it): the heartbeat asks a second time, and only two lost answers in a row are "down"."""
    answers: list[PartState] = []

    def once(host: str, port: int, aet: str, timeout: float) -> PartState:
        return answers.pop(0)

    monkeypatch.setattr(heartbeat, "_echo_once", once)
    answers[:] = [PartState(DOWN, "lost"), PartState(OK, "answered")]
    assert heartbeat.echo("127.0.0.1", 104, "BOX", 1.0).state == OK and not answers
    answers[:] = [PartState(DOWN, "lost"), PartState(DOWN, "lost again")]
    assert heartbeat.echo("127.0.0.1", 104, "BOX", 1.0).detail == "lost again" and not answers
    answers[:] = [PartState(OK, "answered"), PartState(DOWN, "never asked")]
    assert heartbeat.echo("127.0.0.1", 104, "BOX", 1.0).state == OK and len(answers) == 1
