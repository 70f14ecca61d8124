"""Synthetic data generator: determinism, the bundled sample, the input contract and realism.

Statistical recovery of the planted effects lives in ``test_synth_stats.py``.
"""

from __future__ import annotations

import filecmp
import json
import re
import tomllib
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import schema, synth
from pipeline.errors import UserError
from tests.conftest import SAMPLE_DIR

#: The arguments of `make sample` (cramp synth --out data/sample --subjects 200 --days 90 ...).
SAMPLE_ARGS = dict(n_subjects=200, n_days=90, seed=20261128)


@pytest.fixture(scope="module")
def small():
    return synth.generate(60, 45, seed=3)


@pytest.fixture(scope="module")
def sample():
    return synth.generate(**SAMPLE_ARGS)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- determinism and the bundled sample ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_same_arguments_give_byte_identical_files(tmp_path, fmt):
    for run in ("a", "b"):
        synth.write_dataset(synth.generate(25, 30, seed=11, confounded=True), tmp_path / run / "ds",
                            fmt=fmt)
    a, b = tmp_path / "a" / "ds", tmp_path / "b" / "ds"
    assert _files(a) == _files(b)
    assert _files(a) == sorted([f"{t}.{fmt}" for t in schema.TABLES] + ["dataset.toml"])
    match, mismatch, errors = filecmp.cmpfiles(a, b, _files(a), shallow=False)
    assert mismatch == [] and errors == []
    assert filecmp.cmp(tmp_path / "a" / "ds.truth.json", tmp_path / "b" / "ds.truth.json",
                       shallow=False)


def test_a_different_seed_gives_different_data():
    a, b = synth.generate(20, 20, seed=1), synth.generate(20, 20, seed=2)
    assert not a.daily.equals(b.daily)


def test_regenerating_the_bundled_sample_reproduces_it_byte_for_byte(tmp_path):
    out = tmp_path / SAMPLE_DIR.name
    synth.write_dataset(synth.generate(**SAMPLE_ARGS), out, fmt="csv")
    assert _files(out) == _files(SAMPLE_DIR)
    _, mismatch, errors = filecmp.cmpfiles(out, SAMPLE_DIR, _files(out), shallow=False)
    assert mismatch == [] and errors == [], "data/sample is stale: regenerate with `make sample`"
    truth = synth.truth_path(out)
    assert truth.name == synth.truth_path(SAMPLE_DIR).name == "sample.truth.json"
    assert filecmp.cmp(truth, synth.truth_path(SAMPLE_DIR), shallow=False)


def test_truth_is_written_beside_the_dataset_never_inside(tmp_path, small):
    synth.write_dataset(small, tmp_path / "study")
    assert (tmp_path / "study.truth.json").is_file()
    assert not any("truth" in name for name in _files(tmp_path / "study"))
    doc = json.loads((tmp_path / "study.truth.json").read_text())
    assert doc["args"] == {"n_subjects": 60, "n_days": 45, "seed": 3, "confounded": False,
                           "start_date": "2026-01-05", "custom_factor": True,
                           "block_subjects": 4096}
    assert doc["written"] == {"format": "csv", "dataset_dir": "study"}


def test_rewriting_in_another_format_replaces_the_tables(tmp_path, small):
    synth.write_dataset(small, tmp_path / "ds", fmt="csv")
    synth.write_dataset(synth.generate(10, 5, seed=1, custom_factor=False), tmp_path / "ds",
                        fmt="parquet")
    assert _files(tmp_path / "ds") == sorted(f"{t}.parquet" for t in schema.TABLES)


@pytest.mark.parametrize("args", [(0, 10, 1), (10, 0, 1), (10, 10, -1), (10.5, 10, 1)])
def test_bad_arguments_are_user_errors(args):
    with pytest.raises(UserError, match="synth"):
        synth.generate(*args)


def test_unknown_format_is_a_user_error(tmp_path, small):
    with pytest.raises(UserError, match="format"):
        synth.write_dataset(small, tmp_path / "ds", fmt="xlsx")


# --- the input contract (derived from pipeline.schema, never restated) ---------------------------


