"""Series classification with the original MagickBox's ``classifyRules.json`` format.

A rule file is a JSON list of types::

    {"type": "T1", "id": "T1", "description": "...", "check": "SeriesLevel"?,
     "rules": [{"tag": ["0x0018", "0x0080"], "value": 800, "operator": "<"},
               {"rule": "MR"}]}

All rules of a type must hold. ``{"rule": "<id>"}`` reuses the rules of the type with
that id. A tag is ``[group, element]`` (hex strings), ``[group, element, index]`` for one
value of a multi-valued tag, or ``["NumFiles"]`` / ``["ClassifyType"]`` for the
series-level keys. ``negate: "yes"`` inverts a rule's result.

Types without ``check`` are evaluated first, in file order, each seeing the types
matched before it in ``ClassifyType``; then the ``check: "SeriesLevel"`` types run on
the summary whose ``ClassifyType`` holds every earlier match (so "oblique" can say
"none of axial/coronal/sagittal").
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydicom.datadict import keyword_for_tag

from magickbox.errors import Invalid

log = logging.getLogger(__name__)

OPERATORS = ("regexp", "==", "!=", "<", ">", "exist", "notexist", "contains", "approx")
SERIES_KEYS = ("NumFiles", "ClassifyType")
SERIES_LEVEL = "SeriesLevel"
#: approx tolerance when a rule gives no approxLevel (the original's "small").
DEFAULT_APPROX_LEVEL = 1e-4

_HEX4 = re.compile(r"^(0x)?[0-9a-fA-F]{4}$")


class RulesError(Invalid):
    """A rule file has problems; ``problems`` names each by its place."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


# ------------------------------------------------------------------------- model


@dataclass(frozen=True)
class TagRef:
    """Where a rule looks: a DICOM tag (optionally one value of it) or a series key."""

    key: str  # "NumFiles", "ClassifyType", or "GGGGEEEE"
    index: int | None = None

    @property
    def group_element(self) -> int | None:
        return None if self.key in SERIES_KEYS else int(self.key, 16)

    @property
    def keyword(self) -> str:
        tag = self.group_element
        return self.key if tag is None else (keyword_for_tag(tag) or self.key)

    def __str__(self) -> str:
        name = self.keyword if self.group_element is None else f"({self.key[:4]},{self.key[4:]})"
        if self.group_element is not None and self.keyword != self.key:
            name += f" {self.keyword}"
        return name if self.index is None else f"{name}[{self.index}]"


@dataclass(frozen=True)
class Rule:
    tag: TagRef
    value: Any = None
    operator: str = "regexp"
    negate: bool = False
    approx_level: float = DEFAULT_APPROX_LEVEL


@dataclass(frozen=True)
class RuleRef:
    """``{"rule": "<id>"}``: all rules of the type with that id."""

    rule: str


@dataclass
class TypeDef:
    type: str
    rules: list[Rule | RuleRef]
    id: str | None = None
    description: str = ""
    check: str | None = None

    @property
    def series_level(self) -> bool:
        return self.check == SERIES_LEVEL


@dataclass
class RuleSet:
    types: list[TypeDef]
    warnings: list[str] = field(default_factory=list)

    def by_id(self) -> dict[str, TypeDef]:
        return {t.id: t for t in self.types if t.id}


# ------------------------------------------------------------------------- parse


def _parse_hex(part: Any) -> str | None:
    if isinstance(part, int) and 0 <= part <= 0xFFFF:
        return f"{part:04X}"
    if isinstance(part, str) and _HEX4.match(part):
        return part[-4:].upper()
    return None


def _parse_tag(raw: Any, where: str, problems: list[str]) -> TagRef | None:
    if not isinstance(raw, list) or not 1 <= len(raw) <= 3:
        problems.append(f"{where}: expected a list of 1 to 3 items, got {raw!r}")
        return None
    if len(raw) == 1:
        if raw[0] in SERIES_KEYS:
            return TagRef(raw[0])
        problems.append(f"{where}: unknown series key {raw[0]!r} (use NumFiles or ClassifyType)")
        return None
    group, element = _parse_hex(raw[0]), _parse_hex(raw[1])
    if group is None or element is None:
        problems.append(f"{where}: group and element must be hex like '0x0008', got {raw!r}")
        return None
    index = raw[2] if len(raw) == 3 else None
    if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
        problems.append(f"{where}[2]: index must be a whole number >= 0, got {index!r}")
        return None
    return TagRef(group + element, index)


