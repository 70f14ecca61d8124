"""Spec tests for the shipped red-flag rules: episodes in, expected flags out.

Each test is a small episode table (columns it does not show hold quiet, recorded values) and the
flags a clinician should see for it. An empty cell is a value that was not recorded.
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from pipeline.redflags import FLAG_SCHEMA, NOT_RECORDED_SCHEMA, evaluate, load_rules
from tests.test_redflags_tables import episodes, table

RULES = load_rules()


def flags_of(lf: pl.LazyFrame, rule_id: str | None = None) -> pl.DataFrame:
    flags = evaluate(lf, RULES).flags
    if rule_id is not None:
        flags = flags.filter(pl.col("rule_id") == rule_id)
    return flags.select("episode_id", "rule_id", "evidence")


def not_recorded_of(lf: pl.LazyFrame, rule_id: str) -> pl.DataFrame:
    return (
        evaluate(lf, RULES)
        .not_recorded.filter(pl.col("rule_id") == rule_id)
        .select("subject_id", "n_episodes", "n_not_recorded", "missing_fields")
    )


COUNTS = {"n_episodes": pl.Int64(), "n_not_recorded": pl.Int64()}


def test_severe_pain_fires_from_7_or_when_uncontrolled():
    given = episodes("""
        | episode_id | subject_id | started_at       | pain | pain_uncontrolled |
        |------------|------------|------------------|------|-------------------|
        | e1         | S1         | 2024-01-01 08:00 | 6    | false             |
        | e2         | S1         | 2024-01-02 08:00 | 7    | false             |
        | e3         | S1         | 2024-01-03 08:00 | 10   | true              |
        | e4         | S1         | 2024-01-04 08:00 | 2    | true              |
        | e5         | S1         | 2024-01-05 08:00 |      | true              |
        | e6         | S1         | 2024-01-06 08:00 | 8    |                   |
        | e7         | S1         | 2024-01-07 08:00 |      | false             |
        | e8         | S1         | 2024-01-08 08:00 | 3    |                   |
        | e9         | S1         | 2024-01-09 08:00 |      |                   |
    """)
    assert flags_of(given, "severe_pain").equals(table("""
        | episode_id | rule_id     | evidence                        |
        |------------|-------------|---------------------------------|
        | e2         | severe_pain | pain=7                          |
        | e3         | severe_pain | pain=10; pain_uncontrolled=true |
        | e4         | severe_pain | pain_uncontrolled=true          |
        | e5         | severe_pain | pain_uncontrolled=true          |
        | e6         | severe_pain | pain=8                          |
    """))
    # e7, e8 and e9 could not be assessed: pain 9 might have been 8.
    assert not_recorded_of(given, "severe_pain").equals(table("""
        | subject_id | n_episodes | n_not_recorded | missing_fields                 |
        |------------|------------|----------------|--------------------------------|
        | S1         | 9          | 3              | pain=2; pain_uncontrolled=2    |
    """, COUNTS))


def test_numbness_in_one_or_both_legs():
    given = episodes("""
        | episode_id | subject_id | started_at       | numbness  |
        |------------|------------|------------------|-----------|
        | e1         | S1         | 2024-01-01 08:00 | none      |
        | e2         | S1         | 2024-01-02 08:00 | one_leg   |
        | e3         | S1         | 2024-01-03 08:00 | both_legs |
        | e4         | S1         | 2024-01-04 08:00 |           |
    """)
    assert flags_of(given, "numbness").equals(table("""
        | episode_id | rule_id  | evidence           |
        |------------|----------|--------------------|
        | e2         | numbness | numbness=one_leg   |
        | e3         | numbness | numbness=both_legs |
    """))
    assert not_recorded_of(given, "numbness").equals(table("""
        | subject_id | n_episodes | n_not_recorded | missing_fields |
        |------------|------------|----------------|----------------|
        | S1         | 4          | 1              | numbness=1     |
    """, COUNTS))


@pytest.mark.parametrize(
    ("rule_id", "column"),
    [
        ("swelling", "swelling"),
        ("skin_changes", "skin_changes"),
        ("sleep_loss", "sleep_loss"),
        ("emergency_visit", "er_visit"),
    ],
)
def test_yes_no_rules_fire_on_yes_only_and_count_blanks(rule_id, column):
    given = episodes(f"""
        | episode_id | subject_id | started_at       | {column} |
        |------------|------------|------------------|----------|
        | e1         | S1         | 2024-01-01 08:00 | false    |
        | e2         | S1         | 2024-01-02 08:00 | true     |
        | e3         | S2         | 2024-01-03 08:00 |          |
    """)
    assert flags_of(given, rule_id).equals(table(f"""
        | episode_id | rule_id   | evidence       |
        |------------|-----------|----------------|
        | e2         | {rule_id} | {column}=true  |
    """))
    assert not_recorded_of(given, rule_id).equals(table(f"""
        | subject_id | n_episodes | n_not_recorded | missing_fields |
        |------------|------------|----------------|----------------|
        | S2         | 1          | 1              | {column}=1     |
    """, COUNTS))


def test_prolonged_means_strictly_longer_than_15_minutes():
    given = episodes("""
        | episode_id | subject_id | started_at       | duration_min |
        |------------|------------|------------------|--------------|
        | e1         | S1         | 2024-01-01 08:00 | 14.9         |
        | e2         | S1         | 2024-01-02 08:00 | 15           |
        | e3         | S1         | 2024-01-03 08:00 | 15.1         |
        | e4         | S1         | 2024-01-04 08:00 | 240          |
        | e5         | S1         | 2024-01-05 08:00 |              |
    """)
    assert flags_of(given, "prolonged").equals(table("""
        | episode_id | rule_id   | evidence           |
        |------------|-----------|--------------------|
        | e3         | prolonged | duration_min=15.1  |
        | e4         | prolonged | duration_min=240.0 |
    """))
    assert not_recorded_of(given, "prolonged")["n_not_recorded"].to_list() == [1]


def test_quiet_episodes_raise_nothing_and_miss_nothing():
    given = episodes("""
        | episode_id | subject_id | started_at       |
        |------------|------------|------------------|
        | e1         | S1         | 2024-01-01 08:00 |
    """)
    result = evaluate(given, RULES)
    assert result.flags.height == 0
    assert result.subject_flags.height == 0
    assert result.not_recorded.height == 0


def test_one_episode_can_fire_several_rules_in_rule_file_order():
    given = episodes("""
        | episode_id | subject_id | started_at       | pain | swelling | er_visit | duration_min |
        |------------|------------|------------------|------|----------|----------|--------------|
        | e1         | S1         | 2024-01-01 08:00 | 9    | true     | true     | 30           |
    """)
    assert flags_of(given).equals(table("""
        | episode_id | rule_id         | evidence          |
        |------------|-----------------|-------------------|
        | e1         | severe_pain     | pain=9            |
        | e1         | swelling        | swelling=true     |
        | e1         | prolonged       | duration_min=30.0 |
        | e1         | emergency_visit | er_visit=true     |
    """))


# --- frequent: >= 3 episodes in each of 4 back-to-back 7-day windows, any starting day ----------

def _diary(subject: str, days: list[int], start: dt.date = dt.date(2024, 1, 1)) -> str:
    lines = ["| episode_id | subject_id | started_at |", "|---|---|---|"]
    for i, d in enumerate(days):
        when = dt.datetime.combine(start + dt.timedelta(days=d), dt.time(8, 0))
        lines.append(f"| {subject}-{i + 1:02d} | {subject} | {when.isoformat(sep=' ')} |")
    return "\n".join(lines)


def test_frequent_needs_four_qualifying_weeks_not_three():
    three_weeks = [0, 1, 2, 7, 8, 9, 14, 15, 16]
    assert flags_of(episodes(_diary("S1", three_weeks)), "frequent").height == 0

    four_weeks = [0, 1, 2, 7, 8, 9, 14, 15, 16, 21, 22, 23]
    assert flags_of(episodes(_diary("S1", four_weeks)), "frequent").equals(table("""
        | episode_id | rule_id  | evidence |
        |------------|----------|----------|
        | S1-01      | frequent | weeks=4; episodes_per_week=3,3,3,3; weeks_from=2024-01-01..2024-01-28; period=2024-01-01..2024-01-24; episodes_in_period=12 |
    """))


def test_frequent_week_with_two_episodes_breaks_the_run():
    days = [0, 1, 2, 7, 8, 14, 15, 16, 21, 22, 23, 28, 29, 30]
    # Weeks from day 0: 3, 2, 3, 3, 3 -- and no other starting day gives four weeks of 3 either.
    assert flags_of(episodes(_diary("S1", days)), "frequent").height == 0


def test_frequent_counts_episodes_not_days():
    days = [0, 0, 0, 7, 7, 7, 14, 14, 14, 21, 21, 21]
    assert flags_of(episodes(_diary("S1", days)), "frequent")["episode_id"].to_list() == ["S1-01"]


def test_frequent_finds_weeks_wherever_they_start():
    # A lone cramp on Jan 1, then three a week from Jan 7. Weeks counted from the first cramp
    # (Jan 1-7, 8-14, ...) hold 2, 3, 3, 3, 2 and would miss this; weeks from Jan 7 hold 3, 3, 3, 3.
    days = [0, 6, 7, 8, 13, 14, 15, 20, 21, 22, 27, 28, 29]
    assert flags_of(episodes(_diary("S1", days)), "frequent").equals(table("""
        | episode_id | rule_id  | evidence |
        |------------|----------|----------|
        | S1-02      | frequent | weeks=4; episodes_per_week=3,3,3,3; weeks_from=2024-01-07..2024-02-03; period=2024-01-07..2024-01-30; episodes_in_period=12 |
    """))


def test_frequent_long_run_is_one_period_and_separate_runs_are_two():
    eight_weeks = [7 * w + d for w in range(8) for d in (0, 2, 4)]
    later = [200 + 7 * w + d for w in range(4) for d in (0, 1, 2)]
    flags = flags_of(episodes(_diary("S1", eight_weeks + later)), "frequent")
    assert flags["episode_id"].to_list() == ["S1-01", "S1-25"]
    assert flags["evidence"].str.contains("episodes_in_period=24").to_list() == [True, False]
    later_period = "period=2024-07-19..2024-08-11"
    assert flags["evidence"].str.contains(later_period).to_list() == [False, True]


def test_frequent_is_per_subject():
    # Two subjects with 2 episodes a week each: together 4 a week, apart never 3.
    a = [7 * w for w in range(4)] + [7 * w + 1 for w in range(4)]
    given = episodes(_diary("A", a) + "\n" + "\n".join(_diary("B", a).splitlines()[2:]))
    assert flags_of(given, "frequent").height == 0


# --- outputs: sorting, derived ids, per-subject summary ------------------------------------------

def test_flags_sorted_by_subject_time_then_rule_and_ids_derived_when_missing():
    given = episodes("""
        | episode_id | subject_id | started_at          | muscle_group | pain | swelling |
        |------------|------------|---------------------|--------------|------|----------|
        | z9         | S2         | 2024-01-01 08:00    | calf         | 8    | false    |
        |            | S1         | 2024-01-05 22:15:30 | lower_back   | 0    | true     |
        | a1         | S1         | 2024-01-02 08:00    | foot         | 9    | true     |
    """)
    got = evaluate(given, RULES).flags
    assert got.schema == pl.Schema(FLAG_SCHEMA)
    assert got.select("episode_id", "subject_id", "rule_id").equals(table("""
        | episode_id                        | subject_id | rule_id     |
        |-----------------------------------|------------|-------------|
        | a1                                | S1         | severe_pain |
        | a1                                | S1         | swelling    |
        | S1_20240105T221530_lower_back     | S1         | swelling    |
        | z9                                | S2         | severe_pain |
    """))


def test_subject_flags_summarise_each_flagged_subject_red_flags_first():
    given = episodes("""
        | episode_id | subject_id | started_at       | pain | er_visit | swelling |
        |------------|------------|------------------|------|----------|----------|
        | e1         | A          | 2024-03-01 08:00 | 0    | true     | false    |
        | e2         | B          | 2024-01-02 08:00 | 8    | false    | true     |
        | e3         | B          | 2024-02-10 08:00 | 7    | false    | false    |
        | e4         | C          | 2024-01-01 08:00 | 0    | false    | false    |
    """)
    got = evaluate(given, RULES).subject_flags
    assert got.select(
        "subject_id", "highest_severity", "total_flags", "first_flagged_date",
        "last_flagged_date", "n_severe_pain", "n_swelling", "n_emergency_visit", "n_frequent",
    ).equals(table("""
        | subject_id | highest_severity | total_flags | first_flagged_date | last_flagged_date | n_severe_pain | n_swelling | n_emergency_visit | n_frequent |
        |------------|------------------|-------------|--------------------|-------------------|---------------|------------|-------------------|------------|
        | B          | red_flag         | 3           | 2024-01-02         | 2024-02-10        | 2             | 1          | 0                 | 0          |
        | A          | advisory         | 1           | 2024-03-01         | 2024-03-01        | 0             | 0          | 1                 | 0          |
    """, {"total_flags": pl.Int64(), "first_flagged_date": pl.Date(),
          "last_flagged_date": pl.Date(), "n_severe_pain": pl.Int64(), "n_swelling": pl.Int64(),
          "n_emergency_visit": pl.Int64(), "n_frequent": pl.Int64()}))
    assert got.columns[5:] == [f"n_{r}" for r in RULES.ids]


def test_not_recorded_is_per_rule_then_subject():
    given = episodes("""
        | episode_id | subject_id | started_at       | swelling | pain |
        |------------|------------|------------------|----------|------|
        | e1         | B          | 2024-01-01 08:00 |          |      |
        | e2         | A          | 2024-01-02 08:00 |          | 1    |
        | e3         | A          | 2024-01-03 08:00 | false    | 1    |
    """)
    got = evaluate(given, RULES).not_recorded
    assert got.schema == pl.Schema(NOT_RECORDED_SCHEMA)
    assert got.select("rule_id", "subject_id", "n_episodes", "n_not_recorded").equals(table("""
        | rule_id     | subject_id | n_episodes | n_not_recorded |
        |-------------|------------|------------|----------------|
        | severe_pain | B          | 1          | 1              |
        | swelling    | A          | 2          | 1              |
        | swelling    | B          | 1          | 1              |
    """, COUNTS))


def test_a_single_flag_is_never_suppressed():
    # Red flags are for follow-up: a subject with one flagged episode is listed (no small-number
    # suppression as in aggregate outputs).
    given = episodes("""
        | episode_id | subject_id | started_at       | skin_changes |
        |------------|------------|------------------|--------------|
        | e1         | S1         | 2024-01-01 08:00 | true         |
    """)
    result = evaluate(given, RULES)
    assert result.flags["episode_id"].to_list() == ["e1"]
    assert result.subject_flags["n_skin_changes"].to_list() == [1]


def test_missing_input_column_is_an_error_not_a_skip():
    given = episodes("""
        | episode_id | subject_id | started_at       |
        |------------|------------|------------------|
        | e1         | S1         | 2024-01-01 08:00 |
    """).drop("swelling")
    with pytest.raises(ValueError, match="swelling"):
        evaluate(given, RULES)


def test_no_episodes_gives_empty_tables_with_their_columns():
    result = evaluate(episodes("| episode_id | subject_id | started_at |\n|---|---|---|"), RULES)
    assert result.flags.schema == pl.Schema(FLAG_SCHEMA)
    assert result.not_recorded.schema == pl.Schema(NOT_RECORDED_SCHEMA)
    assert result.flags.height == result.subject_flags.height == result.not_recorded.height == 0
