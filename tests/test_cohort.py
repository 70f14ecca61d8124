"""Spec tests for the cohort table (cohort.csv): small subject, diary and episode tables in, the
expected rows out, checked against counts done by hand (in the comments).

Counts are compared with the disclosure policy switched off (``EXACT``) so the arithmetic is
visible; a separate test shows what the shipped policy does to the same table.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.describe.cohort import COHORT, cohort_table, combine, quantiles_from_counts, \
    summarise_bucket
from pipeline.disclosure import DisclosurePolicy, violations
from pipeline.features import build_panel
from tests.test_redflags_tables import episodes, parse_table, table

EXACT = DisclosurePolicy(threshold=0, rounding_multiple=1)

SUBJECTS = """
    | subject_id | age_band | sex |
    |------------|----------|-----|
    | S1         | 60-69    | F   |
    | S2         | 60-69    | F   |
    | S3         | 60-69    | M   |
    | S4         | 60-69    | M   |
    | S5         | 18-29    | F   |
    | S6         | 18-29    | X   |
    | S7         | 40-49    | M   |
    | S8         |          |     |
"""
# S1 logs 3 days, S2 2, everyone else 1 (11 logged days); sitting_h missing once (S2).
DAILY = """
    | subject_id | date       | sitting_h | electrolytes |
    |------------|------------|-----------|--------------|
    | S1         | 2024-01-01 | 4         | true         |
    | S1         | 2024-01-02 | 6         | false        |
    | S1         | 2024-01-03 | 8         |              |
    | S2         | 2024-01-01 | 5         | false        |
    | S2         | 2024-01-02 |           | false        |
    | S3         | 2024-01-01 | 10        | false        |
    | S4         | 2024-01-01 | 2         | false        |
    | S5         | 2024-01-01 | 7         | false        |
    | S6         | 2024-01-01 | 3         | false        |
    | S7         | 2024-01-01 | 9         | false        |
    | S8         | 2024-01-01 | 1         | false        |
"""
# S3's episode falls on a day S3 did not log (counted per subject, not in the rate).
EPISODES = """
    | episode_id | subject_id | started_at       | muscle_group | pain | duration_min | swelling |
    |------------|------------|------------------|--------------|------|--------------|----------|
    | e1         | S1         | 2024-01-01 02:00 | calf         | 8    | 20           | false    |
    | e2         | S1         | 2024-01-01 14:00 | foot         | 3    |              | true     |
    | e3         | S2         | 2024-01-01 23:30 | hamstring    |      | 2            |          |
    | e4         | S3         | 2024-01-05 10:00 | calf         | 7    | 4            | false    |
    | e5         | S5         | 2024-01-01 05:59 | calf         | 1    | 16           | false    |
