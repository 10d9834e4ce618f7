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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magickbox.errors import Invalid
from magickbox.names import aet_problem
from magickbox.tls import ClientFiles, client_context

REQUIRED = ("IP", "PORT", "AETitleSender", "AETitleTo")
TLS_KEYS = ("ca", "cert", "key", "check_hostname")
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
    tls: ClientFiles | None = None  # the destination's "TLS"; None: plain DICOM

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


def validate_text(text: str, base: Path | None = None) -> dict[str, Any]:
    """Parse and check a table as it is about to be saved; every problem found is reported.
    With ``base`` (the home), destinations' TLS files are loaded too. Returns the table
    as written (it is stored as written)."""
    try:
        table = json.loads(text)
    except ValueError as exc:
        raise RuleError(f"not valid JSON: {exc}") from exc
    parse_strict(table)
    problems = check_tls_files(table, base) if base is not None else []
    if problems:
        raise RuleError("; ".join(problems))
    return table  # type: ignore[no-any-return]


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
        elif k != "IP" and k in dest and (problem := aet_problem(dest[k])):
            problems.append(f"{where}.{k}: {problem}")  # pynetdicom would refuse it per send
    if "PORT" in dest and port_of(dest["PORT"], Placeholders("", 1)) is None:
        problems.append(f"{where}.PORT: must be a port number (1-65535) or $port")
    if "TLS" in dest:
        problems += check_tls(f"{where}.TLS", dest["TLS"])
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


def check_tls(where: str, tls: object) -> list[str]:
    if not isinstance(tls, dict):
        return [f'{where}: must be an object {{"ca": file, "cert": file, "key": file}}']
    problems = [f"{where}: unknown key {k!r}" for k in tls if k not in TLS_KEYS]
    for k in ("ca", "cert", "key"):
        if k in tls and not isinstance(tls[k], str):
            problems.append(f"{where}.{k}: must be a file name (a string)")
    if bool(tls.get("cert")) != bool(tls.get("key")):
        problems.append(f'{where}: "cert" and "key" go together')
    return problems


def tls_files(raw: object) -> ClientFiles | None:
    """A destination's "TLS" object as files (None: plain DICOM); checked by _check_tls."""
    if not isinstance(raw, dict):
        return None
    return ClientFiles(
        ca=str(raw.get("ca") or ""),
        cert=str(raw.get("cert") or ""),
        key=str(raw.get("key") or ""),
        check_hostname=_flag(raw.get("check_hostname", True)),
    )


def check_tls_files(table: object, base: Path) -> list[str]:
    """Every destination's TLS files loaded as a send would (missing, unreadable, not PEM,
    a key not matching its certificate): relative names are in ``base``, the home."""
    problems = []
    for where, dest in _destinations(table):
        files = tls_files(dest.get("TLS"))
        if files is None:
            continue
        try:
            client_context(files, base)
        except Invalid as exc:
            problems.append(f"{where}.TLS: {exc}")
    return problems


def _destinations(table: object) -> Iterator[tuple[str, dict[str, Any]]]:
    """(place, destination) of every destination object of a checked table."""
    rules = table.get("routing", []) if isinstance(table, dict) else []
    for i, rule in enumerate(rules):
        for j, entry in enumerate(rule.get("send", [])):
            for key, dest in entry.items():
                yield f"routing[{i}].send[{j}][{key!r}]", dest


def _check_regex(where: str, pattern: object) -> list[str]:
    if not isinstance(pattern, str):
        return [f"{where}: must be a string (a regular expression)"]
    try:
        re.compile(pattern)
    except re.error as exc:
        return [f"{where}: bad regular expression {pattern!r}: {exc}"]
    return []


