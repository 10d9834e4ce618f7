"""The routing table: parse it, check it, and decide where a finished job's files go.

The table is the original's ``routing.json``: ``{"routing": [rule, ...]}``. Its semantics
are kept as the original applied them, quirks included, so existing tables route the same:

- a rule applies when ``AETitleIn`` (called AE) and ``AETitleFrom`` (calling AE) both
  *search*-match, case-insensitively; a missing one matches anything; ``status: 0`` or
  ``enabled: "F"`` switches the rule off;
- ``send`` is a list of objects; in each, the keys are regexes searched in proc.json's
  ``success`` value, tried in order; a matching key's destination is sent to, and unless
  that destination says ``break: 1`` the remaining keys *of that object* are skipped;
- the rule's ``RouteDirectory`` (default ``OUTPUT``) is the job folder that is sent;
- a rule's ``break`` stops the evaluation of later rules (once the rule matched).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED = ("IP", "PORT", "AETitleSender", "AETitleTo")
TAG_RE = re.compile(r"^\(?([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)?$")
DIR_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
NO_PROC_JSON = "couldNotReadProcJSON"
SENDER = "$sender"


class RuleError(ValueError):
    """A routing table that cannot be used; the message names the exact place."""


@dataclass(frozen=True)
class Placeholders:
    """What ``$me``, ``$port`` and ``$sender`` stand for when a job is routed."""

    me: str
    port: int
    sender_ip: str = ""


@dataclass(frozen=True)
class JobFacts:
    called_aet: str
    caller_aet: str
    caller_ip: str
    success: str  # proc.json's value, or couldNotReadProcJSON


@dataclass(frozen=True)
class Route:
    """One planned send: a destination of a matching rule for one job."""

    rule_index: int
    rule_name: str
    key: str
    directory: str
    ip: str
    port: int
    calling_aet: str
    called_aet: str
    which: list[dict[str, str]] = field(default_factory=list)
    error_image: bool = False

    @property
    def destination(self) -> str:
        return f"{self.called_aet}@{self.ip}:{self.port}"


# -- reading and checking ------------------------------------------------------------------


def load_table(path: Path) -> dict[str, Any]:
    """The table in ``path``; a missing file means no rules. Raises RuleError if unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {"routing": []}
    except OSError as exc:
        raise RuleError(f"cannot read {path.name}: {exc}") from exc
    try:
        table = json.loads(text)
    except ValueError as exc:
        raise RuleError(f"{path.name} is not valid JSON: {exc}") from exc
    if not isinstance(table, dict) or not isinstance(table.get("routing", []), list):
        raise RuleError(f'{path.name}: expected an object {{"routing": [...]}}')
    return table


def validate_text(text: str) -> dict[str, Any]:
    """Parse and check a table as it is about to be saved; every problem found is reported."""
    try:
        table = json.loads(text)
    except ValueError as exc:
        raise RuleError(f"not valid JSON: {exc}") from exc
    problems = check_table(table)
    if problems:
        raise RuleError("; ".join(problems))
    return table


def check_table(table: object) -> list[str]:
    if not isinstance(table, dict) or "routing" not in table:
        return ['the table must be an object with a "routing" list']
    rules = table["routing"]
    if not isinstance(rules, list):
        return ['"routing" must be a list of rules']
    problems: list[str] = []
    for i, rule in enumerate(rules):
        problems += _check_rule(f"routing[{i}]", rule)
    return problems


def _check_rule(where: str, rule: object) -> list[str]:
    if not isinstance(rule, dict):
        return [f"{where}: a rule must be an object"]
    problems = []
    for name in ("AETitleIn", "AETitleFrom"):
        if name in rule:
            problems += _check_regex(f"{where}.{name}", rule[name])
    directory = rule.get("RouteDirectory", "OUTPUT")
    if not isinstance(directory, str) or not DIR_RE.match(directory):
        problems.append(f"{where}.RouteDirectory: must be a folder name of the job such as INPUT")
    sends = rule.get("send")
    if not isinstance(sends, list):
        return [*problems, f'{where}.send: missing or not a list of {{"<regex>": destination}}']
    for j, entry in enumerate(sends):
        if not isinstance(entry, dict):
            problems.append(f"{where}.send[{j}]: must be an object")
            continue
        for key, dest in entry.items():
            place = f"{where}.send[{j}][{key!r}]"
            problems += _check_regex(place, key) + _check_destination(place, dest)
    return problems


def _check_destination(where: str, dest: object) -> list[str]:
    if not isinstance(dest, dict):
        return [f"{where}: the destination must be an object"]
    problems = [f"{where}: missing key {k}" for k in REQUIRED if k not in dest]
    for k in ("IP", "AETitleSender", "AETitleTo"):
        if k in dest and (not isinstance(dest[k], str) or not dest[k].strip()):
            problems.append(f"{where}.{k}: must be a non-empty string")
    if "PORT" in dest and port_of(dest["PORT"], Placeholders("", 1)) is None:
        problems.append(f"{where}.PORT: must be a port number (1-65535) or $port")
    which = dest.get("which", [])
    if which in ("", None):
        which = []
    if not isinstance(which, list):
        return [*problems, f'{where}.which: must be a list of {{"gggg,eeee": "<regex>"}}']
    for n, entry in enumerate(which):
        if not isinstance(entry, dict) or not entry:
            problems.append(f"{where}.which[{n}]: must be a non-empty object")
            continue
        for tag, regex in entry.items():
            if not TAG_RE.match(str(tag)):
                problems.append(f'{where}.which[{n}]: tag {tag!r} is not written as "0008,103e"')
            problems += _check_regex(f"{where}.which[{n}][{tag!r}]", regex)
    return problems