def _parse_value(operator: str, value: Any, where: str, problems: list[str]) -> None:
    """Check that a rule's value fits its operator (the operator itself is valid)."""
    if operator in ("exist", "notexist"):
        return
    if value is None:
        problems.append(f"{where}.value: operator {operator!r} needs a value")
    elif operator in ("<", ">") and _number(value) is None:
        problems.append(f"{where}.value: operator {operator!r} needs a number, got {value!r}")
    elif operator == "approx" and _numbers(value) is None:
        problems.append(f"{where}.value: approx needs a number or list of numbers, got {value!r}")
    elif operator == "regexp":
        try:
            re.compile(str(value))
        except re.error as exc:
            problems.append(f"{where}.value: bad regular expression {value!r}: {exc}")


def _parse_rule(raw: Any, where: str, problems: list[str]) -> Rule | RuleRef | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected an object, got {raw!r}")
        return None
    if "rule" in raw:
        if not isinstance(raw["rule"], str) or not raw["rule"]:
            problems.append(f"{where}.rule: expected a type id, got {raw['rule']!r}")
            return None
        return RuleRef(raw["rule"])
    before = len(problems)
    tag = _parse_tag(raw.get("tag"), f"{where}.tag", problems) if "tag" in raw else None
    if "tag" not in raw:
        problems.append(f"{where}: needs 'tag' or 'rule'")
    operator = raw.get("operator", "regexp")
    if operator not in OPERATORS:
        problems.append(f"{where}.operator: unknown operator {operator!r}")
    else:
        _parse_value(operator, raw.get("value"), where, problems)
    negate = raw.get("negate", "no")
    if negate not in ("yes", "no", True, False):
        problems.append(f"{where}.negate: expected 'yes' or 'no', got {negate!r}")
    level = _number(raw.get("approxLevel", DEFAULT_APPROX_LEVEL))
    if level is None:
        problems.append(f"{where}.approxLevel: expected a number, got {raw['approxLevel']!r}")
    if len(problems) > before or tag is None or level is None:
        return None
    return Rule(tag, raw.get("value"), operator, negate in ("yes", True), level)


def _parse_type(raw: Any, where: str, problems: list[str]) -> TypeDef | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected an object, got {raw!r}")
        return None
    before = len(problems)
    name = raw.get("type")
    if not isinstance(name, str) or not name:
        problems.append(f"{where}.type: expected a name, got {name!r}")
    type_id = raw.get("id")
    if type_id is not None and not isinstance(type_id, str):
        problems.append(f"{where}.id: expected a string, got {type_id!r}")
    check = raw.get("check")
    if check not in (None, SERIES_LEVEL):
        problems.append(f"{where}.check: unknown check {check!r} (only {SERIES_LEVEL!r})")
    raw_rules = raw.get("rules")
    rules: list[Rule | RuleRef] = []
    if not isinstance(raw_rules, list) or not raw_rules:
        problems.append(f"{where}.rules: expected a non-empty list")
    else:
        for i, r in enumerate(raw_rules):
            rule = _parse_rule(r, f"{where}.rules[{i}]", problems)
            if rule is not None:
                rules.append(rule)
    if len(problems) > before:
        return None
    return TypeDef(str(name), rules, type_id, str(raw.get("description", "")), check)


def _check_references(types: list[tuple[int, TypeDef]], problems: list[str]) -> set[int]:
    """Name duplicate ids, unknown and circular ``{"rule": id}``; return the bad positions."""
    ids: dict[str, int] = {}
    bad: set[int] = set()
    for pos, t in types:
        if t.id is None:
            continue
        if t.id in ids:
            problems.append(f"[{pos}].id: duplicate id {t.id!r} (also [{ids[t.id]}])")
            bad.add(pos)
        else:
            ids[t.id] = pos
    by_id = {type_id: t for pos, t in types if (type_id := t.id) and ids[type_id] == pos}
    for pos, t in types:
        for i, r in enumerate(t.rules):
            if not isinstance(r, RuleRef):
                continue
            if r.rule not in by_id:
                problems.append(f"[{pos}].rules[{i}].rule: unknown id {r.rule!r}")
                bad.add(pos)
            elif _cycles(r.rule, by_id, {t.id} if t.id else set()):
                problems.append(
                    f"[{pos}].rules[{i}].rule: {r.rule!r} leads back to this type (a cycle)"
                )
                bad.add(pos)
    return bad