# -- typed rules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """One ``"<regex>": destination`` of a rule's send object, as written (placeholders and
    all: they are resolved when a job is routed). ``problem`` says why it cannot be used
    (a lenient read keeps it, so the routing log can say so when its key matches)."""

    key: str
    ip: str = ""
    port: str = ""
    calling_aet: str = ""
    called_aet: str = ""
    which: list[dict[str, str]] = field(default_factory=list)
    error_image: bool = False
    tls: ClientFiles | None = None
    keep_going: bool = False  # ``break: 1``: later keys of the same object are tried too
    problem: str = ""


@dataclass(frozen=True)
class Rule:
    index: int
    name: str = ""
    enabled: bool = True
    called_aet: str | None = None  # AETitleIn: a regex searched in the called AE title
    caller_aet: str | None = None  # AETitleFrom: ... in the calling AE title
    directory: str = "OUTPUT"
    sends: list[list[Destination]] = field(default_factory=list)  # objects, keys in order
    stop: bool = False  # ``break``: once this rule matched, later rules are not tried
    problem: str = ""  # why the rule cannot route at all (noted when it applies)
    unreadable: bool = False  # not an object: skipped, and noted for every job


@dataclass(frozen=True)
class Table:
    rules: list[Rule] = field(default_factory=list)


def parse_strict(raw: object) -> Table:
    """The table as it is about to be saved: every problem, named by place, in one RuleError."""
    problems = check_table(raw)
    if problems:
        raise RuleError("; ".join(problems))
    return parse(raw)


def parse(raw: object) -> Table:
    """The table as read from disk, leniently as the original did: what cannot be used is
    kept with its problem, to be skipped (and noted) when a job is routed."""
    items = raw.get("routing", []) if isinstance(raw, dict) else []
    if not isinstance(items, list):
        return Table()
    return Table([_parse_rule(i, rule) for i, rule in enumerate(items)])


def read_table(path: Path) -> Table:
    """The table in ``path``, parsed leniently (RuleError only if it is no table at all)."""
    return parse(load_table(path))


def _parse_rule(index: int, rule: object) -> Rule:
    if not isinstance(rule, dict):
        return Rule(index, unreadable=True)
    directory = str(rule.get("RouteDirectory", "OUTPUT"))
    sends = rule.get("send")
    if not isinstance(sends, list):
        sends = []  # the check on save refuses this; an old table's rule just sends nothing
    return Rule(
        index=index,
        name=str(rule.get("name", "")),
        enabled=_enabled(rule),
        called_aet=str(rule["AETitleIn"]) if "AETitleIn" in rule else None,
        caller_aet=str(rule["AETitleFrom"]) if "AETitleFrom" in rule else None,
        directory=directory,
        sends=[
            [_parse_destination(str(k), d) for k, d in entry.items()]
            for entry in sends
            if isinstance(entry, dict)
        ],
        stop=_flag(rule.get("break", 0)),
        problem="" if DIR_RE.match(directory) else f"RouteDirectory {directory!r} refused",
    )


def _parse_destination(key: str, dest: object) -> Destination:
    if not isinstance(dest, dict) or any(k not in dest for k in REQUIRED):
        return Destination(key, problem=f"destination lacks one of {', '.join(REQUIRED)}")
    which = dest.get("which") or []
    return Destination(
        key=key,
        ip=str(dest["IP"]),
        port=str(dest["PORT"]),
        calling_aet=str(dest["AETitleSender"]),
        called_aet=str(dest["AETitleTo"]),
        which=which if isinstance(which, list) else [],
        error_image=_flag(dest.get("sendErrorAsDcm", 0)),
        tls=tls_files(dest.get("TLS")),
        keep_going=_flag(dest.get("break", 0)),
    )


# -- evaluating ----------------------------------------------------------------------------


def evaluate(table: Table, job: JobFacts, ph: Placeholders) -> tuple[list[Route], list[str]]:
    """The sends a finished job makes, and notes on why (for the routing log)."""
    routes: list[Route] = []
    notes: list[str] = []
    for rule in table.rules:
        if rule.unreadable:
            notes.append(f"rule #{rule.index}: not an object, skipped")
            continue
        if not rule.enabled:
            continue
        called, caller = rule.called_aet, rule.caller_aet
        if not (_matches(called, job.called_aet) and _matches(caller, job.caller_aet)):
            continue
        found = _rule_routes(rule, job.success, ph, notes)
        notes.append(f"rule #{rule.index} {rule.name!r} matched: {len(found)} destination(s)")
        routes += found
        if rule.stop:
            notes.append(f"rule #{rule.index} {rule.name!r} says break: later rules not tried")
            break
    return routes, notes


def _rule_routes(rule: Rule, success: str, ph: Placeholders, notes: list[str]) -> list[Route]:
    if rule.problem:
        notes.append(f"rule #{rule.index}: {rule.problem}")
        return []
    routes = []
    for entry in rule.sends:
        for dest in entry:
            if not _search(dest.key, success):
                continue
            route = _route(rule, dest, ph, notes)
            if route is None:
                continue  # as the original: a broken destination is skipped, later keys tried
            routes.append(route)
            if not dest.keep_going:
                break  # the original's quirk: break 0 (the default) ends this object's keys
    return routes


def _route(rule: Rule, dest: Destination, ph: Placeholders, notes: list[str]) -> Route | None:
    where = f"rule #{rule.index} key {dest.key!r}"
    if dest.problem:
        notes.append(f"{where}: {dest.problem}; skipped")
        return None
    ip = resolve(dest.ip, ph)
    port = port_of(dest.port, ph)
    if not ip or port is None:
        notes.append(f"{where}: no usable IP/PORT ({dest.ip!r}, {dest.port!r}); skipped")
        return None
    return Route(
        rule_index=rule.index,
        rule_name=rule.name,
        key=dest.key,
        directory=rule.directory,
        ip=ip,
        port=port,
        calling_aet=resolve(dest.calling_aet, ph),
        called_aet=resolve(dest.called_aet, ph),
        which=dest.which,
        error_image=dest.error_image,
        tls=dest.tls,
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


def _matches(pattern: str | None, value: str) -> bool:
    return pattern is None or _search(pattern, value)


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
