"""Who may associate: the one rule deciding whether an association request is accepted.

A request names a called AE title (a bucket, or the box's own title for C-ECHO) and comes
from a calling AE title at an address. It is accepted when the called title is an
enabled bucket (or the own title, proposing Verification only) and the caller is on the
allow-list: the bucket's info.json ``allowed_callers``, else the box-wide
``dicom_allowed_callers``; an empty list lets anyone in (the original's behaviour).

An allow-list entry is ``{"AETitle": "<regex>", "IP": "<CIDR>"}``; a caller matches an
entry when its whole AE title matches the regex (case-sensitive, as AE titles are) and its
address is in the network; a key left out matches anything. A list that cannot be read
(a bad regex, a bad network) lets nobody in: a typo must not open a bucket to everyone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from magickbox.buckets.registry import Bucket

VERIFICATION = "1.2.840.10008.1.1"
# A-ASSOCIATE-RJ reason/diag values (PS3.8 9.3.4), the source being the service user.
CALLING_NOT_RECOGNIZED = 0x03
CALLED_NOT_RECOGNIZED = 0x07
NO_REASON = 0x01


@dataclass(frozen=True)
class Request:
    """What is known of an association request when it is decided."""

    calling_aet: str
    called_aet: str
    address: str
    contexts: frozenset[str] = frozenset()  # proposed abstract syntaxes


@dataclass(frozen=True)
class Decision:
    reason: str = ""  # empty: accepted
    diagnostic: int = NO_REASON  # the A-ASSOCIATE-RJ reason sent when refused

    @property
    def accepted(self) -> bool:
        return not self.reason


ACCEPT = Decision()


@dataclass(frozen=True)
class Caller:
    """One allow-list entry, checked."""

    aetitle: re.Pattern[str] | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None

    def matches(self, calling_aet: str, address: str) -> bool:
        if self.aetitle is not None and not self.aetitle.fullmatch(calling_aet):
            return False
        return self.network is None or _in_network(address, self.network)


def _in_network(address: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d
    return ip.version == network.version and ip in network


class BadAllowList(ValueError):
    """An allow-list that cannot be used; the message names the entry."""


def parse_allow_list(raw: object, where: str = "allowed_callers") -> list[Caller]:
    """The checked entries of an allow-list; BadAllowList names every problem."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadAllowList(f'{where}: must be a list of {{"AETitle": regex, "IP": CIDR}}')
    callers, problems = [], []
    for i, entry in enumerate(raw):
        try:
            callers.append(_parse_entry(entry))
        except BadAllowList as exc:
            problems.append(f"{where}[{i}]: {exc}")
    if problems:
        raise BadAllowList("; ".join(problems))
    return callers


def _parse_entry(entry: object) -> Caller:
    if not isinstance(entry, dict) or not entry:
        raise BadAllowList('must be an object with "AETitle" and/or "IP"')
    unknown = set(entry) - {"AETitle", "IP"}
    if unknown:
        raise BadAllowList(f"unknown keys {sorted(unknown)} (only AETitle and IP)")
    return Caller(_regex(entry.get("AETitle")), _network(entry.get("IP")))


def _regex(value: object) -> re.Pattern[str] | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise BadAllowList("AETitle must be a non-empty regular expression")
    try:
        return re.compile(value)
    except re.error as exc:
        raise BadAllowList(f"AETitle {value!r} is no regular expression: {exc}") from exc


def _network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadAllowList("IP must be an address or a network such as 10.0.0.0/8")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise BadAllowList(f"IP {value!r}: {exc}") from exc


# -- the decision ------------------------------------------------------------------------


def admit(
    request: Request,
    own_aet: str,
    bucket_of: Callable[[str], Bucket | None],
    default_callers: list[dict[str, Any]],
) -> Decision:
    """Accept ``request`` or say why not (the one place of this rule).

    ``bucket_of`` finds the enabled bucket of a called AE title; ``default_callers`` is
    the box-wide allow-list (the setting), used where a bucket names none.
    """
    if request.called_aet == own_aet:
        others = sorted(request.contexts - {VERIFICATION})
        if others:  # storescu would otherwise exit 0 over images that were all refused
            reason = f"the box's own AE title names no bucket: Verification only, not {others}"
            return Decision(reason, CALLED_NOT_RECOGNIZED)
        return _allowed(request, default_callers, "dicom_allowed_callers")
    bucket = bucket_of(request.called_aet)
    if bucket is None:
        return Decision("the called AE title is no enabled bucket", CALLED_NOT_RECOGNIZED)
    if "allowed_callers" in bucket.info:
        return _allowed(request, bucket.info["allowed_callers"], f"bucket {bucket.aetitle}")
    return _allowed(request, default_callers, "dicom_allowed_callers")


def _allowed(request: Request, raw: object, whose: str) -> Decision:
    try:
        callers = parse_allow_list(raw, whose)
    except BadAllowList as exc:
        return Decision(f"unusable allow-list, nobody admitted: {exc}", CALLING_NOT_RECOGNIZED)
    if not callers or any(c.matches(request.calling_aet, request.address) for c in callers):
        return ACCEPT
    return Decision(
        f"calling AE title not recognized: {request.calling_aet!r} at {request.address} "
        f"is not on the allow-list of {whose}",
        CALLING_NOT_RECOGNIZED,
    )
