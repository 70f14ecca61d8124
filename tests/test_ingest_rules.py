"""Spec tests: one validation rule at a time, small input table in, expected quarantine out.

Each input is a CSV as a data manager would see it; ``line`` is the editor line (header = 1).
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from pipeline.errors import UserError
from pipeline.ingest import validate_dataset
from tests.fixtures.ingest.helpers import quarantine_rows, spec_table, write_dataset

COLS = ("line", "column", "value", "reason")


def _quarantine(result, table: str, columns=COLS):
    return quarantine_rows(result.quarantine.filter(pl.col("table") == table), columns)


def test_subject_rules(tmp_path):
    data = write_dataset(tmp_path, {"subjects.csv": """\
subject_id,age_band,sex
S1,18-29,F
S2, 30-39 ,m
S 3,40-49,F
,50-59,M
S4,17-20,F
S5,60-69,female
S6,80+,X
"""})
    result = validate_dataset(data)
    assert _quarantine(result, "subjects") == spec_table("""
        | line | column     | value  | reason           |
        |------|------------|--------|------------------|
        | 4    | subject_id | S 3    | invalid_token    |
        | 5    | subject_id |        | missing_required |
        | 6    | age_band   | 17-20  | invalid_value    |
        | 7    | sex        | female | invalid_value    |
    """)
    subjects = result.accepted["subjects"]
    assert subjects.select("subject_id", "age_band", "sex").rows() == [
        ("S1", "18-29", "F"), ("S2", "30-39", "M"), ("S6", "80+", "X")]
    assert result.summary["tables"]["subjects"] | {"unknown_columns": []} == {
        "read": 7, "accepted": 3, "quarantined": 4, "duplicates": 0,
        "quarantined_by_reason": {"invalid_token": 1, "invalid_value": 2, "missing_required": 1},
        "unknown_columns": [], "files": 1, "files_skipped": 0}


def test_daily_rules(tmp_path):
    data = write_dataset(tmp_path, {"daily.csv": """\
subject_id,date,exercise_min,fluid_l,electrolytes,sleep_h
S1,2025-01-01,30,2.5,yes,7
S1,2025-01-02,-5,2,no,7
S1,2025-01-03,abc,2,no,7
S1,2025-01-04,10,2,maybe,7
S1,2025-02-30,10,2,TRUE,7
S1,,10,2,1,7
S2,2025-01-01,,, ,
S1,2025-01-05,nan,2,0,7
S1,2025-01-06,10,21,0,7
S9,2025-01-01,10,2,0,7
S1,2025-01-07, 1e1 ,0,F,24
"""})
    result = validate_dataset(data)
    assert _quarantine(result, "daily") == spec_table("""
        | line | column       | value      | reason           |
        |------|--------------|------------|------------------|
        | 3    | exercise_min | -5         | out_of_range     |
        | 4    | exercise_min | abc        | type             |
        | 5    | electrolytes | maybe      | type             |
        | 6    | date         | 2025-02-30 | type             |
        | 7    | date         |            | missing_required |
        | 9    | exercise_min | nan        | type             |
        | 10   | fluid_l      | 21         | out_of_range     |
        | 11   | subject_id   | S9         | unknown_subject  |
    """)
    daily = result.accepted["daily"].sort("source_line")
    assert daily.select("source_line", "exercise_min", "fluid_l", "electrolytes", "sleep_h").rows() == [
        (2, 30.0, 2.5, True, 7.0), (8, None, None, None, None), (12, 10.0, 0.0, False, 24.0)]
    messages = dict(result.quarantine.filter(pl.col("table") == "daily")
                    .select("line", "message").iter_rows())
    assert messages[3] == "expected 0 ≤ x ≤ 1440 (min)"
    assert messages[5] == "expected a yes/no value (true/false, yes/no, 1/0)"
    assert messages[11] == "this subject_id does not appear in the subjects table"


def test_episode_rules(tmp_path):
    data = write_dataset(tmp_path, {"episodes.csv": """\