def _cycles(type_id: str, by_id: Mapping[str, TypeDef], seen: set[str]) -> bool:
    if type_id in seen:
        return True
    target = by_id.get(type_id)
    if target is None:
        return False
    refs = [r.rule for r in target.rules if isinstance(r, RuleRef)]
    return any(_cycles(ref, by_id, seen | {type_id}) for ref in refs)


def parse_rules(data: Any, *, strict: bool = True) -> RuleSet:
    """Parse the JSON value of a rule file.

    Strict: raise :class:`RulesError` naming every problem by its place
    (``[3].rules[1].operator: unknown operator 'lt'``). Lenient: drop each bad type
    (a type with a rule dropped would match too much) and keep the problems as warnings.
    """
    if not isinstance(data, list):
        raise RulesError([f"rules: expected a list of types, got {type(data).__name__}"])
    problems: list[str] = []
    parsed: list[tuple[int, TypeDef]] = []
    for pos, raw in enumerate(data):
        t = _parse_type(raw, f"[{pos}]", problems)
        if t is not None:
            parsed.append((pos, t))
    bad = _check_references(parsed, problems)
    if strict and problems:
        raise RulesError(problems)
    for p in problems:
        log.warning("classify rules: %s (type skipped)", p)
    types = [t for pos, t in parsed if pos not in bad]
    if bad:  # a type reusing a dropped type cannot be evaluated either
        types = _drop_dangling(types)
    return RuleSet(types, problems)


def _drop_dangling(types: list[TypeDef]) -> list[TypeDef]:
    while True:
        ids = {t.id for t in types if t.id}
        keep = [t for t in types if all(r.rule in ids for r in t.rules if isinstance(r, RuleRef))]
        if len(keep) == len(types):
            return keep
        types = keep


def load_rules(path: Path | str | None = None, *, strict: bool = True) -> RuleSet:
    """Load a rule file; without a path, the default set shipped with MagickBox."""
    if path is None:
        text = resources.files("magickbox.study").joinpath("classifyRules.json").read_text()
    else:
        text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RulesError([f"rules: not JSON: {exc}"]) from exc
    return parse_rules(data, strict=strict)


# ---------------------------------------------------------------------- evaluate


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _numbers(value: Any) -> list[float] | None:
    items = list(value) if isinstance(value, list | tuple) else [value]
    numbers = [_number(v) for v in items]
    return None if not numbers or None in numbers else [n for n in numbers if n is not None]


def _as_text(value: Any) -> str:
    # Multi-valued tags match as DICOM writes them: values joined by backslashes.
    if isinstance(value, list | tuple):
        return "\\".join(_as_text(v) for v in value)
    # A DS of "500" is stored as 500.0; match it as the header wrote it.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_MISSING = object()


def lookup(series: Mapping[str, Any], tag: TagRef) -> Any:
    """The value a rule sees, or ``_MISSING``. Summaries are keyed by keyword or hex."""
    value: Any = _MISSING
    for key in (tag.keyword, tag.key, f"{tag.key[:4]},{tag.key[4:]}"):
        if key in series:
            value = series[key]
            break
    if value is None or value == "" or value == []:
        return _MISSING
    if tag.index is not None:
        items = value if isinstance(value, list | tuple) else [value]
        return items[tag.index] if tag.index < len(items) else _MISSING
    return value