def _assert_conforms(df: pl.DataFrame, table: schema.Table, extra=()) -> None:
    columns = {c.name: c for c in table.columns} | {c.name: c for c in extra}
    assert set(table.required_columns) <= set(df.columns) <= set(columns)
    for name in df.columns:
        col, s = columns[name], df[name]
        assert s.dtype == col.dtype, name
        if not col.nullable:
            assert s.null_count() == 0, name
        v = s.drop_nulls()
        if col.minimum is not None:
            above = v >= col.minimum if col.minimum_inclusive else v > col.minimum
            assert above.all(), name
        if col.maximum is not None:
            assert (v <= col.maximum).all(), name
        if col.values:
            assert set(v.unique()) <= set(col.values), name
        if col.kind == "token":
            assert v.str.contains(schema.TOKEN_PATTERN).all(), name
        if col.max_chars is not None:
            assert (v.str.len_chars() <= col.max_chars).all(), name


@pytest.mark.parametrize("confounded", [False, True])
def test_every_table_conforms_to_the_schema(confounded):
    ds = synth.generate(80, 60, seed=5, confounded=confounded)
    for name, df in ds.tables().items():
        extra = [cf.as_column() for cf in ds.custom_factors] if name == "daily" else []
        _assert_conforms(df, schema.TABLES[name], extra)
    # All core factor columns are present, in schema order, then the custom one.
    assert ds.daily.columns == ["subject_id", "date", *schema.FACTOR_COLUMNS, "magnesium_mg"]


def test_keys_are_unique_including_the_fallback_key(sample):
    for name, table in schema.TABLES.items():
        df = sample.tables()[name]
        keyed = df.drop_nulls(list(table.key))
        assert not keyed.select(table.key).is_duplicated().any(), name
        if table.fallback_key:
            assert not df.select(table.fallback_key).is_duplicated().any(), name
    # Most episodes carry an id like E000000001; a few have none (readers derive one).
    ids = sample.episodes["episode_id"]
    assert ids.drop_nulls().str.contains(r"^E\d{9}$").all()
    assert 0.01 < ids.null_count() / ids.len() < 0.06


def test_every_row_references_a_known_subject(sample):
    known = set(sample.subjects["subject_id"])
    for name in ("daily", "injuries", "episodes"):
        assert set(sample.tables()[name]["subject_id"]) <= known


def test_no_identifiers_only_pseudonymous_subject_tokens(sample):
    assert sample.subjects["subject_id"].str.contains(r"^S\d{5}$").all()
    assert sample.subjects["subject_id"].head(2).to_list() == ["S00001", "S00002"]
    def normalise(name):
        return re.sub(r"[^a-z0-9]", "", name.lower())
    for df in sample.tables().values():
        assert not {normalise(c) for c in df.columns} & set(schema.IDENTIFIER_COLUMN_NAMES)


def test_subject_ids_widen_for_large_studies():
    ds = synth.generate(100_001, 1, seed=1, custom_factor=False)
    assert ds.subjects["subject_id"][-1] == "S100001"
    assert ds.subjects["subject_id"].str.len_chars().unique().to_list() == [7]