"""


def _frame(text: str, dtypes: dict) -> pl.LazyFrame:
    raw = parse_table(text)
    return pl.DataFrame({c: [r[c] for r in raw] for c in raw[0]}).lazy().with_columns(
        pl.col(c).cast(pl.String).str.to_lowercase().replace({"true": "1", "false": "0"})
        .cast(pl.Int8).cast(t) if t == pl.Boolean else pl.col(c).cast(pl.String).cast(t)
        if t != pl.Date else pl.col(c).str.to_date() for c, t in dtypes.items())


def _cohort(policy=EXACT, frequent=("S1",)) -> pl.DataFrame:
    subjects = _frame(SUBJECTS, {"subject_id": pl.String, "age_band": pl.String,
                                 "sex": pl.String})
    daily = _frame(DAILY, {"subject_id": pl.String, "date": pl.Date, "sitting_h": pl.Float64,
                           "electrolytes": pl.Boolean})
    eps = episodes(EPISODES)
    panel = build_panel(daily, eps)
    features = [f for f in panel.features.values() if f.role == "core"]
    met = None if frequent is None else pl.LazyFrame({"subject_id": list(frequent)},
                                                      schema={"subject_id": pl.String})
    parts = summarise_bucket(subjects, panel.frame.lazy(), eps, features, met)
    return cohort_table(parts, features, policy=policy)


def _rows(frame: pl.DataFrame, characteristic: str) -> pl.DataFrame:
    return (frame.filter(pl.col("characteristic") == characteristic)
            .select("level", "n", "denominator", "percent", "median", "q1", "q3"))


NUM = {"n": pl.Int64(), "denominator": pl.Int64(), "percent": pl.Float64(),
       "median": pl.Float64(), "q1": pl.Float64(), "q3": pl.Float64()}


def test_subjects_by_age_band_and_sex_with_missing_as_its_own_level():
    got = _cohort()
    assert _rows(got, "age_band").filter(pl.col("n") > 0).equals(table("""
        | level        | n | denominator | percent | median | q1 | q3 |
        |--------------|---|-------------|---------|--------|----|----|
        | 18-29        | 2 | 8           | 25.0    |        |    |    |
        | 40-49        | 1 | 8           | 12.5    |        |    |    |
        | 60-69        | 4 | 8           | 50.0    |        |    |    |
        | not recorded | 1 | 8           | 12.5    |        |    |    |
    """, NUM))
    assert _rows(got, "sex").equals(table("""
        | level        | n | denominator | percent | median | q1 | q3 |
        |--------------|---|-------------|---------|--------|----|----|
        | F            | 3 | 8           | 37.5    |        |    |    |
        | M            | 3 | 8           | 37.5    |        |    |    |
        | X            | 1 | 8           | 12.5    |        |    |    |
        | not recorded | 1 | 8           | 12.5    |        |    |    |
    """, NUM))


def test_days_logged_and_episodes_per_subject_and_per_30_logged_days():
    got = _cohort()
    # days logged: 3 2 1 1 1 1 1 1 -> median 1, q3 at position 5.25 of the sorted list = 1.25
    assert _rows(got, "days logged per subject").equals(table("""
        | level | n | denominator | percent | median | q1 | q3   |
        |-------|---|-------------|---------|--------|----|------|
        | all   | 8 |             |         | 1      | 1  | 1.25 |
        | none  | 0 | 8           | 0.0     |        |    |      |
    """, NUM))
    # episodes: S1 2, S2 1, S3 1, S5 1, four subjects none -> 0 0 0 0 1 1 1 2
    assert _rows(got, "episodes per subject").equals(table("""
        | level | n | denominator | percent | median | q1 | q3 |
        |-------|---|-------------|---------|--------|----|----|
        | all   | 8 |             |         | 0.5    | 0  | 1  |
        | none  | 4 | 8           | 50.0    |        |    |    |
    """, NUM))
    # per 30 logged days: S1 2/3*30 = 20, S2 1/2*30 = 15, S5 30, S3 0 (its episode is on an
    # unlogged day), the rest 0 -> 0 0 0 0 0 15 20 30
    assert _rows(got, "episodes per 30 logged days").equals(table("""
        | level | n | denominator | percent | median | q1 | q3    |
        |-------|---|-------------|---------|--------|----|-------|
        | all   | 8 |             |         | 0      | 0  | 16.25 |
    """, NUM))
    assert _rows(got, "frequent cramps advisory").equals(table("""
        | level   | n | denominator | percent | median | q1 | q3 |
        |---------|---|-------------|---------|--------|----|----|
        | met     | 1 | 8           | 12.5    |        |    |    |
        | not met | 7 | 8           | 87.5    |        |    |    |
    """, NUM))


def test_daily_factors_per_logged_day_and_missing_never_folded_into_no():
    got = _cohort()
    # sitting_h recorded on 10 of 11 days, from 8 subjects: 1 2 3 4 5 6 7 8 9 10
    assert _rows(got, "sitting_h").equals(table("""
        | level        | n  | denominator | percent | median | q1   | q3   |
        |--------------|----|-------------|---------|--------|------|------|
        | all          | 10 |             |         | 5.5    | 3.25 | 7.75 |
        | recorded     | 10 | 11          | 90.9    |        |      |      |
        | not recorded | 1  | 11          | 9.1     |        |      |      |
    """, NUM))
    assert _rows(got, "electrolytes").equals(table("""
        | level        | n | denominator | percent | median | q1 | q3 |
        |--------------|---|-------------|---------|--------|----|----|
        | yes          | 1 | 11          | 9.1     |        |    |    |
        | no           | 9 | 11          | 81.8    |        |    |    |
        | not recorded | 1 | 11          | 9.1     |        |    |    |
    """, NUM))


def test_episode_characteristics_night_duration_pain_and_signs():
    got = _cohort()
    # night is 22:00-06:00: e1 02:00, e3 23:30 and e5 05:59; e2 14:00 and e4 10:00 are day
    assert _rows(got, "time of day").select("level", "n").equals(table("""
        | level               | n |
        |---------------------|---|
        | night (22:00–06:00) | 3 |
        | day (06:00–22:00)   | 2 |
    """, {"n": pl.Int64()}))
    # durations 20, 2, 4, 16 from 4 subjects: fewer than 8, so no median; over 15: e1 and e5
    assert _rows(got, "duration_min").select("level", "n", "median").equals(table("""
        | level          | n | median |
        |----------------|---|--------|
        | all            | 4 |        |
        | over 15 min    | 2 |        |
        | 15 min or less | 2 |        |
        | not recorded   | 1 |        |
    """, {"n": pl.Int64(), "median": pl.Float64()}))
    pain = _rows(got, "pain").filter(pl.col("n") > 0).select("level", "n")
    assert pain.equals(table("""
        | level        | n |
        |--------------|---|
        | all          | 4 |
        | 7 or more    | 2 |
        | 1            | 1 |
        | 3            | 1 |
        | 7            | 1 |
        | 8            | 1 |
        | not recorded | 1 |
    """, {"n": pl.Int64()}))
    assert _rows(got, "swelling").select("level", "n").equals(table("""
        | level        | n |
        |--------------|---|
        | yes          | 1 |
        | no           | 3 |
        | not recorded | 1 |
    """, {"n": pl.Int64()}))
    assert _rows(got, "muscle_group").filter(pl.col("n") > 0).select("level", "n").equals(
        table("""
        | level     | n |
        |-----------|---|
        | calf      | 3 |
        | foot      | 1 |
        | hamstring | 1 |
    """, {"n": pl.Int64()}))


def test_without_a_frequent_rule_the_share_is_not_recorded_rather_than_zero():
    rows = _rows(_cohort(frequent=None), "frequent cramps advisory")
    assert rows["level"].to_list() == ["not recorded"] and rows["n"].to_list() == [None]


def test_the_shipped_policy_suppresses_small_counts_and_derives_percent_from_rounded_ones():
    got = _cohort(policy=DisclosurePolicy())
    assert violations(got).height == 0
    assert got.columns == list(COHORT.names)
    sitting = _rows(got, "sitting_h")
    # 10 recorded days of 11: both round to 10, so 100%; 1 missing day is suppressed
    assert sitting["n"].to_list() == [10, 10, None]
    assert sitting["percent"].to_list() == [None, 100.0, None]


def test_bucket_parts_combine_to_the_whole():
    subjects = _frame(SUBJECTS, {"subject_id": pl.String, "age_band": pl.String,
                                 "sex": pl.String})
    daily = _frame(DAILY, {"subject_id": pl.String, "date": pl.Date, "sitting_h": pl.Float64,
                           "electrolytes": pl.Boolean})
    eps = episodes(EPISODES)
    panel = build_panel(daily, eps)
    features = [f for f in panel.features.values() if f.role == "core"]
    whole = cohort_table(summarise_bucket(subjects, panel.frame.lazy(), eps, features), features,
                         policy=EXACT)
    buckets = [["S1", "S2", "S3"], ["S4", "S5", "S6", "S7", "S8"]]
    parts = [summarise_bucket(*(lf.filter(pl.col("subject_id").is_in(b))
                                for lf in (subjects, panel.frame.lazy(), eps)), features)
             for b in buckets]
    assert cohort_table(combine(parts), features, policy=EXACT).equals(whole)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantiles_from_counts_equal_numpy_on_the_expanded_values(seed):
    rng = np.random.default_rng(seed)
    values = rng.choice(np.arange(0, 30, 0.5), size=12, replace=False)
    counts = rng.integers(1, 6, size=12)
    expected = np.quantile(np.repeat(values, counts), [0.5, 0.25, 0.75])
    np.testing.assert_allclose(quantiles_from_counts(values, counts), expected, rtol=1e-12)
