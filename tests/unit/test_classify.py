"""classifyRules.json: parsing (strict and lenient), every operator, reuse and chaining."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from magickbox.errors import Invalid
from magickbox.study.classify import (
    Classifier,
    RulesError,
    RuleSet,
    classify,
    explain,
    load_rules,
    parse_rules,
)

MODALITY = ["0x0008", "0x0060"]
DESCRIPTION = ["0x0008", "0x103E"]
TR = ["0x0018", "0x0080"]
IOP = ["0x0020", "0x0037"]
IMAGE_TYPE = ["0x0008", "0x0008"]


def one(rule: dict[str, Any], series: dict[str, Any]) -> bool:
    """Does a type made of this one rule match the series?"""
    rules = parse_rules([{"type": "X", "rules": [rule]}])
    return classify(series, rules) == ["X"]


# ---------------------------------------------------------------- operators

OPERATOR_CASES = [
    # rule, a series it matches, a series it does not match
    ({"tag": MODALITY, "value": "^MR$"}, {"Modality": "MR"}, {"Modality": "MRX"}),
    ({"tag": MODALITY, "value": "M", "operator": "regexp"}, {"Modality": "MR"}, {"Modality": "CT"}),
    (
        {"tag": TR, "value": "500", "operator": "=="},
        {"RepetitionTime": 500.0},
        {"RepetitionTime": 501},
    ),
    ({"tag": MODALITY, "value": "CT", "operator": "=="}, {"Modality": "CT"}, {"Modality": "MR"}),
    ({"tag": MODALITY, "value": "CT", "operator": "!="}, {"Modality": "MR"}, {"Modality": "CT"}),
    (
        {"tag": TR, "value": 1000, "operator": "<"},
        {"RepetitionTime": 500},
        {"RepetitionTime": 1000},
    ),
    (
        {"tag": TR, "value": 1000, "operator": ">"},
        {"RepetitionTime": 4000},
        {"RepetitionTime": 1000},
    ),
    ({"tag": TR, "operator": "exist"}, {"RepetitionTime": 1}, {"Modality": "CT"}),
    ({"tag": TR, "operator": "notexist"}, {"Modality": "CT"}, {"RepetitionTime": 1}),
    (
        {"tag": IMAGE_TYPE, "value": "LOCALIZER", "operator": "contains"},
        {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]},
        {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZERX"]},
    ),
    (
        {"tag": IOP, "value": [1, 0, 0, 0, 1, 0], "operator": "approx", "approxLevel": 0.1},
        {"ImageOrientationPatient": [0.99, 0.05, 0, 0, 1, 0]},
        {"ImageOrientationPatient": [0.8, 0.6, 0, 0, 1, 0]},
    ),
]


@pytest.mark.parametrize(("rule", "hit", "miss"), OPERATOR_CASES)
def test_each_operator_holds_and_fails(rule: dict, hit: dict, miss: dict) -> None:
    assert one(rule, hit)
    assert not one(rule, miss)


@pytest.mark.parametrize(("rule", "hit", "miss"), OPERATOR_CASES)
def test_negate_inverts_each_operator(rule: dict, hit: dict, miss: dict) -> None:
    negated = {**rule, "negate": "yes"}
    assert not one(negated, hit)
    assert one(negated, miss)


def test_regexp_searches_and_matches_multi_values_joined_by_backslash() -> None:
    assert one({"tag": DESCRIPTION, "value": "(?i)flair"}, {"SeriesDescription": "ax T2 FLAIR"})
    assert one(
        {"tag": IMAGE_TYPE, "value": r"PRIMARY\\M"}, {"ImageType": ["ORIGINAL", "PRIMARY", "M"]}
    )


def test_whole_floats_match_as_written_in_the_header() -> None:
    assert one({"tag": TR, "value": "^500$"}, {"RepetitionTime": 500.0})
    assert one({"tag": TR, "value": "^2.5$"}, {"RepetitionTime": 2.5})
    assert one({"tag": IOP, "value": r"^1\\0\\0"}, {"ImageOrientationPatient": [1.0, 0.0, 0.0]})


def test_numeric_operators_fail_on_text_and_missing_values() -> None:
    assert not one({"tag": TR, "value": 1000, "operator": "<"}, {"RepetitionTime": "abc"})
    assert not one({"tag": TR, "value": 1000, "operator": "<"}, {})
    assert not one({"tag": TR, "value": "^5"}, {"RepetitionTime": ""})  # empty is missing


def test_approx_default_level_is_small_and_length_must_agree() -> None:
    rule = {"tag": IOP, "value": [1, 0, 0, 0, 1, 0], "operator": "approx"}
    assert one(rule, {"ImageOrientationPatient": [1, 0, 0, 0, 1, 0.00001]})
    assert not one(rule, {"ImageOrientationPatient": [1, 0, 0, 0, 1, 0.01]})
    assert not one(rule, {"ImageOrientationPatient": [1, 0, 0, 0, 1]})


def test_hex_keyed_summaries_and_private_tags_are_found() -> None:
    assert one({"tag": ["0x0019", "0x100C"], "value": 1000, "operator": ">"}, {"0019,100C": 1500})
    assert one({"tag": MODALITY, "value": "MR"}, {"00080060": "MR"})


# ---------------------------------------------------------------- tags


def test_index_tag_looks_at_one_value() -> None:
    rule = {"tag": ["0x0020", "0x0037", 4], "value": 1, "operator": "=="}
    assert one(rule, {"ImageOrientationPatient": [1, 0, 0, 0, 1, 0]})
    assert not one(rule, {"ImageOrientationPatient": [1, 0, 0, 0, 0, 1]})
    assert not one(rule, {"ImageOrientationPatient": [1, 0]})  # index past the end: missing
    assert one({**rule, "operator": "notexist"}, {"ImageOrientationPatient": [1, 0]})


def test_num_files() -> None:
    rule = {"tag": ["NumFiles"], "value": 100, "operator": ">"}
    assert one(rule, {"NumFiles": 200})
    assert not one(rule, {"NumFiles": 20})


def test_classify_type_chains_earlier_types() -> None:
    rules = parse_rules(
        [
            {"type": "MR", "rules": [{"tag": MODALITY, "value": "^MR$"}]},
            {
                "type": "bigMR",
                "rules": [
                    {"tag": ["ClassifyType"], "value": "MR", "operator": "contains"},
                    {"tag": ["NumFiles"], "value": 10, "operator": ">"},
                ],
            },
        ]
    )
    assert classify({"Modality": "MR", "NumFiles": 11}, rules) == ["MR", "bigMR"]
    assert classify({"Modality": "MR", "NumFiles": 3}, rules) == ["MR"]
    assert classify({"Modality": "CT", "NumFiles": 11}, rules) == []


def test_series_level_types_run_after_all_others_whatever_their_place() -> None:
    rules = parse_rules(
        [
            {
                "type": "other",
                "check": "SeriesLevel",
                "rules": [
                    {
                        "tag": ["ClassifyType"],
                        "value": "late",
                        "operator": "contains",
                        "negate": "yes",
                    },
                ],
            },
            {"type": "late", "rules": [{"tag": MODALITY, "value": "CT"}]},
        ]
    )
    assert classify({"Modality": "CT"}, rules) == ["late"]
    assert classify({"Modality": "MR"}, rules) == ["other"]


def test_stale_classify_type_in_the_input_is_ignored() -> None:
    rules = parse_rules(
        [
            {
                "type": "A",
                "rules": [
                    {"tag": ["ClassifyType"], "value": "A", "operator": "contains", "negate": "yes"}
                ],
            }
        ]
    )
    assert classify({"ClassifyType": ["A"]}, rules) == ["A"]


def test_rule_reuse_includes_all_rules_of_the_other_type() -> None:
    rules = parse_rules(
        [
            {"type": "MR", "id": "mr", "rules": [{"tag": MODALITY, "value": "^MR$"}]},
            {
                "type": "longTR",
                "rules": [{"rule": "mr"}, {"tag": TR, "value": 2000, "operator": ">"}],
            },
        ]
    )
    assert classify({"Modality": "MR", "RepetitionTime": 3000}, rules) == ["MR", "longTR"]
    assert classify({"Modality": "CT", "RepetitionTime": 3000}, rules) == []
    failed = next(
        r for r in explain({"Modality": "CT", "RepetitionTime": 3000}, rules) if r.type == "longTR"
    ).failed
    assert len(failed) == 1
    assert failed[0].via == ("mr",)
    assert str(failed[0]).startswith("mr > (0008,0060) Modality regexp")


def test_explain_says_why_each_rule_held_or_failed() -> None:
    rules = parse_rules(
        [
            {
                "type": "T1",
                "rules": [
                    {"tag": TR, "value": 1000, "operator": "<"},
                    {"tag": ["0x0018", "0x0081"], "value": 30, "operator": "<"},
                ],
            }
        ]
    )
    (result,) = explain({"RepetitionTime": 500, "EchoTime": 90}, rules)
    assert not result.matched
    assert [r.held for r in result.rules] == [True, False]
    assert "500 < 1000 is True" in str(result.rules[0])
    assert str(result.rules[1]) == "(0018,0081) EchoTime < 30: 90 < 30 is False"


# ---------------------------------------------------------------- validation


BAD = [
    {"type": "ok", "rules": [{"tag": MODALITY, "value": "MR"}]},
    {
        "type": "badop",
        "rules": [{"tag": MODALITY, "value": "MR"}, {"tag": TR, "value": 5, "operator": "lt"}],
    },
    {"type": "badtag", "rules": [{"tag": ["0x00zz", "0x0060"], "value": "x"}]},
    {"type": "badkey", "rules": [{"tag": ["NumImages"], "value": 1}]},
    {"type": "badref", "rules": [{"rule": "nope"}]},
    {"rules": [{"tag": MODALITY, "value": "MR"}]},
    {"type": "badnum", "rules": [{"tag": TR, "value": "long", "operator": ">"}]},
    {"type": "badre", "rules": [{"tag": MODALITY, "value": "("}]},
    {"type": "badcheck", "check": "StudyLevel", "rules": [{"tag": MODALITY, "value": "MR"}]},
    {"type": "noval", "rules": [{"tag": MODALITY, "operator": "=="}]},
    {"type": "badindex", "rules": [{"tag": ["0x0020", "0x0037", -1], "value": 0}]},
    {"type": "badneg", "rules": [{"tag": MODALITY, "value": "MR", "negate": "maybe"}]},
    {"type": "empty", "rules": []},
    {"type": "uses-ok", "rules": [{"rule": "ok"}]},
]
BAD[0]["id"] = "ok"


def test_strict_parse_names_every_problem_by_place() -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(BAD)
    assert info.value.problems == [
        "[1].rules[1].operator: unknown operator 'lt'",
        "[2].rules[0].tag: group and element must be hex like '0x0008', got ['0x00zz', '0x0060']",
        "[3].rules[0].tag: unknown series key 'NumImages' (use NumFiles or ClassifyType)",
        "[5].type: expected a name, got None",
        "[6].rules[0].value: operator '>' needs a number, got 'long'",
        "[7].rules[0].value: bad regular expression '(': missing ), unterminated subpattern at "
        "position 0",
        "[8].check: unknown check 'StudyLevel' (only 'SeriesLevel')",
        "[9].rules[0].value: operator '==' needs a value",
        "[10].rules[0].tag[2]: index must be a whole number >= 0, got -1",
        "[11].rules[0].negate: expected 'yes' or 'no', got 'maybe'",
        "[12].rules: expected a non-empty list",
        "[4].rules[0].rule: unknown id 'nope'",
    ]
    assert isinstance(info.value, Invalid)
    assert info.value.http_status == 400


def test_lenient_parse_skips_bad_types_with_warnings(caplog: pytest.LogCaptureFixture) -> None:
    rules = parse_rules(BAD, strict=False)
    assert [t.type for t in rules.types] == ["ok", "uses-ok"]
    assert len(rules.warnings) == 12
    assert "unknown operator 'lt'" in caplog.text


def test_duplicate_ids_and_cycles_are_problems() -> None:
    data = [
        {"type": "A", "id": "a", "rules": [{"rule": "b"}]},
        {"type": "B", "id": "b", "rules": [{"rule": "a"}]},
        {"type": "C", "id": "a", "rules": [{"tag": MODALITY, "value": "x"}]},
    ]
    with pytest.raises(RulesError) as info:
        parse_rules(data)
    assert info.value.problems == [
        "[2].id: duplicate id 'a' (also [0])",
        "[0].rules[0].rule: 'b' leads back to this type (a cycle)",
        "[1].rules[0].rule: 'a' leads back to this type (a cycle)",
    ]


def test_lenient_drops_types_that_reuse_a_dropped_type() -> None:
    data = [
        {"type": "A", "id": "a", "rules": [{"tag": MODALITY, "value": "x", "operator": "??"}]},
        {"type": "B", "id": "b", "rules": [{"rule": "a"}]},
        {"type": "C", "id": "c", "rules": [{"rule": "b"}]},
    ]
    assert parse_rules(data, strict=False).types == []


def test_top_level_must_be_a_list() -> None:
    with pytest.raises(RulesError, match="expected a list of types, got dict"):
        parse_rules({"type": "x"})


def test_load_rules_from_file_and_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "classifyRules.json"
    path.write_text(json.dumps([{"type": "CT", "rules": [{"tag": MODALITY, "value": "CT"}]}]))
    assert Classifier(load_rules(path)).classify({"Modality": "CT"}) == ["CT"]
    path.write_text("[{")
    with pytest.raises(RulesError, match="not JSON"):
        load_rules(path)


# ---------------------------------------------------------------- default set


def test_default_rules_parse_strictly() -> None:
    rules = load_rules()
    assert isinstance(rules, RuleSet)
    names = {t.type for t in rules.types}
    assert {"T1", "T2", "FLAIR", "DWI", "fMRI", "localizer", "CT"} <= names
    assert {"axial", "coronal", "sagittal", "oblique"} <= names


AX = [1, 0, 0, 0, 1, 0]
COR = [1, 0, 0, 0, 0, -1]
SAG = [0, 1, 0, 0, 0, -1]
OBL = [1, 0, 0, 0, 0.7071, -0.7071]


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        (
            {
                "Modality": "MR",
                "RepetitionTime": 500,
                "EchoTime": 12,
                "ImageOrientationPatient": AX,
            },
            ["MR", "T1", "axial"],
        ),
        (
            {
                "Modality": "MR",
                "RepetitionTime": 4000,
                "EchoTime": 90,
                "ImageOrientationPatient": COR,
            },
            ["MR", "T2", "coronal"],
        ),
        (
            {
                "Modality": "MR",
                "RepetitionTime": 9000,
                "EchoTime": 90,
                "SeriesDescription": "ax FLAIR",
                "ImageOrientationPatient": SAG,
            },
            ["MR", "FLAIR", "sagittal"],
        ),
        (
            {
                "Modality": "MR",
                "RepetitionTime": 5000,
                "EchoTime": 80,
                "SeriesDescription": "DWI b1000",
                "ImageOrientationPatient": OBL,
            },
            ["MR", "DWI", "oblique"],
        ),
        (
            {
                "Modality": "MR",
                "RepetitionTime": 2000,
                "EchoTime": 30,
                "SeriesDescription": "rsfMRI BOLD",
            },
            ["MR", "fMRI"],
        ),
        (
            {
                "Modality": "MR",
                "RepetitionTime": 8,
                "EchoTime": 3,
                "SeriesDescription": "3pl Localizer",
                "ImageOrientationPatient": [0.999, 0.01, 0.03, -0.01, 0.999, 0.02],
            },
            ["MR", "localizer", "axial"],
        ),
        (
            {
                "Modality": "MR",
                "RepetitionTime": 8,
                "EchoTime": 3,
                "SeriesDescription": "AAH",
                "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"],
            },
            ["MR", "localizer"],
        ),
        ({"Modality": "CT", "ImageOrientationPatient": AX}, ["CT", "axial"]),
        ({"Modality": "US"}, []),
    ],
)
def test_default_rules(series: dict, expected: list[str]) -> None:
    assert classify(series) == expected
