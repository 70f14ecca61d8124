"""The subject-day panel, as a specification: small diaries in, panel rows and summary out."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import polars as pl
import pytest

from pipeline import schema
from pipeline.errors import UserError
from pipeline.features import build_panel

DAILY_SCHEMA = schema.DAILY.polars_schema()


def table(text: str, dtypes: dict[str, pl.DataType]) -> pl.LazyFrame:
    """A small ASCII table; cells are parsed as the given dtypes, an empty cell is null."""
    lines = [ln.strip() for ln in text.strip().splitlines() if not set(ln.strip()) <= set("|-")]
    rows = [[cell.strip() for cell in ln.strip("|").split("|")] for ln in lines]
    header, body = rows[0], rows[1:]
    data = {h: [r[i] or None for r in body] for i, h in enumerate(header)}
    frame = pl.DataFrame(data, schema={h: pl.String for h in header})
    exprs = []
    for h in header:
        dtype = dtypes[h]
        if dtype == pl.Boolean:
            exprs.append(pl.col(h) == "yes")
        elif dtype == pl.Date:
            exprs.append(pl.col(h).str.to_date())
        elif isinstance(dtype, pl.Datetime):
            exprs.append(pl.col(h).str.to_datetime("%Y-%m-%d %H:%M", time_unit="us"))
        else:
            exprs.append(pl.col(h).cast(dtype))
    return frame.with_columns(exprs).lazy()


EPISODE_TYPES = {"subject_id": pl.String, "started_at": pl.Datetime("us")}
INJURY_TYPES = {"subject_id": pl.String, "date": pl.Date, "muscle_group": pl.String}
NO_INJURIES = pl.LazyFrame(schema=INJURY_TYPES)


def daily(text: str) -> pl.LazyFrame:
    return table(text, DAILY_SCHEMA)


def test_episodes_are_counted_on_the_calendar_date_they_start():
    days = daily("""
        | subject_id | date       | fluid_l |
        |------------|------------|---------|
        | a          | 2026-01-01 | 2       |
        | a          | 2026-01-02 | 2       |
        | a          | 2026-01-03 | 2       |
        | b          | 2026-01-01 | 1       |
    """)
    episodes = table("""
        | subject_id | started_at       |
        |------------|------------------|
        | a          | 2026-01-01 23:59 |
        | a          | 2026-01-02 00:00 |
        | a          | 2026-01-02 13:10 |
        | b          | 2026-01-01 07:00 |
        | b          | 2026-01-02 07:00 |
        | c          | 2026-01-01 07:00 |
    """, EPISODE_TYPES)
    panel = build_panel(days, episodes, NO_INJURIES)
    got = panel.frame.select("subject_id", pl.col("date").cast(pl.String), "episodes").rows()
    assert got == [
        ("a", "2026-01-01", 1),
        ("a", "2026-01-02", 2),
        ("a", "2026-01-03", 0),
        ("b", "2026-01-01", 1),
    ]
    # b on 01-02 (no daily row) and c (no daily rows at all) are counted, not lost.
    assert panel.summary["n_episodes"] == 6
    assert panel.summary["n_episodes_on_logged_days"] == 4
    assert panel.summary["episodes_outside_logged_days"] == 2
    assert panel.summary["n_subjects"] == 2
    assert panel.summary["n_subject_days"] == 4


def test_recent_injury_covers_the_30_days_before_the_day_only():
    start = date(2026, 1, 1)
    days = pl.LazyFrame({
        "subject_id": ["a"] * 40 + ["b"] * 40,
        "date": [start + timedelta(days=i) for i in range(40)] * 2,
        "sitting_h": [5.0] * 80,
    })
    injuries = table("""
        | subject_id | date       | muscle_group |
        |------------|------------|--------------|
        | a          | 2026-01-05 | calf         |
    """, INJURY_TYPES)
    panel = build_panel(days, pl.LazyFrame(schema=EPISODE_TYPES), injuries)
    a = panel.frame.filter(pl.col("subject_id") == "a")
    flag = dict(zip(a["date"].to_list(), a["recent_injury"].to_list()))
    injury = date(2026, 1, 5)
    assert flag[injury] == 0.0  # the injury day itself: d−0 is not in d−30 … d−1
    assert flag[injury + timedelta(days=1)] == 1.0  # d−1
    assert flag[injury + timedelta(days=30)] == 1.0  # d−30
    assert flag[injury + timedelta(days=31)] == 0.0  # d−31
    assert flag[injury - timedelta(days=1)] == 0.0
    assert sum(flag.values()) == 30
    # Another subject's injury never counts.
    assert panel.frame.filter(pl.col("subject_id") == "b")["recent_injury"].sum() == 0


def test_two_injuries_in_the_window_flag_each_day_once():
    days = daily("""
        | subject_id | date       |
        |------------|------------|
        | a          | 2026-01-10 |
    """)
    injuries = table("""
        | subject_id | date       | muscle_group |
        |------------|------------|--------------|
        | a          | 2026-01-01 | calf         |
        | a          | 2026-01-02 | neck_shoulder|
        | a          | 2026-01-02 | calf         |
    """, INJURY_TYPES)
    panel = build_panel(days, pl.LazyFrame(schema=EPISODE_TYPES), injuries)
    assert panel.frame.height == 1
    assert panel.frame["recent_injury"].to_list() == [1.0]


def test_without_an_injuries_table_recent_injury_is_absent_not_no():
    days = daily("""
        | subject_id | date       |
        |------------|------------|
        | a          | 2026-01-10 |
    """)
    panel = build_panel(days, pl.LazyFrame(schema=EPISODE_TYPES), None)
    assert "recent_injury" not in panel.frame.columns
    assert "injuries" in panel.absent["recent_injury"]


def test_factor_columns_a_study_did_not_log_are_left_out_with_a_note():
    days = daily("""
        | subject_id | date       | fluid_l | stress |
        |------------|------------|---------|--------|
        | a          | 2026-01-01 | 2       | 3      |
    """)
    panel = build_panel(days, pl.LazyFrame(schema=EPISODE_TYPES), NO_INJURIES)
    assert set(panel.features) == {"fluid_l", "stress", "recent_injury", "fluid_below_usual"}
    assert panel.absent["sitting_h"] == "not logged in this dataset (daily has no 'sitting_h' values)"
    assert "exercise_min" in panel.absent["training_load_prev_day"]
    assert panel.summary["features_absent"] == panel.absent
    assert set(panel.frame.columns) == {"subject_id", "date", "episodes", "fluid_l", "stress",
                                        "recent_injury", "fluid_below_usual"}


def test_features_are_in_model_units():
    days = daily("""
        | subject_id | date       | exercise_min | exercise_rpe | heat_c | caffeine_mg | electrolytes | poor_posture | alcohol_units |
        |------------|------------|--------------|--------------|--------|-------------|--------------|--------------|---------------|
        | a          | 2026-01-01 | 60           | 6            | 25     | 250         | yes          | no           | 2             |
        | a          | 2026-01-02 | 0            |              | -10    | 0           | no           |              | 0             |
        | a          | 2026-01-03 | 45           |              |        |             |              |              |               |
    """)
    panel = build_panel(days, pl.LazyFrame(schema=EPISODE_TYPES), NO_INJURIES)
    f = panel.frame
    assert f["exercise_min"].to_list() == [2.0, 0.0, 1.5]  # per 30 min
    assert f["heat_c"].to_list() == [5.0, -2.0, None]  # per 5 °C
    assert f["caffeine_mg"].to_list() == [2.5, 0.0, None]  # per 100 mg
    assert f["electrolytes"].to_list() == [1.0, 0.0, None]
    assert f["poor_posture"].to_list() == [0.0, None, None]
    assert f["alcohol_units"].to_list() == [2.0, 0.0, None]
    # RPE is 0 on a rest day without a rating, but stays missing on an exercise day without one.
    assert f["exercise_rpe"].to_list() == [6.0, 0.0, None]
    assert all(f[c].dtype == pl.Float64 for c in panel.features)


def test_secondary_features():
    days = daily("""
        | subject_id | date       | exercise_min | exercise_rpe | sleep_h |
        |------------|------------|--------------|--------------|---------|
        | a          | 2026-01-01 | 60           | 5            | 5.9     |
        | a          | 2026-01-02 | 30           | 4            | 6       |
        | a          | 2026-01-04 | 0            |              | 8       |
        | a          | 2026-01-05 | 10           | 2            |         |
    """)
    panel = build_panel(days, pl.LazyFrame(schema=EPISODE_TYPES), NO_INJURIES)
    f = panel.frame
    # previous calendar day's minutes × RPE, per 100 AU; missing when that day was not logged
    assert f["training_load_prev_day"].to_list() == [None, 3.0, None, 0.0]
    assert f["short_sleep"].to_list() == [1.0, 0.0, 0.0, None]
    # four logged days cannot support a 7/28-day load ratio
    assert f["acute_chronic_load_ratio"].null_count() == 4


def test_fluid_below_usual_compares_with_the_subjects_own_median():
    n = 9
    days = pl.LazyFrame({
        "subject_id": ["a"] * n + ["b"] * 3,
        "date": [date(2026, 1, 1) + timedelta(days=i) for i in range(n)]
        + [date(2026, 1, 1) + timedelta(days=i) for i in range(3)],
        # a's median is 2.0 L: 1.5 is ≥ 0.5 L below it, 1.6 is not
        "fluid_l": [2.0, 2.0, 2.0, 2.0, 2.0, 2.5, 3.0, 1.5, 1.6] + [0.1, 3.0, 3.0],
    })
    panel = build_panel(days, pl.LazyFrame(schema=EPISODE_TYPES), NO_INJURIES)
    got = panel.frame["fluid_below_usual"].to_list()
    assert got[:n] == [0.0] * 7 + [1.0, 0.0]
    assert got[n:] == [None, None, None]  # b has fewer than 7 days with fluid recorded


def test_acute_chronic_load_ratio_on_a_steady_then_doubled_load():
    n = 35
    minutes = [30.0] * 28 + [60.0] * 7
    days = pl.LazyFrame({
        "subject_id": ["a"] * n,
        "date": [date(2026, 1, 1) + timedelta(days=i) for i in range(n)],
        "exercise_min": minutes,
        "exercise_rpe": [5.0] * n,
    })
    panel = build_panel(days, pl.LazyFrame(schema=EPISODE_TYPES), NO_INJURIES)
    ratio = panel.frame["acute_chronic_load_ratio"].to_list()
    assert ratio[:20] == [None] * 20  # fewer than 21 of 28 days logged
    assert ratio[27] == pytest.approx(1.0 / 0.5)  # steady load: ratio 1.0, i.e. 2 half-units
    # last day: acute mean 300 AU, chronic mean (21×150 + 7×300)/28 = 187.5 AU
    assert ratio[-1] == pytest.approx((300 / 187.5) / 0.5)


def test_custom_factors_are_scaled_as_declared_and_absent_ones_noted():
    airq = schema.CustomFactor(column="airq", factor="air_quality", label="Air quality",
                               kind="numeric", unit="index points", scale=10)
    med = schema.CustomFactor(column="on_statin", factor="medication", label="Statin",
                              kind="boolean")
    missing = schema.CustomFactor(column="pollen", factor="pollen", label="Pollen",
                                  kind="numeric", unit="grains/m³")
    days = pl.LazyFrame({
        "subject_id": ["a", "a"],
        "date": [date(2026, 1, 1), date(2026, 1, 2)],
        "airq": [35.0, 120.0],
        "on_statin": [True, False],
    })
    panel = build_panel(days, pl.LazyFrame(schema=EPISODE_TYPES), NO_INJURIES,
                        custom_factors=(airq, med, missing))
    assert panel.frame["airq"].to_list() == [3.5, 12.0]
    assert panel.frame["on_statin"].to_list() == [1.0, 0.0]
    assert panel.features["airq"].unit == "per 10 index points"
    assert panel.features["on_statin"].unit == "yes vs no"
    assert "pollen" in panel.absent and "dataset.toml" in panel.absent["pollen"]


def test_a_custom_factor_may_not_shadow_a_panel_column():
    clash = schema.CustomFactor(column="episodes", factor="x", label="x", kind="numeric")
    days = daily("""
        | subject_id | date       |
        |------------|------------|
        | a          | 2026-01-01 |
    """)
    with pytest.raises(UserError, match="clashes"):
        build_panel(days, pl.LazyFrame(schema=EPISODE_TYPES), NO_INJURIES,
                    custom_factors=(clash,))


def test_store_shaped_inputs_with_provenance_columns():
    days = daily("""
        | subject_id | date       | stress |
        |------------|------------|--------|
        | a          | 2026-01-01 | 3      |
    """).with_columns(source_file=pl.lit("daily.csv"), source_line=pl.lit(2, pl.Int64))
    episodes = pl.LazyFrame(
        {"episode_id": [None], "subject_id": ["a"], "started_at": [datetime(2026, 1, 1, 5)],
         "muscle_group": ["calf"], "source_file": ["episodes.csv"], "source_line": [2]},
        schema_overrides={"episode_id": pl.String, "started_at": pl.Datetime("us")},
    )
    panel = build_panel(days, episodes, NO_INJURIES)
    assert panel.frame["episodes"].to_list() == [1]
    assert panel.frame["episodes"].dtype == pl.Int64


def test_unsorted_input_gives_a_sorted_panel():
    days = daily("""
        | subject_id | date       | stress |
        |------------|------------|--------|
        | b          | 2026-01-02 | 1      |
        | a          | 2026-01-02 | 2      |
        | b          | 2026-01-01 | 3      |
        | a          | 2026-01-01 | 4      |
    """)
    panel = build_panel(days, pl.LazyFrame(schema=EPISODE_TYPES), NO_INJURIES)
    assert panel.frame.select("subject_id", pl.col("date").cast(pl.String), "stress").rows() == [
        ("a", "2026-01-01", 4.0), ("a", "2026-01-02", 2.0),
        ("b", "2026-01-01", 3.0), ("b", "2026-01-02", 1.0)]


def test_a_factor_column_with_no_values_at_all_counts_as_not_logged():
    # The store returns every contract column; a factor the study never logged is all-null there.
    days = daily("""
        | subject_id | date       | fluid_l | stress |
        |------------|------------|---------|--------|
        | a          | 2026-01-01 | 2       |        |
        | a          | 2026-01-02 | 3       |        |
    """)
    panel = build_panel(days, pl.LazyFrame(schema=EPISODE_TYPES), NO_INJURIES)
    assert "stress" not in panel.features
    assert panel.absent["stress"] == "not logged in this dataset (daily has no 'stress' values)"


@pytest.mark.parametrize("seed", range(3))
def test_runs_of_whole_subjects_are_ordered_like_a_full_sort(seed):
    """The store's bucket parts arrive as sorted runs of whole subjects in bucket order: the
    panel's run reordering must equal a full sort by subject and date, and anything that is not
    runs of whole subjects (a subject split, dates out of order) must take the full sort."""
    import numpy as np

    from pipeline.features.panel import _sorted

    rng = np.random.default_rng(seed)
    for _ in range(100):
        rows = []
        for s in rng.permutation(int(rng.integers(1, 8))):
            days = np.sort(rng.choice(30, int(rng.integers(1, 6)), replace=False))
            rows += [(f"S{s:02d}", date(2025, 1, 1) + timedelta(days=int(d))) for d in days]
        if rng.random() < 0.3:
            rows = [rows[i] for i in rng.permutation(len(rows))]
        frame = pl.DataFrame(rows, schema=["subject_id", "date"], orient="row").with_row_index()
        assert _sorted(frame).equals(frame.sort("subject_id", "date"))
