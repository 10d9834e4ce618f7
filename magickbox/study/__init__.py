"""Study intelligence: series summaries and their classification (pure library)."""

from magickbox.study.classify import (
    Classifier,
    RulesError,
    RuleSet,
    classify,
    explain,
    load_rules,
    parse_rules,
)
from magickbox.study.series import SeriesView

__all__ = [
    "Classifier",
    "RuleSet",
    "RulesError",
    "SeriesView",
    "classify",
    "explain",
    "load_rules",
    "parse_rules",
]
