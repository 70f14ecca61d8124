"""The planted-truth document written beside a synthetic dataset (``<out_dir>.truth.json``)."""

from __future__ import annotations

import numpy as np

from pipeline import schema
from pipeline.synth import truth

FORMULA = (
    "episodes[i,d] ~ Poisson(rate[i,d]) on each logged day d of subject i; "
    "log rate[i,d] = intercept + log(age_multiplier[age_band[i]]) + log(frailty[i]) "
    "+ sum_k log_coef[k] * x[k,i,d] / per[k]"
)


def _round(value, digits: int = 6):
    """Round floats (recursively) so the document does not depend on summation order."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v, digits) for v in value]
    return value


def _subject_slopes(subject_level: dict[str, np.ndarray]) -> dict[str, float] | None:
    """OLS slopes of log frailty on habitual stress and sitting: ~0 unless confounded."""
    y = np.log(subject_level["frailty"])
    if y.size < 3:
        return None
    X = np.column_stack([np.ones_like(y), subject_level["habitual_stress"],
                         subject_level["habitual_sitting"]])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    return {"stress": float(coef[1]), "sitting_h": float(coef[2])}


def truth_document(*, args: dict, effects, intercept: float, confounded: bool, realized: dict,
                   subject_level: dict[str, np.ndarray]) -> dict:
    planted = {
        e.feature: {"irr": e.irr, "log_coef": e.log_coef, "unit": e.unit, "per": e.per,
                    "log_coef_per_column_unit": e.log_coef / e.per,
                    "source": e.source, "null": e.null, "why": e.why}
        for e in effects
    }
    confounding = None
    if confounded:
        confounding = {
            "description": (
                "Subjects with higher habitual (mean) stress and sitting have a higher frailty for "
                "reasons outside the data (e.g. an unmeasured health condition or occupation): "
                "log frailty[i] gains sum_j gamma_j * (habitual_j[i] - centre_j). The daily values "
                "vary around each subject's habitual level exactly as in the unconfounded "
                "scenario, so the within-subject (conditional Poisson) effects are the planted "
                "ones, while a pooled Poisson that compares people with each other is biased upward for stress "
                "and sitting_h (and, through their correlates, possibly others)."),
            "log_frailty_gain_per_unit_of_habitual_level": {
                k: {"gamma": v["gamma_per_unit"], "centre": v["centre"], "habitual": v["habitual"]}
                for k, v in truth.CONFOUNDING.items()},
            "between_subject_irr_per_unit": {
                k: float(np.exp(v["gamma_per_unit"] + planted[k]["log_coef"]))
                for k, v in truth.CONFOUNDING.items()},
            "expected_bias": {k: f"pooled (population) IRR above the planted {planted[k]['irr']}"
                              for k in truth.CONFOUNDING},
        }
    doc = {
        "generator": "pipeline.synth",
        "contract_version": schema.CONTRACT_VERSION,
        "args": args,
        "model": {
            "formula": FORMULA,
            "intercept": intercept,
            "intercept_calibration": (
                "chosen so that the expected mean over all logged subject-days of this dataset is "
                f"{truth.TARGET_MEAN_RATE} episodes"),
            "target_mean_episodes_per_subject_day": truth.TARGET_MEAN_RATE,
            "day_at_risk": "a logged day (a row of daily); recent_injury = any injury on d-30..d-1",
            "values_used": (
                "the rate uses each day's full values as logged (rounded to the diary resolution), "
                "drawn before a few per cent of factor values were blanked at random (MCAR); a "
                "complete-case analysis is therefore unbiased"),
            "exercise_rpe_on_rest_days": "0 (Borg CR10 'nothing at all') when exercise_min is 0",
        },
        "planted": planted,
        "within_subject_truth": {k: {"irr": v["irr"], "log_coef": v["log_coef"]}
                                 for k, v in planted.items()},
        "null_features": [k for k, v in planted.items() if v["null"]],
        "frailty": {"distribution": "gamma", "shape": truth.FRAILTY_SHAPE,
                    "scale": 1 / truth.FRAILTY_SHAPE, "mean": 1.0,
                    "variance": 1 / truth.FRAILTY_SHAPE,
                    "independent_of": "age, sex and every habitual exposure level"
                                      + (" (except as described under confounding)" if confounded
                                         else "")},
        "age_multiplier": truth.AGE_MULTIPLIER,
        "confounded": confounded,
        "confounding": confounding,
        "subject_level_log_frailty_slope": _round(_subject_slopes(subject_level)),
        "custom_factors": [truth.CUSTOM_FACTOR] if args["custom_factor"] else [],
        "missingness": {
            "mechanism": (
                "MCAR, drawn after the episode counts: on each logged day a diary section (all "
                "columns of one contributing factor) is skipped with section_rate, except "
                "sectionless columns; each value is also blanked on its own with value_rate"),
            "section_rate": truth.SECTION_MISSING_RATE,
            "sectionless_columns": list(truth.SECTIONLESS_COLUMNS),
            "value_rate": {k: v for k, v in truth.MISSING_RATE.items()
                           if args["custom_factor"] or k != "magnesium_mg"},
            "episode_columns": truth.EPISODES["missing_rate"],
        },
        "logging": truth.LOGGING,
        "injuries": truth.INJURY,
        "episodes": {k: v for k, v in truth.EPISODES.items() if k != "missing_rate"},
        "muscle_group_p": truth.MUSCLE_GROUP_P,
        "injury_muscle_group_p": truth.INJURY_GROUP_P,
        "realized": _round(realized),
    }
    return doc
