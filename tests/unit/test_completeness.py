"""The completeness rule (receive/completeness.py) on its own: info.json keys and verdicts."""

from __future__ import annotations

import logging

import pytest

from magickbox.receive.completeness import DEFAULT_WAIT_SECONDS, SendPolicy, decide, policy_of

NEEDS = SendPolicy(quiet=1.0, requires=("T1", "DWI"), wait=5.0)


def test_a_bucket_without_keys_has_the_box_quiet_window_and_one_job_per_study() -> None:
    policy = policy_of("B", {"AETitle": "B"})
    assert policy == SendPolicy(quiet=None, grouping="study", requires=(), merge=0.0)
    assert policy.wait == DEFAULT_WAIT_SECONDS and not policy.per_series


def test_info_json_keys_are_read() -> None:
    info = {"quiet_seconds": 2, "grouping": "series", "requires": ["T1", "DWI"],
            "wait_seconds": "30", "on_missing": "run", "merge_seconds": 90}  # fmt: skip
    assert policy_of("B", info) == SendPolicy(2.0, "series", ("T1", "DWI"), 30.0, "run", 90.0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("quiet_seconds", -1),
        ("quiet_seconds", "soon"),
        ("grouping", "patient"),
        ("requires", "T1"),
        ("requires", ["T1", 3]),
        ("on_missing", "ignore"),
        ("merge_seconds", float("nan")),
        ("wait_seconds", [1]),
    ],
)
def test_a_bad_value_is_named_in_the_log_and_the_default_used(
    key: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        policy = policy_of("Bk", {key: value})
    assert policy == SendPolicy()
    assert "bucket Bk" in caplog.text and repr(key) in caplog.text


def test_decide_waits_for_quiet_then_for_the_required_types() -> None:
    assert decide(NEEDS, 0.4, None).left == pytest.approx(0.6)
    waiting = decide(NEEDS, 2.0, {"MR", "T1"})
    assert not waiting.ready and waiting.missing == ("DWI",) and waiting.left == pytest.approx(3.0)
    assert decide(NEEDS, 2.0, {"T1", "DWI", "MR"}).ready
    late = decide(NEEDS, 5.0, {"T1"})
    assert late.ready and late.fail and late.reason == "missing series: DWI"
    none = decide(NEEDS, 5.0, set())
    assert none.reason == "missing series: T1, DWI"


def test_on_missing_run_is_ready_without_failing() -> None:
    run = SendPolicy(quiet=0.0, requires=("DWI",), wait=1.0, on_missing="run")
    verdict = decide(run, 1.0, {"T1"})
    assert verdict.ready and not verdict.fail and verdict.missing == ("DWI",)


def test_without_requires_a_quiet_send_is_ready() -> None:
    verdict = decide(SendPolicy(quiet=1.0), 1.0, None)
    assert verdict.ready and not verdict.missing and verdict.reason == ""
