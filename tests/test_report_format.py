"""How numbers and labels read in the report: spec tables of inputs and the exact text shown.

Confidence intervals must never collapse in rounding ("95% CI 5% to 5%", "1.04 (1.04 to 1.04)"):
the precision is chosen from the interval's width. Labels state a unit once, models have one name
in every table and figure, and each rule says when it fires in words.
"""

from __future__ import annotations

import pytest

from pipeline.redflags import load_rules
from pipeline.report import figures, views
from pipeline.report.sentences import MODEL_LABELS, describe_effect, feature_label, model_label
from pipeline.report.tables import _fmt_ci

NAN = float("nan")


def row(feature, unit, irr, low, high, model="within_subject"):
    return {"model": model, "feature": feature, "unit": unit, "irr": irr, "ci_low": low,
            "ci_high": high, "note": None}


# --- IRR (95% CI) in the effects table -----------------------------------------------------------

@pytest.mark.parametrize("irr, low, high, shown", [
    # irr       low       high      shown
    (1.04,      1.03,     1.05,     "1.04 (1.03 to 1.05)"),        # the usual two decimals
    (0.85,      0.79,     0.92,     "0.85 (0.79 to 0.92)"),
    (1.041,     1.040,    1.042,    "1.041 (1.040 to 1.042)"),     # narrow: a third decimal
    (0.997328,  0.97214,  1.02317,  "1.00 (0.97 to 1.02)"),        # the estimate may read 1.00
    (1.02,      0.998,    1.05,     "1.020 (0.998 to 1.050)"),     # a bound may not read 1.00
    (1.0001,    1.00004,  1.00016,  "1.0001 (1.0000 to 1.0002)"),  # at most four decimals
    (2.5,       1.8,      3.4,      "2.50 (1.80 to 3.40)"),
    (None,      None,     None,     None),                          # no estimate: no text
    (NAN,       1.0,      2.0,      None),
])
def test_irr_and_interval_text(irr, low, high, shown):
    assert _fmt_ci(irr, low, high) == shown


# --- the interval in a sentence ------------------------------------------------------------------

@pytest.mark.parametrize("effect, ending", [
    # whole percentages when they separate the bounds
    (row("sitting_h", "per 1 h", 1.04, 1.03, 1.05), "4% more cramps (95% CI 3% to 5%)."),
    # "5% to 5%" would collapse: one decimal
    (row("sitting_h", "per 1 h", 1.049, 1.046, 1.053), "4.9% more cramps (95% CI 4.6% to 5.3%)."),
    (row("fluid_l", "per 1 L", 0.951, 0.948, 0.954), "4.9% fewer cramps (95% CI 4.6% to 5.2%)."),
    # "0% to 8%" would hide that the interval excludes no difference
    (row("sitting_h", "per 1 h", 1.04, 1.003, 1.08), "4.0% more cramps (95% CI 0.3% to 8.0%)."),
    # a tiny effect: two decimals
    (row("sitting_h", "per 1 h", 1.0004, 1.0001, 1.0007),
     "0.04% more cramps (95% CI 0.01% to 0.07%)."),
    # "times as many" gets the decimals too
    (row("recent_injury", "yes vs no", 2.51, 2.50, 2.52),
     "2.51 times as many cramps (95% CI from 2.50 times as many to 2.52 times as many)."),
])
def test_interval_in_a_sentence_never_collapses(effect, ending):
    sentence = describe_effect(effect)
    assert sentence.endswith(ending), sentence


# --- labels --------------------------------------------------------------------------------------

@pytest.mark.parametrize("feature, factor, unit, label, axis", [
    # feature          factor        unit            label          axis label
    ("sitting_h",      None,         "per 1 h",      "Sitting",     "Sitting (h)"),
    ("magnesium_mg",   "magnesium",  "per 100 mg",   "Magnesium",   "Magnesium (mg)"),
    ("magnesium_mg",   None,         "mg",           "Magnesium",   "Magnesium (mg)"),
    ("heat_c",         None,         "per 5 °C",     "Outdoor heat", "Outdoor heat (°C)"),
    ("electrolytes",   None,         None,           "Electrolyte drink", "Electrolyte drink"),
])
def test_labels_state_a_unit_once(feature, factor, unit, label, axis):
    assert feature_label(feature, factor) == label
    assert figures.axis_label(feature, unit) == axis


def test_a_custom_factor_is_labelled_by_its_factor_name():
    assert feature_label("airq", "air_quality") == "Air quality"


def test_the_sample_dose_response_axes_do_not_double_units():
    import polars as pl

    dose = pl.DataFrame({"model": ["within_subject"] * 3, "feature": ["magnesium_mg"] * 3,
                         "unit": ["mg"] * 3, "x": [0.0, 100.0, 200.0], "reference_x": [0.0] * 3,
                         "irr": [1.0, 0.9, 0.8], "ci_low": [1.0, 0.8, 0.7],
                         "ci_high": [1.0, 1.0, 0.95]})
    fig = figures.dose_response_plot(dose)
    assert fig.axes[0].get_xlabel() == "Magnesium (mg)"


def test_one_name_per_model_in_tables_and_figures():
    from pipeline.report.demo import demo_diagnostics, demo_effects

    effects = demo_effects()
    legend = {t.get_text() for t in figures.forest_plot(effects).legends[0].get_texts()}
    headings = {h for h, _ in views.effects_table(effects).parts}
    calibration = figures.calibration_plot(views.calibration_frame(demo_diagnostics()))
    calibration_legend = {t.get_text() for t in calibration.axes[0].get_legend().get_texts()}
    dispersion = set(views.dispersion_table(demo_diagnostics()).frame["model"])
    names = {model_label(m) for m in effects["model"].unique()}
    assert legend == headings == dispersion == names
    assert calibration_legend == names | {"perfect calibration"}
    assert names <= set(MODEL_LABELS.values())


# --- the rules, in words -------------------------------------------------------------------------

@pytest.mark.parametrize("rule_id, fires_when", [
    ("severe_pain", "pain ≥ 7, or pain_uncontrolled is yes"),
    ("numbness", "numbness is one of ('one_leg', 'both_legs')"),
    ("swelling", "swelling is yes"),
    ("prolonged", "duration_min > 15"),
    ("frequent", "at least 3 episodes in each of 4 back-to-back 7-day windows (any start day; "
                 "several cramps on one day each count)"),
])
def test_each_rule_says_when_it_fires_in_words(rule_id, fires_when):
    assert views.condition_in_words(load_rules().rule(rule_id)) == fires_when


def test_guidance_is_quoted_verbatim_and_a_rationale_is_labelled_once():
    frame = views.rules_frame(load_rules())
    for source, severity in frame.select("source", "severity").iter_rows():
        if severity == "red_flag":
            assert source.startswith("Guidance (verbatim): \u201c")
        else:
            assert source.lower().count("toolkit rationale") == 1, source
            assert source.startswith("Toolkit rationale (not a quote from the guidance): ")
