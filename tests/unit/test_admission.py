"""The admission rule: which association requests are accepted, and the reason of a refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from magickbox.buckets.registry import Bucket
from magickbox.receive.admission import (
    CALLED_NOT_RECOGNIZED,
    CALLING_NOT_RECOGNIZED,
    VERIFICATION,
    BadAllowList,
    Request,
    admit,
    parse_allow_list,
)

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
OWN = "MAGICKBOX"


def buckets(**info: dict) -> dict[str, Bucket]:
    return {name: Bucket(name, Path(f"/x/bucket{name}"), {"AETitle": name, **i})
            for name, i in info.items()}  # fmt: skip


def decide(request: Request, found: dict[str, Bucket], default: list | None = None):  # type: ignore[no-untyped-def]
    return admit(request, OWN, found.get, default or [])


def store(calling: str, called: str, address: str = "10.1.2.3") -> Request:
    return Request(calling, called, address, frozenset({CT_STORAGE}))


def test_no_allow_list_admits_anyone_to_an_enabled_bucket() -> None:
    assert decide(store("ANY", "B"), buckets(B={})).accepted


def test_an_unknown_called_title_is_refused_as_called_ae_not_recognized() -> None:
    decision = decide(store("ANY", "NOPE"), buckets(B={}))
    assert not decision.accepted
    assert decision.diagnostic == CALLED_NOT_RECOGNIZED
    assert "no enabled bucket" in decision.reason


def test_the_own_title_takes_verification_only() -> None:
    echo = Request("ANY", OWN, "10.1.2.3", frozenset({VERIFICATION}))
    assert decide(echo, {}).accepted
    decision = decide(store("ANY", OWN), {})
    assert decision.diagnostic == CALLED_NOT_RECOGNIZED
    assert CT_STORAGE in decision.reason


@pytest.mark.parametrize(
    ("calling", "address", "accepted"),
    [
        ("CT1", "10.1.2.3", True),
        ("CT22", "10.200.0.1", True),
        ("CT1", "192.168.0.1", False),  # right title, wrong network
        ("MR1", "10.1.2.3", False),  # right network, wrong title
        ("XCT1", "10.1.2.3", False),  # the whole title must match, not a part of it
        ("ct1", "10.1.2.3", False),  # AE titles are case-sensitive
        ("CT1", "::ffff:10.1.2.3", True),  # an IPv4 peer on a dual-stack socket
        ("CT1", "not-an-address", False),
    ],
)
def test_a_bucket_allow_list_matches_title_and_network(
    calling: str, address: str, accepted: bool
) -> None:
    found = buckets(B={"allowed_callers": [{"AETitle": "CT[0-9]+", "IP": "10.0.0.0/8"}]})
    decision = decide(store(calling, "B", address), found)
    assert decision.accepted is accepted
    if not accepted:
        assert decision.diagnostic == CALLING_NOT_RECOGNIZED
        assert decision.reason.startswith("calling AE title not recognized")


def test_an_entry_without_a_key_matches_anything_for_it() -> None:
    found = buckets(B={"allowed_callers": [{"IP": "10.0.0.0/8"}, {"AETitle": "PACS"}]})
    assert decide(store("WHOEVER", "B", "10.9.9.9"), found).accepted
    assert decide(store("PACS", "B", "172.16.0.1"), found).accepted
    assert not decide(store("WHOEVER", "B", "172.16.0.1"), found).accepted


def test_the_box_wide_default_applies_where_a_bucket_names_none() -> None:
    default = [{"AETitle": "PACS"}]
    found = buckets(Own={"allowed_callers": [{"AETitle": "CT1"}]}, Plain={})
    assert decide(store("PACS", "Plain"), found, default).accepted
    assert not decide(store("CT1", "Plain"), found, default).accepted
    # the bucket's own list wins over the default, both ways
    assert decide(store("CT1", "Own"), found, default).accepted
    assert not decide(store("PACS", "Own"), found, default).accepted
    # and C-ECHO to the box's own title follows the default
    echo = Request("CT1", OWN, "10.1.2.3", frozenset({VERIFICATION}))
    assert decide(echo, found, default).diagnostic == CALLING_NOT_RECOGNIZED


@pytest.mark.parametrize(
    "bad",
    [
        "CT1",  # not a list
        [{"AETitle": "CT[1"}],  # a bad regex
        [{"IP": "10.0.0.300/8"}],  # a bad network
        [{"AETitel": "CT1"}],  # a typo of a key
        [{}],
        [["CT1"]],
    ],
)
def test_an_unusable_bucket_list_admits_nobody(bad: object) -> None:
    decision = decide(store("CT1", "B"), buckets(B={"allowed_callers": bad}))
    assert not decision.accepted
    assert "unusable allow-list" in decision.reason
    with pytest.raises(BadAllowList):
        parse_allow_list(bad)


def test_parse_names_every_bad_entry() -> None:
    with pytest.raises(BadAllowList) as err:
        parse_allow_list([{"AETitle": "("}, {"AETitle": "ok"}, {"IP": "x"}], "bucket B")
    assert "bucket B[0]" in str(err.value) and "bucket B[2]" in str(err.value)
    assert "bucket B[1]" not in str(err.value)