def _check_regex(where: str, pattern: object) -> list[str]:
    if not isinstance(pattern, str):
        return [f"{where}: must be a string (a regular expression)"]
    try:
        re.compile(pattern)
    except re.error as exc:
        return [f"{where}: bad regular expression {pattern!r}: {exc}"]
    return []


# -- evaluating ----------------------------------------------------------------------------


def evaluate(
    table: dict[str, Any], job: JobFacts, ph: Placeholders
) -> tuple[list[Route], list[str]]:
    """The sends a finished job makes, and notes on why (for the routing log)."""
    routes: list[Route] = []
    notes: list[str] = []
    for index, rule in enumerate(table.get("routing", [])):
        if not isinstance(rule, dict):
            notes.append(f"rule #{index}: not an object, skipped")
            continue
        name = str(rule.get("name", ""))
        if not _enabled(rule):
            continue
        if not (
            _matches(rule, "AETitleIn", job.called_aet)
            and _matches(rule, "AETitleFrom", job.caller_aet)
        ):
            continue
        found = _rule_routes(index, name, rule, job.success, ph, notes)
        notes.append(f"rule #{index} {name!r} matched: {len(found)} destination(s)")
        routes += found
        if _flag(rule.get("break", 0)):
            notes.append(f"rule #{index} {name!r} says break: later rules not tried")
            break
    return routes, notes


def _rule_routes(
    index: int, name: str, rule: dict[str, Any], success: str, ph: Placeholders, notes: list[str]
) -> list[Route]:
    directory = str(rule.get("RouteDirectory", "OUTPUT"))
    if not DIR_RE.match(directory):
        notes.append(f"rule #{index}: RouteDirectory {directory!r} refused")
        return []
    routes = []
    for entry in rule.get("send", []) if isinstance(rule.get("send"), list) else []:
        if not isinstance(entry, dict):
            continue
        for key, dest in entry.items():
            if not _search(key, success):
                continue
            route = _route(index, name, key, directory, dest, success, ph, notes)
            if route is None:
                continue  # as the original: a broken destination is skipped, later keys tried
            routes.append(route)
            if not _flag(dest.get("break", 0)):
                break  # the original's quirk: break 0 (the default) ends this object's keys
    return routes


def _route(
    index: int,
    name: str,
    key: str,
    directory: str,
    dest: object,
    success: str,
    ph: Placeholders,
    notes: list[str],
) -> Route | None:
    where = f"rule #{index} key {key!r}"
    if not isinstance(dest, dict) or any(k not in dest for k in REQUIRED):
        notes.append(f"{where}: destination lacks one of {', '.join(REQUIRED)}; skipped")
        return None
    ip = resolve(dest["IP"], ph)
    port = port_of(dest["PORT"], ph)
    if not ip or port is None:
        notes.append(f"{where}: no usable IP/PORT ({dest['IP']!r}, {dest['PORT']!r}); skipped")
        return None
    which = dest.get("which") or []
    return Route(
        rule_index=index,
        rule_name=name,
        key=key,
        directory=directory,
        ip=ip,
        port=port,
        calling_aet=resolve(dest["AETitleSender"], ph),
        called_aet=resolve(dest["AETitleTo"], ph),
        which=which if isinstance(which, list) else [],
        error_image=_flag(dest.get("sendErrorAsDcm", 0)),
    )


def _enabled(rule: dict[str, Any]) -> bool:
    if "status" in rule and not _flag(rule["status"]):
        return False
    return not ("enabled" in rule and not _flag(rule["enabled"]))


def _flag(value: object) -> bool:
    """The table's switches: 1/0, true/false, "T"/"F", "1"/"0", "yes"/"no"."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "f", "false", "no", "n", "off")
    return bool(value)


def _matches(rule: dict[str, Any], name: str, value: str) -> bool:
    return name not in rule or _search(rule[name], value)


def _search(pattern: object, value: str) -> bool:
    try:
        return re.search(str(pattern), value, re.IGNORECASE) is not None
    except re.error:
        return False  # a bad pattern of an unchecked (old) table never matches


def resolve(value: object, ph: Placeholders) -> str:
    text = str(value).strip()
    if text == "$me":
        return ph.me
    if text == "$port":
        return str(ph.port)
    if text == SENDER:
        return ph.sender_ip
    return text


def port_of(value: object, ph: Placeholders) -> int | None:
    text = resolve(value, ph)
    try:
        port = int(text)
    except ValueError:
        return None
    return port if 0 < port < 65536 else None


# -- which: tag filters ----------------------------------------------------------------------


def which_tags(which: list[dict[str, str]]) -> list[int]:
    """The tags a filter reads, as ints (0x0008103E), for reading only those from a file."""
    tags = []
    for entry in which:
        for tag in entry:
            m = TAG_RE.match(str(tag))
            if m:
                tags.append(int(m.group(1) + m.group(2), 16))
    return tags


def which_keeps(which: list[dict[str, str]], values: dict[int, str]) -> bool:
    """True if every tag of at least one object matches (case-insensitive search).

    ``values`` holds the file's values as text (a missing tag is the empty string), as
    dcmdump printed them for the original.
    """
    if not which:
        return True
    for entry in which:
        if all(_entry_matches(tag, regex, values) for tag, regex in entry.items()):
            return True
    return False


def _entry_matches(tag: str, regex: str, values: dict[int, str]) -> bool:
    m = TAG_RE.match(str(tag))
    if not m:
        return True  # the original ignored a tag it could not find
    return _search(regex, values.get(int(m.group(1) + m.group(2), 16), ""))
