"""Plain-language sentences: one per factor, from a row of effects.csv."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.report.sentences import describe_effect, effect_sentences


def row(feature, unit, irr, low, high, model="within_subject", note=None):
    return {"model": model, "feature": feature, "unit": unit, "irr": irr, "ci_low": low,
            "ci_high": high, "note": note}


@pytest.mark.parametrize("effect, sentence", [
    # more cramps, interval above 1
    (row("sitting_h", "per 1 h", 1.04, 1.03, 1.05),
     "On days with one more hour of sitting, the same person had 4% more cramps "
     "(95% CI 3% to 5%)."),
    # fewer cramps: IRR below 1 reads as "fewer", both bounds as fewer
    (row("fluid_l", "per 1 L", 0.80, 0.70, 0.90),
     "On days with one more litre of fluid, the same person had 20% fewer cramps "
     "(95% CI 10% to 30%)."),
    # binary factor: the comparison is with days without it
    (row("electrolytes", "yes vs no", 0.75, 0.60, 0.94),
     "On days with an electrolyte drink or supplement (compared with days without), the same "
     "person had 25% fewer cramps (95% CI 6% to 40%)."),
    # interval crossing 1: compatible with no difference, both directions named
    (row("caffeine_mg", "per 100 mg", 1.02, 0.97, 1.08),
     "On days with 100 mg more caffeine (about a cup of coffee), the same person had 2% more "
     "cramps, but the data are compatible with no difference (95% CI from 3% fewer to 8% more)."),
    # a bound that would round to 0% gets a decimal rather than reading as "no difference"
    (row("sitting_h", "per 1 h", 1.02, 0.998, 1.05),
     "On days with one more hour of sitting, the same person had 2.0% more cramps, but the data "
     "are compatible with no difference (95% CI from 0.2% fewer to 5.0% more)."),
    # a bound exactly at 1 is no difference
    (row("sitting_h", "per 1 h", 1.02, 1.0, 1.05),
     "On days with one more hour of sitting, the same person had 2% more cramps, but the data are "
     "compatible with no difference (95% CI from no difference to 5% more)."),
    # population model: about people, not the same person
    (row("stress", "per 1 point", 1.10, 1.05, 1.15, model="population"),
     "On days with one point more stress (0–10), people had 10% more cramps (95% CI 5% to 15%)."),
    # large ratios read as "times as many"
    (row("recent_injury", "yes vs no", 2.5, 1.8, 3.4),
     "On days with an injury in the previous 30 days (compared with days without), the same "
     "person had 2.5 times as many cramps (95% CI from 80% more to 3.4 times as many)."),
    # small effects keep one decimal rather than rounding to 0%
    (row("exercise_rpe", "per 1 point", 1.004, 1.001, 1.007),
     "On days with one point higher exertion (RPE, 0–10), the same person had 0.4% more cramps "
     "(95% CI 0.1% to 0.7%)."),
    # no estimate: the stated reason, never a number
    (row("alcohol_units", "per 1 unit", None, None, None, note="no within-subject variation"),
     "Alcohol: no estimate (no within-subject variation)."),
    (row("alcohol_units", "per 1 unit", float("nan"), None, None, note=None),
     "Alcohol: no estimate (no reason recorded)."),
    # a custom factor without a phrase of its own falls back to its unit
    ({**row("airq_index", "per 10 index points", 1.10, 1.02, 1.19), "factor": "air_quality"},
     "On days with air quality higher by 10 index points, the same person had 10% more cramps "
     "(95% CI 2% to 19%)."),
])
def test_sentence(effect, sentence):
    assert describe_effect(effect) == sentence


def test_one_sentence_per_feature_of_the_model_in_file_order():
    effects = pl.DataFrame([
        row("sitting_h", "per 1 h", 1.04, 1.03, 1.05),
        row("fluid_l", "per 1 L", 0.80, 0.70, 0.90),
        row("sitting_h", "per 1 h", 1.09, 1.07, 1.11, model="population"),
    ])
    out = effect_sentences(effects)
    assert out["feature"].to_list() == ["sitting_h", "fluid_l"]
    assert out["sentence"][0].startswith("On days with one more hour of sitting, the same person")
