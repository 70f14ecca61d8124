"""The red-flag CSV files of a run directory."""

from __future__ import annotations

import polars as pl

from pipeline.redflags import (
    NOT_RECORDED_CSV,
    RED_FLAGS_CSV,
    SUBJECT_FLAGS_CSV,
    evaluate,
    load_rules,
    write_flag_outputs,
)
from tests.test_redflags_tables import episodes

RULES = load_rules()


def test_writes_all_three_files_completely(tmp_path):
    given = episodes("""
        | episode_id | subject_id | started_at                 | pain | swelling |
        |------------|------------|----------------------------|------|----------|
        | e1         | S1         | 2024-01-03 22:15:00        | 8    |          |
        |            | S2         | 2024-01-04 06:00:00.500000 | 0    | true     |
    """)
    result = evaluate(given, RULES)
    paths = write_flag_outputs(result, tmp_path / "run")
    assert sorted(p.name for p in paths.values()) == sorted(
        [RED_FLAGS_CSV, SUBJECT_FLAGS_CSV, NOT_RECORDED_CSV]
    )
    assert (tmp_path / "run" / RED_FLAGS_CSV).read_text().splitlines() == [
        "episode_id,subject_id,started_at,rule_id,severity,evidence",
        "e1,S1,2024-01-03T22:15:00,severe_pain,red_flag,pain=8",
        "S2_20240104T060000.500000_calf,S2,2024-01-04T06:00:00.500,swelling,red_flag,swelling=true",
    ]
    subject = (tmp_path / "run" / SUBJECT_FLAGS_CSV).read_text().splitlines()
    assert subject[0].startswith(
        "subject_id,highest_severity,total_flags,first_flagged_date,last_flagged_date,n_severe_pain"
    )
    assert subject[1].startswith("S1,red_flag,1,2024-01-03,2024-01-03,1,")
    assert (tmp_path / "run" / NOT_RECORDED_CSV).read_text().splitlines() == [
        "rule_id,severity,subject_id,n_episodes,n_not_recorded,missing_fields",
        "swelling,red_flag,S1,1,1,swelling=1",
    ]
    # Round trip: nothing is lost or hidden.
    assert pl.read_csv(tmp_path / "run" / RED_FLAGS_CSV).height == result.flags.height
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_no_flags_still_writes_headers_and_replaces_old_files(tmp_path):
    (tmp_path / RED_FLAGS_CSV).write_text("stale\n")
    quiet = episodes("""
        | episode_id | subject_id | started_at       |
        |------------|------------|------------------|
        | e1         | S1         | 2024-01-01 08:00 |
    """)
    write_flag_outputs(evaluate(quiet, RULES), tmp_path)
    assert (tmp_path / RED_FLAGS_CSV).read_text() == (
        "episode_id,subject_id,started_at,rule_id,severity,evidence\n"
    )
    assert (tmp_path / SUBJECT_FLAGS_CSV).read_text().startswith("subject_id,highest_severity")
    assert (tmp_path / NOT_RECORDED_CSV).read_text().startswith("rule_id,severity,subject_id")


def test_same_input_gives_byte_identical_files(tmp_path):
    given = episodes("""
        | episode_id | subject_id | started_at       | pain | numbness |
        |------------|------------|------------------|------|----------|
        |            | S2         | 2024-01-02 08:00 | 9    | one_leg  |
        |            | S1         | 2024-01-01 08:00 |      |          |
        | e3         | S1         | 2024-01-01 08:00 | 7    | none     |
    """)
    write_flag_outputs(evaluate(given, RULES), tmp_path / "a")
    write_flag_outputs(evaluate(given.reverse(), RULES), tmp_path / "b")
    for name in (RED_FLAGS_CSV, SUBJECT_FLAGS_CSV, NOT_RECORDED_CSV):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
