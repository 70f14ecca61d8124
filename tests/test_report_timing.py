"""The Timing section's sentences, table and figure, from small lags.csv tables."""

from __future__ import annotations

import polars as pl

from pipeline.models.lags import LAGS
from pipeline.report import timing


def lags_table(feature: str, unit: str, factor: str, rows: list[tuple]) -> pl.DataFrame:
    """rows: (lag, irr, ci_low, ci_high)."""
    return pl.DataFrame(
        [{"model": "within_subject_lags", "factor": factor, "feature": feature, "unit": unit,
          "lag": lag, "irr": irr, "ci_low": lo, "ci_high": hi, "p_value": 0.01,
          "n_subjects": 100, "n_subject_days": 5000, "n_episodes": 900,
          "note": None if irr is not None else "not estimated: too few days"}
         for lag, irr, lo, hi in rows], schema=LAGS.schema(), orient="row")


EXERCISE = lags_table("exercise_min", "per 30 min", "fatigue_overuse", [
    ("0", 1.10, 1.05, 1.15), ("1", 1.12, 1.09, 1.16), ("2", 1.05, 1.02, 1.09),
    ("3", 1.00, 0.97, 1.04), ("0-3", 1.30, 1.21, 1.40)])


def joint_tests(flat_p: float) -> dict:
    return {"exercise_min": {"flat_lag_curve": {"p_value": flat_p, "df": 3, "chi2": 9.0},
                             "no_effect_beyond_lag0": {"p_value": flat_p, "df": 3, "chi2": 9.0}}}


def test_a_clear_lag_curve_names_its_onset_and_leads_with_that_lag():
    text = timing.timing_sentence("exercise_min", EXERCISE, joint_tests(0.0004))
    assert text == (
        "On the day after 30 more minutes of exercise, the same person had 12% more cramps "
        "(95% CI 9% to 16%); over the day itself and the three days after, 30% more in all (95% "
        "CI 21% to 40%). The effect is largest one day after (joint test of a flat lag curve "
        "p < 0.001).")


def test_a_flat_curve_does_not_name_a_delay():
    text = timing.timing_sentence("exercise_min", EXERCISE, joint_tests(0.30))
    assert text.endswith("The data cannot tell the timing apart (joint test of a flat lag "
                         "curve p = 0.300).")
    assert "largest" not in text


def test_a_same_day_peak_reads_as_the_day_itself():
    same_day = lags_table("alcohol_units", "per 1 unit", "diet", [
        ("0", 1.20, 1.10, 1.30), ("1", 1.00, 0.95, 1.05), ("0-1", 1.20, 1.08, 1.33)])
    tests = {"alcohol_units": joint_tests(0.001)["exercise_min"]}
    text = timing.timing_sentence("alcohol_units", same_day, tests)
    assert text.startswith("On days with one more unit of alcohol, the same person had 20% more")
    assert "over the day itself and the day after, 20% more in all" in text
    assert text.endswith("The effect is largest on the day itself (joint test of a flat lag "
                         "curve p = 0.001).")


def test_no_estimate_gives_the_reason():
    missing = lags_table("sitting_h", "per 1 h", "sitting_posture",
                         [("0", None, None, None), ("0-0", None, None, None)])
    assert timing.timing_sentence("sitting_h", missing, {}) == (
        "Sitting: no timing estimate (too few days).")


def test_cumulative_table_sits_beside_the_same_day_estimate():
    effects = pl.DataFrame({"model": ["within_subject"], "feature": ["exercise_min"],
                            "irr": [1.15], "ci_low": [1.1], "ci_high": [1.2]})
    shown = timing.cumulative_table(EXERCISE, effects)
    assert shown.frame.row(0) == ("Exercise", "per 30 min", "1.15 (1.10-1.20)",
                                  "1.10 (1.05-1.15)", "0-3", "1.30 (1.21-1.40)")


def test_lag_curves_are_small_multiples_one_panel_per_factor():
    both = pl.concat([EXERCISE, lags_table("fluid_l", "per 1 L", "dehydration", [
        ("0", 0.9, 0.85, 0.95), ("1", 0.95, 0.9, 1.0), ("0-1", 0.86, 0.8, 0.92)])])
    fig = timing.lag_curve_plot(both)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["Exercise (per 30 min)", "Fluid intake (per 1 L)"]
    assert len(visible[0].lines[0].get_xdata()) == 4  # lags 0..3, the cumulative row left out


def test_a_later_onset_reads_in_words_and_the_design_note_discloses_counts():
    late = lags_table("heat_c", "per 5 °C", "dehydration", [
        ("0", 1.0, 0.9, 1.1), ("1", 1.0, 0.9, 1.1), ("2", 1.3, 1.2, 1.4), ("0-2", 1.3, 1.1, 1.5)])
    tests = {"heat_c": joint_tests(0.001)["exercise_min"]}
    text = timing.timing_sentence("heat_c", late, tests)
    assert text.startswith("Two days after a highest outdoor temperature 5 °C warmer, the same "
                           "person had 30% more cramps")
    assert text.endswith("The effect is largest two days after (joint test of a flat lag curve "
                         "p = 0.001).")
    note = timing.design_note({"lags": {
        "analysis": {"description": "strata: subject"}, "max_lag_days": {"heat_c": 2,
                                                                         "recent_injury": 0},
        "n_dropped_window_incomplete": 1233, "n_dropped_value_missing": 3,
        "n_subject_days_panel": 5000, "subset": None}}).text
    assert "the day itself and up to two days before it (Recent injury: the same day only" in note
    assert "1,235 of 5,000 subject-days" in note and "1,235 subject-days because" in note and "≤7 subject-days for a missing value" in note


def test_the_notebook_refit_uses_other_choices_and_validates_them():
    import pytest

    from pipeline.errors import UserError
    from pipeline.report import views

    run = views.open_run(None)
    refitted = timing.refit(run, max_lag_days=1, strata="subject_month")
    ex = refitted.filter(pl.col("feature") == "exercise_min")
    assert ex["lag"].to_list() == ["0", "1", "0-1"]
    assert ex["note"][0].startswith("strata: subject x calendar month")
    assert refitted.filter(pl.col("feature") == "magnesium_mg")["irr"].null_count() == 0
    with pytest.raises(UserError, match='allowed values are "subject", "subject_month"'):
        timing.refit(run, strata="weekly")