episode_id,subject_id,started_at,duration_min,muscle_group,pain,numbness,er_visit
E1,S1,2025-01-01T10:00,5,calf,3,none,no
E2,S1,2025-01-01 10:05:30+02:00,5, Calf ,3,One Leg,Yes
E3,S1,2025-01-01T10:10,0,calf,3,none,no
E4,S1,2025-01-01T10:20,5,calf,3.5,none,no
E5,S1,2025-01-01T10:30,5,calf,11,none,no
E6,S1,2025-01-01,5,calf,3,none,no
E7,S1,2025-01-01T10:40,5,elbow,3,none,no
E8,S1,2025-01-01T10:50:00.250Z,1440,lower back,10.0,both_legs,0
E9,S1,2025-01-01T11:00,5,calf,3,none,sometimes
E10,S1,2025-01-01T12:00,5,calf,1E100,none,no
"""})
    result = validate_dataset(data)
    assert _quarantine(result, "episodes") == spec_table("""
        | line | column       | value      | reason        |
        |------|--------------|------------|---------------|
        | 4    | duration_min | 0          | out_of_range  |
        | 5    | pain         | 3.5        | type          |
        | 6    | pain         | 11         | out_of_range  |
        | 7    | started_at   | 2025-01-01 | type          |
        | 8    | muscle_group | elbow      | invalid_value |
        | 10   | er_visit     | sometimes  | type          |
        | 11   | pain         | 1E100      | type          |
    """)
    accepted = result.accepted["episodes"].sort("source_line")
    assert accepted.select("episode_id", "started_at", "muscle_group", "pain", "numbness",
                           "er_visit").rows() == [
        ("E1", dt.datetime(2025, 1, 1, 10, 0), "calf", 3, "none", False),
        ("E2", dt.datetime(2025, 1, 1, 10, 5, 30), "calf", 3, "one_leg", True),
        ("E8", dt.datetime(2025, 1, 1, 10, 50, 0, 250000), "lower_back", 10, "both_legs", False),
    ]
    messages = dict(result.quarantine.select("line", "message").iter_rows())
    assert messages[4] == "expected 0 < x ≤ 1440 (min)"


def test_duplicates_and_conflicts(tmp_path):
    data = write_dataset(tmp_path, {"daily.csv": """\
subject_id,date,sleep_h
S1,2025-01-01,7
S1,2025-01-01,7
S1,2025-01-02,7
S1,2025-01-02,8
S2,2025-01-01,6
S2,2025-01-01,6.0
""", "episodes.csv": """\
episode_id,subject_id,started_at,muscle_group,pain
E1,S1,2025-01-01T10:00,calf,3
E1,S1,2025-01-01T11:00,calf,3
,S1,2025-01-02T10:00,calf,3
,S1,2025-01-02T10:00,calf,3
,S1,2025-01-03T10:00,calf,3
,S1,2025-01-03T10:00,calf,4
,S1,2025-01-04T10:00,foot,
E2,S1,2025-01-04T10:00,foot,
"""})
    result = validate_dataset(data)
    assert _quarantine(result, "daily") == spec_table("""
        | line | column          | value            | reason   |
        |------|-----------------|------------------|----------|
        | 4    | subject_id+date | S1, 2025-01-02   | conflict |
        | 5    | subject_id+date | S1, 2025-01-02   | conflict |
    """)
    daily = result.summary["tables"]["daily"]
    assert (daily["read"], daily["accepted"], daily["quarantined"], daily["duplicates"]) == (6, 2, 2, 2)
    assert _quarantine(result, "episodes") == spec_table("""
        | line | column                            | value                              | reason   |
        |------|-----------------------------------|------------------------------------|----------|
        | 2    | episode_id                        | E1                                 | conflict |
        | 3    | episode_id                        | E1                                 | conflict |
        | 6    | subject_id+started_at+muscle_group | S1, 2025-01-03 10:00:00.000000, calf | conflict |
        | 7    | subject_id+started_at+muscle_group | S1, 2025-01-03 10:00:00.000000, calf | conflict |
    """)
    episodes = result.summary["tables"]["episodes"]
    # An id-less row and a row with an id are keyed differently: both accepted.
    assert (episodes["read"], episodes["accepted"], episodes["quarantined"],
            episodes["duplicates"]) == (8, 3, 4, 1)
    message = result.quarantine.filter(pl.col("line") == 2, pl.col("table") == "episodes")["message"][0]
    assert message == "2 rows share this key with different content; see also episodes.csv line 3"


def test_identifier_values_are_quarantined_and_masked(tmp_path):
    data = write_dataset(tmp_path, {
        "subjects.csv": "subject_id,age_band,sex\nS1,18-29,F\n123-45-6789,30-39,M\nP0012345,40-49,X\n",
        "daily.csv": """\
