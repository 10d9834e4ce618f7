"""The routing table's semantics (the original's, quirks included) and its check on save."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from magickbox.routing import rules
from magickbox.routing.rules import JobFacts, Placeholders, RuleError

PH = Placeholders(me="10.0.0.1", port=11113, sender_ip="192.168.1.7")


def dest(aet: str, **extra: object) -> dict[str, object]:
    return {"IP": "10.1.1.1", "PORT": "104", "AETitleSender": "MB", "AETitleTo": aet, **extra}


def targets(table: dict, success: str = "success", called: str = "ProcA", caller: str = "ip44"):
    routes, _notes = rules.evaluate(
        rules.parse(table), JobFacts(called, caller, "192.168.1.7", success), PH
    )
    return [r.called_aet for r in routes]


def test_aetitles_are_case_insensitive_searches_and_missing_ones_match() -> None:
    table = {"routing": [
        {"AETitleIn": "proca", "send": [{"success": dest("IN")}]},
        {"AETitleFrom": "^IP4", "send": [{"success": dest("FROM")}]},
        {"AETitleIn": "^ProcB$", "send": [{"success": dest("NOT")}]},
        {"send": [{"success": dest("ANY")}]},
    ]}  # fmt: skip
    assert targets(table) == ["IN", "FROM", "ANY"]


def test_disabled_rules_are_skipped() -> None:
    table = {"routing": [
        {"status": 0, "send": [{"success": dest("S0")}]},
        {"enabled": "F", "send": [{"success": dest("EF")}]},
        {"status": 1, "enabled": "T", "send": [{"success": dest("ON")}]},
    ]}  # fmt: skip
    assert targets(table) == ["ON"]


def test_keys_are_regexes_over_success_and_the_first_match_of_an_object_wins() -> None:
    entry = {"fail": dest("F"), "succ": dest("S1"), "success": dest("S2"), ".*": dest("ALL")}
    table = {"routing": [{"send": [entry]}]}
    assert targets(table, "success") == ["S1"]
    assert targets(table, "failed") == ["F"]
    assert targets(table, "partial") == ["ALL"]
    assert targets(table, "couldNotReadProcJSON") == ["ALL"]


def test_a_destination_break_lets_later_keys_of_the_object_be_tried() -> None:
    # The original stops trying keys after a match unless the destination says break: 1.
    entry = {"succ": dest("S1", **{"break": 1}), "success": dest("S2"), ".*": dest("ALL")}
    table = {"routing": [{"send": [entry, {".*": dest("NEXT")}]}]}
    assert targets(table) == ["S1", "S2", "NEXT"]


def test_rule_break_stops_later_rules_only_when_the_rule_matched() -> None:
    table = {"routing": [
        {"AETitleIn": "nomatch", "break": 1, "send": [{".*": dest("A")}]},
        {"break": 1, "send": [{".*": dest("B")}]},
        {"send": [{".*": dest("C")}]},
    ]}  # fmt: skip
    assert targets(table) == ["B"]


def test_placeholders_and_route_directory() -> None:
    table = {"routing": [{"RouteDirectory": "INPUT", "send": [{".*": {
        "IP": "$me", "PORT": "$port", "AETitleSender": "MB", "AETitleTo": "X"}}, {".*": {
        "IP": "$sender", "PORT": 4006, "AETitleSender": "MB", "AETitleTo": "Y",
        "sendErrorAsDcm": 1, "which": [{"0008,103e": "t1"}]}}]}]}  # fmt: skip
    routes, _ = rules.evaluate(rules.parse(table), JobFacts("A", "B", "192.168.1.7", "success"), PH)
    assert [(r.ip, r.port, r.directory) for r in routes] == [
        ("10.0.0.1", 11113, "INPUT"),
        ("192.168.1.7", 4006, "INPUT"),
    ]
    assert routes[1].error_image and routes[1].which == [{"0008,103e": "t1"}]


def test_a_destination_without_required_keys_is_skipped_and_later_keys_tried() -> None:
    entry = {"succ": {"IP": "1.2.3.4", "AETitleTo": "X"}, "success": dest("OK")}
    routes, notes = rules.evaluate(rules.parse({"routing": [{"send": [entry]}]}),
                                   JobFacts("A", "B", "", "success"), PH)  # fmt: skip
    assert [r.called_aet for r in routes] == ["OK"]
    assert any("lacks" in n for n in notes)


def test_which_keeps_files_whose_tags_all_match_in_one_object() -> None:
    which = [{"0008,103e": "^t1", "0008,0060": "MR"}, {"0020,0011": "^7$"}]
    desc, modality, series = 0x0008103E, 0x00080060, 0x00200011
    assert rules.which_keeps(which, {desc: "T1 axial", modality: "MR"})
    assert not rules.which_keeps(which, {desc: "t1", modality: "CT"})
    assert rules.which_keeps(which, {series: "7"})
    assert not rules.which_keeps(which, {})
    assert rules.which_tags(which) == [desc, modality, series]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"rules": []}', '"routing" list'),
        ('{"routing": [{"AETitleIn": "(", "send": []}]}', "routing[0].AETitleIn: bad regular"),
        ('{"routing": [{"send": [{"succ[": {}}]}]}', "bad regular expression 'succ['"),
        ('{"routing": [{"send": [{"s": {"IP": "a", "PORT": 1, "AETitleTo": "X"}}]}]}',
         "routing[0].send[0]['s']: missing key AETitleSender"),
        ('{"routing": [{"send": [{"s": ' + json.dumps(dest("X", PORT="abc")) + "}]}]}",
         "PORT: must be a port number"),
        ('{"routing": [{"send": [{"s": ' + json.dumps(dest("X", which=[{"8,103e": "x"}])) +
         "}]}]}", 'not written as "0008,103e"'),
        ('{"routing": [{"RouteDirectory": "../etc", "send": []}]}', "RouteDirectory"),
        ('{"routing": [{"name": "no send"}]}', "routing[0].send: missing"),
    ],
)  # fmt: skip
def test_a_broken_table_is_refused_with_the_exact_problem(text: str, problem: str) -> None:
    with pytest.raises(RuleError) as err:
        rules.validate_text(text)
    assert problem in str(err.value)


def test_an_original_table_is_accepted_as_it_is(tmp_path: Path) -> None:
    original = {"routing": [{"name": "to PACS", "AETitleIn": "ProcRSI", "AETitleFrom": "HAUKE",
        "status": 1, "break": 0, "send": [{"failed": dest("PACS"), "partial": dest("PACS"),
        "success": {"IP": "137.110.172.43", "PORT": "11113", "AETitleSender": "ROUTING",
                    "AETitleTo": "PACS", "which": [{"0008,103e": "FA"}]}}]}]}  # fmt: skip
    assert rules.validate_text(json.dumps(original)) == original
    (tmp_path / "routing.json").write_text(json.dumps(original))
    assert rules.load_table(tmp_path / "routing.json") == original
    assert rules.load_table(tmp_path / "missing.json") == {"routing": []}


def test_a_table_is_parsed_once_into_typed_rules_with_placeholders_kept() -> None:
    entry = {"succ": dest("A", PORT="$port", **{"break": 1}), "x": dest("B", which="")}
    table = rules.parse(
        {"routing": [{"name": "r", "AETitleIn": "P", "break": "T", "send": [entry]}]}
    )
    (rule,) = table.rules
    assert (rule.index, rule.name, rule.called_aet, rule.caller_aet) == (0, "r", "P", None)
    assert (rule.directory, rule.stop, rule.enabled, rule.problem) == ("OUTPUT", True, True, "")
    first, second = rule.sends[0]
    assert (first.key, first.port, first.called_aet, first.keep_going) == (
        "succ",
        "$port",
        "A",
        True,
    )
    assert (second.key, second.which, second.keep_going) == ("x", [], False)


def test_saving_names_every_problem_but_reading_from_disk_keeps_what_it_can() -> None:
    raw = {"routing": [
        "not a rule",
        {"RouteDirectory": "../x", "send": [{".*": dest("DIR")}]},
        {"send": [{"succ": {"IP": "a"}, ".*": dest("OK", PORT="nope"), "s": dest("LAST")}]},
    ]}  # fmt: skip
    with pytest.raises(RuleError) as err:
        rules.parse_strict(raw)
    for place in ("routing[0]", "routing[1].RouteDirectory", "routing[2].send[0]['succ']",
                  "routing[2].send[0]['.*'].PORT"):  # fmt: skip
        assert place in str(err.value)
    routes, notes = rules.evaluate(rules.parse(raw), JobFacts("A", "B", "", "success"), PH)
    assert [r.called_aet for r in routes] == ["LAST"]  # broken ones skipped, later keys tried
    assert "rule #0: not an object, skipped" in notes
    assert "rule #1: RouteDirectory '../x' refused" in notes
    assert any("key 'succ': destination lacks one of" in n for n in notes)
    assert any("key '.*': no usable IP/PORT ('10.1.1.1', 'nope')" in n for n in notes)


TLS_DEST = {"IP": "h", "PORT": 104, "AETitleSender": "A", "AETitleTo": "B"}


def test_a_destination_tls_object_is_routed_with_its_files() -> None:
    tls = {"ca": "ca.pem", "cert": "me.crt", "key": "me.key", "check_hostname": "F"}
    table = rules.parse_strict({"routing": [{"send": [{".*": {**TLS_DEST, "TLS": tls}},
                                                      {".*": TLS_DEST}]}]})  # fmt: skip
    routes, _ = rules.evaluate(table, JobFacts("X", "Y", "1.2.3.4", "ok"), Placeholders("m", 1))
    assert [r.tls for r in routes] == [
        rules.ClientFiles("ca.pem", "me.crt", "me.key", check_hostname=False),
        None,
    ]


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        ("on", "TLS: must be an object"),
        ({"ca": 3}, "TLS.ca: must be a file name"),
        ({"cert": "me.crt"}, '"cert" and "key" go together'),
        ({"key": "me.key"}, '"cert" and "key" go together'),
        ({"CA": "ca.pem"}, "unknown key 'CA'"),
    ],
)
def test_a_bad_tls_object_is_refused_on_save(tls: object, problem: str) -> None:
    text = json.dumps({"routing": [{"send": [{".*": {**TLS_DEST, "TLS": tls}}]}]})
    with pytest.raises(RuleError) as err:
        rules.validate_text(text)
    assert problem in str(err.value) and "routing[0].send[0]['.*'].TLS" in str(err.value)


def test_tls_files_are_loaded_on_save_relative_to_the_home(tmp_path: Path) -> None:
    text = json.dumps({"routing": [{"send": [{".*": {**TLS_DEST, "TLS": {"ca": "ca.pem"}}}]}]})
    rules.validate_text(text)  # without a home the files are not looked at
    with pytest.raises(RuleError, match=r"TLS CA file .*ca\.pem: no such file"):
        rules.validate_text(text, tmp_path)
