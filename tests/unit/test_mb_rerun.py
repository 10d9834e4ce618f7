"""``mb run``'s choice of archived studies: by UID, or by a regex over the study's fields."""

from __future__ import annotations

import re

from magickbox.mb.rerun import chosen_studies

STUDIES = [
    {"StudyInstanceUID": "1.2.1", "PatientID": "SUBJ-01", "StudyDescription": "MR brain",
     "files": 3, "modified": 1.0},
    {"StudyInstanceUID": "1.2.2", "PatientID": "SUBJ-02", "StudyDescription": None},
    {"StudyInstanceUID": "1.2.3", "PatientID": "CTRL-01", "PatientName": "Doe^Jane"},
]  # fmt: skip


def test_by_uid_only_the_named_studies() -> None:
    assert chosen_studies(STUDIES, ["1.2.3", "9.9"], None) == ["1.2.3"]


def test_by_regex_over_the_study_fields() -> None:
    assert chosen_studies(STUDIES, None, re.compile("^SUBJ-")) == ["1.2.1", "1.2.2"]
    assert chosen_studies(STUDIES, None, re.compile("brain|Jane")) == ["1.2.1", "1.2.3"]
    assert chosen_studies(STUDIES, None, re.compile(r"^1\.2\.2$")) == ["1.2.2"]
    assert chosen_studies(STUDIES, None, re.compile("^3$")) == []  # not the file count