def test_csv_text_reads_back_to_the_same_tables(tmp_path, sample):
    synth.write_dataset(sample, tmp_path / "ds")
    for name, df in sample.tables().items():
        text = (tmp_path / "ds" / f"{name}.csv").read_text()
        assert text.splitlines()[0] == ",".join(df.columns)
        back = pl.read_csv(tmp_path / "ds" / f"{name}.csv", schema=df.schema)
        assert back.equals(df), name
    episodes = pl.read_csv(tmp_path / "ds" / "episodes.csv", infer_schema=False)
    assert episodes["started_at"].str.contains(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$").all()
    spellings = set(schema.TRUE_SPELLINGS + schema.FALSE_SPELLINGS)
    assert set(episodes["swelling"].drop_nulls()) <= spellings


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_other_formats_read_back_to_the_same_tables(tmp_path, small, fmt):
    synth.write_dataset(small, tmp_path / "ds", fmt=fmt)
    for name, df in small.tables().items():
        path = tmp_path / "ds" / f"{name}.{fmt}"
        if fmt == "parquet":
            back = pl.read_parquet(path)
        else:
            back = pl.read_ndjson(path, schema={c: pl.String if t in (pl.Date, pl.Datetime("us"))
                                                else t for c, t in df.schema.items()})
            back = back.with_columns(pl.col(c).str.to_date() if t == pl.Date else
                                     pl.col(c).str.to_datetime(time_unit="us")
                                     for c, t in df.schema.items()
                                     if t in (pl.Date, pl.Datetime("us")))
        assert back.equals(df), name


def test_dataset_toml_declares_the_custom_factor(tmp_path, small):
    synth.write_dataset(small, tmp_path / "ds")
    declared = tomllib.loads((tmp_path / "ds" / "dataset.toml").read_text())["custom_factors"]
    factors = [schema.CustomFactor(**d) for d in declared]
    assert factors == list(small.custom_factors)
    assert [f.column for f in factors] == ["magnesium_mg"] and factors[0].scale == 100


def test_the_bundled_dataset_toml_is_read_by_the_toolkit(sample):
    from pipeline.dataset_config import load_dataset_config

    assert tuple(load_dataset_config(SAMPLE_DIR).custom_factors) == sample.custom_factors


def test_without_the_custom_factor_there_is_no_toml_and_no_column(tmp_path):
    ds = synth.generate(20, 10, seed=1, custom_factor=False)
    assert "magnesium_mg" not in ds.daily.columns and "magnesium_mg" not in ds.truth["planted"]
    synth.write_dataset(ds, tmp_path / "ds")
    assert not (tmp_path / "ds" / "dataset.toml").exists()


# --- realism -------------------------------------------------------------------------------------


def test_subject_days_episodes_and_injuries_at_plausible_rates(sample):
    r = sample.truth["realized"]
    assert 0.16 < r["mean_episodes_per_subject_day"] < 0.22
    assert r["expected_mean_episodes_per_subject_day"] == pytest.approx(0.19)
    # Some subjects log only part of the period: days at risk vary.
    per_subject = sample.daily.group_by("subject_id").len()["len"]
    assert per_subject.max() == 90 and per_subject.min() < 60
    assert 0.2 < sample.injuries.height / 200 < 1.0  # roughly one injury a person-year or less
    assert r["episodes_outside_logged_days"] > 0  # a few cramps logged on unlogged days


def test_each_factor_has_a_few_percent_missing_values(sample):
    for c in [*schema.FACTOR_COLUMNS, "magnesium_mg"]:
        assert 0.003 < sample.daily[c].null_count() / sample.daily.height < 0.06, c


def test_each_factor_varies_within_subjects(sample):
    for c in [*schema.FACTOR_COLUMNS, "magnesium_mg"]:
        varying = (sample.daily.group_by("subject_id").agg(pl.col(c).cast(pl.Float64).std() > 0)
                   [c].mean())
        # Non-takers of magnesium and non-drinkers (about a quarter) log a constant 0.
        floor = {"magnesium_mg": 0.15, "alcohol_units": 0.6}.get(c, 0.8)
        assert varying > floor, c


def test_rpe_is_zero_exactly_on_days_without_exercise(sample):
    both = sample.daily.drop_nulls(["exercise_min", "exercise_rpe"])
    rest = both["exercise_min"] == 0
    assert (both.filter(rest)["exercise_rpe"] == 0).all()
    assert (both.filter(~rest)["exercise_rpe"] >= 1).all()


def test_fluid_is_higher_on_hot_and_exercise_days(sample):
    d = sample.daily.drop_nulls(["fluid_l", "heat_c", "exercise_min"]).with_columns(
        (pl.col(c) - pl.col(c).mean().over("subject_id")).alias(c)
        for c in ("fluid_l", "heat_c", "exercise_min"))
    assert np.corrcoef(d["fluid_l"], d["heat_c"])[0, 1] > 0.1
    assert np.corrcoef(d["fluid_l"], d["exercise_min"])[0, 1] > 0.3


def test_heat_follows_the_season():
    ds = synth.generate(50, 365, seed=2, custom_factor=False)
    by_month = (ds.daily.group_by(pl.col("date").dt.month()).agg(pl.col("heat_c").mean())
                .sort("date"))
    assert by_month["heat_c"][6] - by_month["heat_c"][0] > 12  # July is much hotter than January


def test_episodes_look_like_cramps(sample):
    e = sample.episodes
    share = e["muscle_group"].value_counts(normalize=True)
    calf_foot = share.filter(pl.col("muscle_group").is_in(["calf", "foot"]))["proportion"].sum()
    assert calf_foot > 0.6
    assert 1.5 < e["duration_min"].median() < 2.6
    assert (e["duration_min"] > 15).any()
    calf = e.filter(pl.col("muscle_group") == "calf")
    night = calf["started_at"].dt.hour().is_in([22, 23, 0, 1, 2, 3, 4, 5]).mean()
    assert night > 0.5
    assert e["pain"].drop_nulls().is_between(0, 10).all()
    for flag in ("pain_uncontrolled", "swelling", "skin_changes", "er_visit"):
        assert 0 < e[flag].drop_nulls().mean() < 0.05, flag
        assert 0 < e[flag].null_count() / e.height < 0.08, flag
    assert 0 < (e["numbness"] == "both_legs").mean() < 0.03


def test_a_few_subjects_have_frequent_cramps_for_weeks(sample):
    """The chronic pattern (≥ 3 a week for 4+ consecutive weeks) occurs, but only in a minority."""
    weekly = (sample.episodes
              .group_by("subject_id", pl.col("started_at").dt.truncate("1w").alias("week")).len()
              .sort("subject_id", "week")
              .with_columns(frequent=pl.col("len") >= 3))
    streaks = (weekly.with_columns(
        run=(pl.col("frequent") != pl.col("frequent").shift(1).over("subject_id")).fill_null(True)
        .cum_sum().over("subject_id"))
        .filter("frequent").group_by("subject_id", "run").len("weeks"))
    chronic = streaks.filter(pl.col("weeks") >= 4)["subject_id"].n_unique()
    assert 3 <= chronic <= 40


def test_start_date_moves_the_calendar():
    ds = synth.generate(5, 3, seed=1, start_date=date(2025, 7, 1))
    assert ds.daily["date"].min() >= date(2025, 7, 1)
    assert ds.daily["date"].max() <= date(2025, 7, 3)


def test_custom_factor_flag_leaves_the_other_exposures_unchanged():
    on, off = (synth.generate(30, 30, seed=9, custom_factor=flag) for flag in (True, False))
    assert on.daily.drop("magnesium_mg").equals(off.daily)


# --- the truth document -------------------------------------------------------------------------


def test_truth_documents_every_core_feature_in_its_documented_unit(sample):
    planted = sample.truth["planted"]
    assert list(planted) == ["exercise_min", "exercise_rpe", "fluid_l", "heat_c", "electrolytes",
                             "recent_injury", "sitting_h", "poor_posture", "stress", "sleep_h",
                             "caffeine_mg", "alcohol_units", "magnesium_mg"]
    units = {k: (v["unit"], v["per"]) for k, v in planted.items()}
    assert units["exercise_min"] == ("per 30 min", 30)
    assert units["heat_c"] == ("per 5 °C", 5)
    assert units["caffeine_mg"] == ("per 100 mg", 100)
    for v in planted.values():
        assert v["log_coef"] == pytest.approx(np.log(v["irr"]))
    assert sample.truth["null_features"] == ["poor_posture", "caffeine_mg", "alcohol_units"]
    assert sample.truth["frailty"]["distribution"] == "gamma"
    assert sample.truth["confounding"] is None


@pytest.mark.parametrize(("decimals", "values", "text"), [
    (0, [0.0, 95.0, 1500.0, None], ["0", "95", "1500", None]),
    (1, [2.3, -0.5, 0.0, -2.1, 23.9, None], ["2.3", "-0.5", "0.0", "-2.1", "23.9", None]),
    (2, [7.25, 6.0, 0.75, 12.0], ["7.25", "6.00", "0.75", "12.00"]),
])
def test_csv_numbers_have_a_fixed_number_of_decimals(decimals, values, text):
    from pipeline.synth.write import _fixed

    out = pl.DataFrame({"x": values}, schema={"x": pl.Float64}).select(_fixed("x", decimals))
    assert out["x"].to_list() == text


def test_docstring_examples_run():
    import doctest

    import pipeline.synth.simulate as module

    assert doctest.testmod(module).failed == 0


def test_recent_injury_in_the_rate_is_an_injury_on_d_minus_30_to_d_minus_1(sample):
    """The generator's recent_injury matches the issue-4 definition applied to the tables."""
    recent = (sample.daily.select("subject_id", "date")
              .join(sample.injuries.select("subject_id", pl.col("date").alias("injured")),
                    on="subject_id")
              .filter(pl.col("injured").is_between(pl.col("date") - pl.duration(days=30),
                                                   pl.col("date") - pl.duration(days=1)))
              .select("subject_id", "date").unique())
    assert recent.height == sample.truth["realized"]["subject_days_with_recent_injury"] > 0


def test_episodes_on_unlogged_days_are_counted_in_the_truth(sample):
    days = sample.daily.select("subject_id", "date")
    outside = (sample.episodes.select("subject_id", pl.col("started_at").dt.date().alias("date"))
               .join(days, on=["subject_id", "date"], how="anti"))
    r = sample.truth["realized"]
    assert outside.height == r["episodes_outside_logged_days"]
    assert sample.episodes.height == r["n_episodes_on_logged_days"] + outside.height
    # ... and they fall inside the subject's logging window (a skipped day, not before or after).
    window = sample.daily.group_by("subject_id").agg(first=pl.col("date").min(),
                                                     last=pl.col("date").max())
    assert outside.join(window, on="subject_id").filter(
        ~pl.col("date").is_between(pl.col("first"), pl.col("last"))).height == 0


@settings(max_examples=25, deadline=None)
@given(n_subjects=st.integers(1, 40), n_days=st.integers(1, 70), seed=st.integers(0, 2**63),
       confounded=st.booleans(), custom_factor=st.booleans(),
       start=st.dates(date(1990, 1, 1), date(2090, 12, 31)))
def test_any_small_study_conforms_and_keeps_its_accounting(n_subjects, n_days, seed, confounded,
                                                           custom_factor, start):
    ds = synth.generate(n_subjects, n_days, seed, confounded=confounded, start_date=start,
                        custom_factor=custom_factor)
    for name, df in ds.tables().items():
        extra = [cf.as_column() for cf in ds.custom_factors] if name == "daily" else []
        _assert_conforms(df, schema.TABLES[name], extra)
        table = schema.TABLES[name]
        assert not df.drop_nulls(list(table.key)).select(table.key).is_duplicated().any()
        if table.fallback_key:
            assert not df.select(table.fallback_key).is_duplicated().any()
    assert ds.subjects.height == n_subjects
    # Every subject logs at least one day, and nothing falls outside the study period.
    assert ds.daily["subject_id"].n_unique() == n_subjects
    for df, col in ((ds.daily, "date"), (ds.injuries, "date"), (ds.episodes, "started_at")):
        if df.height:
            days = (df[col].cast(pl.Date) - start).dt.total_days()
            assert days.min() >= 0 and days.max() < n_days
    r = ds.truth["realized"]
    assert r["n_episodes"] == ds.episodes.height == (r["n_episodes_on_logged_days"]
                                                     + r["episodes_outside_logged_days"])


def test_truth_lands_outside_even_for_a_relative_dot(tmp_path, monkeypatch):
    (tmp_path / "study").mkdir()
    monkeypatch.chdir(tmp_path / "study")
    synth.write_dataset(synth.generate(5, 5, seed=1), Path("."))
    assert (tmp_path / "study.truth.json").is_file()
    assert not any("truth" in name for name in _files(tmp_path / "study"))


def test_csv_written_in_chunks_is_the_same_bytes(tmp_path, small, monkeypatch):
    import pipeline.synth.write as write

    synth.write_dataset(small, tmp_path / "whole")
    monkeypatch.setattr(write, "CSV_CHUNK_ROWS", 7)
    synth.write_dataset(small, tmp_path / "chunked")
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "whole", tmp_path / "chunked",
                                           _files(tmp_path / "whole"), shallow=False)
    assert mismatch == [] and errors == []