subject_id,date,sleep_h,notes
S1,2025-01-01,7,fine
S1,2025-01-02,7,call me on 07700 900123
S1,2025-01-03,+44 20 7946 0958,
S1,2025-01-04,7,jane.doe@example.com
S1,2025-01-05,7,x,y,mail j.smith@example.org
P0012345,2025-01-01,7,E070000002 S-000123 2025-01-01T10:00:00+02:00
"""})
    result = validate_dataset(data)
    assert _quarantine(result, "subjects") == spec_table("""
        | line | column     | value       | reason     |
        |------|------------|-------------|------------|
        | 3    | subject_id | ***-**-6789 | identifier |
    """)
    assert _quarantine(result, "daily") == spec_table("""
        | line | column  | value                            | reason     |
        |------|---------|----------------------------------|------------|
        | 3    | notes   | call me on 0**** ******          | identifier |
        | 4    | sleep_h | +** *** *** ****                 | identifier |
        | 5    | notes   | j***@***.com                     | identifier |
        | 6    |         | S1,2025-01-05,7,x,y,mail j***@***.org | identifier |
    """)
    assert result.summary["tables"]["daily"]["unknown_columns"] == ["notes"]
    messages = result.quarantine.filter(pl.col("table") == "daily")["message"].to_list()
    assert messages[0] == ("looks like a phone number; the value is masked here and the row is "
                           "not stored")
    assert "e-mail" in messages[2]


@pytest.mark.parametrize("header", ["Email", "e-mail address", "Date of Birth", "NHS_No",
                                    "postcode", "First Name"])
def test_identifier_named_column_refuses_the_file(tmp_path, header):
    data = write_dataset(tmp_path, {"daily.csv": f"subject_id,date,{header}\nS1,2025-01-01,x\n"})
    with pytest.raises(UserError, match=rf"daily\.csv.*{header!r}.*direct identifier"):
        validate_dataset(data)


def test_missing_required_column_refuses_the_file(tmp_path):
    data = write_dataset(tmp_path, {"episodes.csv": "subject_id,muscle_group\nS1,calf\n"})
    with pytest.raises(UserError, match=r"episodes\.csv.*required column.*started_at"):
        validate_dataset(data)


def test_missing_required_table_and_directory(tmp_path):
    with pytest.raises(UserError, match="dataset directory not found"):
        validate_dataset(tmp_path / "nope")
    data = write_dataset(tmp_path, {"episodes.csv": None})
    with pytest.raises(UserError, match="required table.*episodes"):
        validate_dataset(data)


def test_custom_factor_columns_are_validated_and_typed(tmp_path):
    data = write_dataset(tmp_path, {
        "dataset.toml": '[[custom_factors]]\ncolumn = "airq"\nfactor = "air_quality"\n'
                        'label = "Air quality"\nkind = "numeric"\nminimum = 0\nmaximum = 500\n\n'
                        '[[custom_factors]]\ncolumn = "pollen_high"\nfactor = "pollen"\n'
                        'label = "High pollen"\nkind = "boolean"\n',
        "daily.csv": "subject_id,date,airq,pollen_high\nS1,2025-01-01,40,yes\n"
                     "S1,2025-01-02,501,no\nS1,2025-01-03,12,often\n"})
    result = validate_dataset(data)
    assert _quarantine(result, "daily") == spec_table("""
        | line | column      | value | reason       |
        |------|-------------|-------|--------------|
        | 3    | airq        | 501   | out_of_range |
        | 4    | pollen_high | often | type         |
    """)
    daily = result.accepted["daily"]
    assert daily.schema["airq"] == pl.Float64 and daily.schema["pollen_high"] == pl.Boolean
    assert daily.select("airq", "pollen_high").rows() == [(40.0, True)]
    assert result.summary["tables"]["daily"]["unknown_columns"] == []


def test_identifier_shaped_column_names_are_masked_everywhere(tmp_path):
    data = write_dataset(tmp_path, {"daily.csv": "subject_id,date,jane@example.com\n"
                                                 "S1,2025-01-01,x\nS1,2025-01-02,07700 900123\n"})
    result = validate_dataset(data)
    assert result.summary["tables"]["daily"]["unknown_columns"] == ["j***@***.com"]
    assert result.quarantine.select("column", "value").rows() == [("j***@***.com", "0**** ******")]
    refused = write_dataset(tmp_path / "refused", {"daily.csv": "date,jane@example.com\nx,y\n"})
    with pytest.raises(UserError) as error:
        validate_dataset(refused)
    assert "jane" not in str(error.value) and "j***@***.com" in str(error.value)