def _compare(rule: Rule, actual: Any) -> tuple[bool, str]:
    """Apply the operator (not ``negate``); say why it held or failed."""
    op, want = rule.operator, rule.value
    if op == "exist":
        return actual is not _MISSING, "present" if actual is not _MISSING else "missing"
    if op == "notexist":
        return actual is _MISSING, "missing" if actual is _MISSING else f"present ({actual!r})"
    if actual is _MISSING:
        return False, "missing"
    if op == "regexp":
        held = re.search(str(want), _as_text(actual)) is not None
        return held, f"{_as_text(actual)!r} {'matches' if held else 'does not match'} /{want}/"
    if op in ("==", "!="):
        a, w = _number(actual), _number(want)
        same = a == w if a is not None and w is not None else _as_text(actual) == _as_text(want)
        held = same if op == "==" else not same
        return held, f"{actual!r} {op} {want!r} is {held}"
    if op in ("<", ">"):
        a, w = _number(actual), _number(want)
        if a is None or w is None:
            return False, f"{actual!r} is not a number"
        held = a < w if op == "<" else a > w
        return held, f"{a:g} {op} {w:g} is {held}"
    if op == "contains":
        items = actual if isinstance(actual, list | tuple) else [actual]
        held = any(_as_text(i) == _as_text(want) for i in items)
        return held, f"{want!r} {'in' if held else 'not in'} {list(items)!r}"
    return _approx(rule, actual)


def _approx(rule: Rule, actual: Any) -> tuple[bool, str]:
    a, w = _numbers(actual), _numbers(rule.value)
    if a is None or w is None:
        return False, f"{actual!r} is not numeric"
    if len(a) != len(w):
        return False, f"{len(a)} values, rule has {len(w)}"
    worst = max(abs(x - y) for x, y in zip(a, w, strict=True))
    held = worst <= rule.approx_level
    return held, f"largest difference {worst:g} {'<=' if held else '>'} {rule.approx_level:g}"


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    held: bool
    reason: str
    via: tuple[str, ...] = ()  # ids of the reused types this rule came through

    def __str__(self) -> str:
        neg = "not " if self.rule.negate else ""
        path = "".join(f"{v} > " for v in self.via)
        return f"{path}{self.rule.tag} {neg}{self.rule.operator} {self.rule.value!r}: {self.reason}"


@dataclass(frozen=True)
class TypeResult:
    type: str
    matched: bool
    rules: list[RuleResult]

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.held]


class Classifier:
    """Evaluates a :class:`RuleSet` on series summaries."""

    def __init__(self, rules: RuleSet):
        self.rules = rules
        self._by_id = rules.by_id()

    def _flatten(self, t: TypeDef, via: tuple[str, ...] = ()) -> Iterable[tuple[Rule, tuple]]:
        for r in t.rules:
            if isinstance(r, RuleRef):
                yield from self._flatten(self._by_id[r.rule], (*via, r.rule))
            else:
                yield r, via

    def _evaluate(self, t: TypeDef, series: Mapping[str, Any]) -> TypeResult:
        results = []
        for rule, via in self._flatten(t):
            held, reason = _compare(rule, lookup(series, rule.tag))
            results.append(RuleResult(rule, held != rule.negate, reason, via))
        return TypeResult(t.type, all(r.held for r in results), results)

    def explain(self, series: Mapping[str, Any]) -> list[TypeResult]:
        """Every type's result, in evaluation order, with each rule's reason."""
        summary = dict(series)
        # A stored summary's old ClassifyType must not decide its new one.
        matched: list[str] = []
        out = []
        ordered = [t for t in self.rules.types if not t.series_level]
        ordered += [t for t in self.rules.types if t.series_level]
        for t in ordered:
            summary["ClassifyType"] = list(matched)
            result = self._evaluate(t, summary)
            if result.matched and t.type not in matched:
                matched.append(t.type)
            out.append(result)
        return out

    def classify(self, series: Mapping[str, Any]) -> list[str]:
        """The names of the types whose rules all hold, in evaluation order."""
        names: list[str] = []
        for r in self.explain(series):
            if r.matched and r.type not in names:
                names.append(r.type)
        return names


_default: Classifier | None = None


def default_classifier() -> Classifier:
    global _default
    if _default is None:
        _default = Classifier(load_rules())
    return _default


def classify(series: Mapping[str, Any], rules: RuleSet | None = None) -> list[str]:
    """Types of a series summary (see :mod:`magickbox.study.series`)."""
    return (Classifier(rules) if rules else default_classifier()).classify(series)


def explain(series: Mapping[str, Any], rules: RuleSet | None = None) -> list[TypeResult]:
    """Per type: whether it matched, and which rule held or failed and why."""
    return (Classifier(rules) if rules else default_classifier()).explain(series)
