"""The planted truth of the synthetic generator: every effect, rate and distribution, declared once.

The daily episode count of subject i on logged day d is Poisson with

    log rate_i,d = intercept + log(age_multiplier[age_band_i]) + log(frailty_i)
                   + sum_k log(IRR_k) * x_k,d / unit_k

where ``x_k,d`` is the day's full (never blanked) value of feature k and ``unit_k`` the documented
unit of the models in issue 4 (exercise per 30 min, heat per 5 °C, caffeine per 100 mg ...). The
factor columns a reader sees have a few per cent of values blanked *after* the rate was drawn
(MCAR), so a complete-case analysis stays unbiased.

Changing a number here changes the data and the bundled sample (its byte-for-byte test will say so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Mean episodes per logged subject-day the intercept is calibrated to (about 1.3 a week).
TARGET_MEAN_RATE = 0.19


@dataclass(frozen=True)
class PlantedEffect:
    """One model feature: its planted incidence-rate ratio per documented unit."""

    feature: str
    #: Daily column(s) the feature is built from; ``recent_injury`` comes from ``injuries``.
    source: str
    unit: str
    #: Size of the documented unit in the column's own unit (30 for "per 30 min"); 1 for booleans.
    per: float
    irr: float
    why: str

    @property
    def log_coef(self) -> float:
        """Log IRR per documented unit."""
        return math.log(self.irr)

    @property
    def null(self) -> bool:
        return self.irr == 1.0


#: The core features of issue 4, in its documented units. IRR 1.0 marks a planted null.
EFFECTS: tuple[PlantedEffect, ...] = (
    PlantedEffect("exercise_min", "daily.exercise_min", "per 30 min", 30, 1.10,
                  "Fatigue and overuse: longer sessions, more cramps."),
    PlantedEffect("exercise_rpe", "daily.exercise_rpe", "per 1 point", 1, 1.05,
                  "Harder sessions at the same length; 0 on days without exercise."),
    PlantedEffect("fluid_l", "daily.fluid_l", "per 1 L", 1, 0.85,
                  "Hydration is protective."),
    PlantedEffect("heat_c", "daily.heat_c", "per 5 °C", 5, 1.06,
                  "Hot days dehydrate beyond what fluid intake makes up."),
    PlantedEffect("electrolytes", "daily.electrolytes", "yes vs no", 1, 0.88,
                  "Electrolyte drink or supplement is mildly protective."),
    PlantedEffect("recent_injury", "injuries (any on d-30..d-1)", "yes vs no", 1, 1.60,
                  "A recent muscle injury raises cramp frequency."),
    PlantedEffect("sitting_h", "daily.sitting_h", "per 1 h", 1, 1.05,
                  "Prolonged sitting."),
    PlantedEffect("poor_posture", "daily.poor_posture", "yes vs no", 1, 1.00,
                  "Planted null, correlated with sitting: a test of confounding by a neighbour."),
    PlantedEffect("stress", "daily.stress", "per 1 point", 1, 1.08,
                  "Stress."),
    PlantedEffect("sleep_h", "daily.sleep_h", "per 1 h", 1, 0.92,
                  "More sleep is protective."),
    PlantedEffect("caffeine_mg", "daily.caffeine_mg", "per 100 mg", 100, 1.00,
                  "Planted null, correlated with stress and short sleep."),
    PlantedEffect("alcohol_units", "daily.alcohol_units", "per 1 unit", 1, 1.00,
                  "Planted null, weekend-heavy."),
)

#: The custom factor declared in ``dataset.toml`` (keys of ``schema.CustomFactor``).
CUSTOM_FACTOR = {
    "column": "magnesium_mg",
    "factor": "magnesium",
    "label": "Magnesium supplement",
    "kind": "numeric",
    "unit": "mg",
    "scale": 100.0,
    "minimum": 0.0,
    "maximum": 2000.0,
    "description": "Magnesium taken as a supplement that day (0 if none).",
}
CUSTOM_EFFECT = PlantedEffect("magnesium_mg", "daily.magnesium_mg", "per 100 mg", 100, 0.94,
                              "Custom factor: a small protective effect among supplement takers.")

#: Subject frailty: Gamma(shape, scale = 1/shape), mean 1, variance 1/shape.
FRAILTY_SHAPE = 2.0

#: Baseline multiplier by age band (older people cramp more). Independent of every exposure, so
#: leaving age out of a model does not bias the factor estimates.
AGE_MULTIPLIER = {"18-29": 0.70, "30-39": 0.80, "40-49": 0.90, "50-59": 1.00, "60-69": 1.15,
                  "70-79": 1.35, "80+": 1.50}
AGE_BAND_P = (0.14, 0.16, 0.17, 0.18, 0.17, 0.12, 0.06)
SEX_P = {"F": 0.52, "M": 0.46, "X": 0.02}

#: Confounded scenario: log frailty gains gamma * (habitual level - population centre) for these
#: subject-level habitual means, i.e. a between-subject effect on top of the within-subject one.
CONFOUNDING = {
    "stress": {"gamma_per_unit": 0.15, "centre": 4.0,
               "habitual": "subject's habitual stress (points)"},
    "sitting_h": {"gamma_per_unit": 0.10, "centre": 7.0,
                  "habitual": "subject's habitual sitting (h)"},
}

#: Blanking of logged factor values (MCAR: independent of every value, drawn after the rate).
#: A diary section (all columns of one contributing factor in ``schema.FACTORS``, e.g. sitting_h and
#: poor_posture) is skipped on a day with ``SECTION_MISSING_RATE``; on top of that each value is
#: blanked on its own with ``MISSING_RATE``. heat_c is filled from weather data, not by the subject,
#: so it has no section blanking.
SECTION_MISSING_RATE = 0.012
SECTIONLESS_COLUMNS = ("heat_c",)
MISSING_RATE = {
    "exercise_min": 0.010, "exercise_rpe": 0.020, "fluid_l": 0.025, "heat_c": 0.010,
    "electrolytes": 0.015, "sitting_h": 0.010, "poor_posture": 0.020, "stress": 0.010,
    "sleep_h": 0.010, "caffeine_mg": 0.015, "alcohol_units": 0.015, "magnesium_mg": 0.010,
}

#: Logging pattern: who logs only part of the period, and how often a day inside it is skipped.
LOGGING = {
    "p_late_start": 0.15,          # starts within the first third of the period
    "p_early_stop": 0.20,          # stops after at least a third of the period
    "skip_beta": (1.5, 25.0),      # per-subject probability of skipping a day inside the window
    "p_episode_logged_on_skipped_day": 0.30,
}

#: Injuries: per-day probability inside the subject's window, raised by exercise.
INJURY = {
    "base_per_year": 0.8,          # times a gamma(2, 0.5) subject proneness
    "exercise_multiplier_per_hour": 2.0,
}

#: Episode attributes (red-flag probabilities: logit = a + b * z, z a latent severity ~ N(0, 1)).
EPISODES = {
    "duration_median_min": 2.0,
    "duration_log_sd": 0.9,
    "p_night": {"calf": 0.65, "foot": 0.60, "other_groups": 0.25},
    "night_centre_h": 2.5,
    "night_sd_h": 1.6,
    "day_centre_h": 15.0,
    "day_sd_h": 4.0,
    "day_window_h": (6.0, 23.5),  # daytime cramps: truncated normal within waking hours
    "severity_subject_share": 0.7,
    "pain_mean": 4.0,
    "pain_per_severity": 1.5,
    "pain_noise_sd": 0.9,
    "red_flag_logit": {
        "pain_uncontrolled": (-4.6, 1.2),
        "swelling": (-5.0, 0.7),
        "skin_changes": (-5.8, 0.6),
        "sleep_loss_night": (-2.8, 1.0),
        "sleep_loss_day": (-5.5, 0.5),
        "er_visit": (-7.0, 1.3),
        "numbness": (-4.0, 0.8),
    },
    "numbness_both_legs_share": 0.25,
    "p_skin_given_swelling": 0.15,       # added to skin_changes' own logit draw
    "p_er_given_uncontrolled": 0.05,     # added to er_visit's own logit draw
    "missing_rate": {
        "episode_id": 0.03, "duration_min": 0.06, "pain": 0.03, "pain_uncontrolled": 0.04,
        "swelling": 0.04, "skin_changes": 0.05, "sleep_loss": 0.04, "er_visit": 0.03,
        "numbness": 0.05,
    },
}

MUSCLE_GROUP_P = {
    "calf": 0.55, "foot": 0.15, "hamstring": 0.08, "quadriceps": 0.05, "lower_back": 0.05,
    "upper_back": 0.02, "neck_shoulder": 0.03, "hand_forearm": 0.04, "abdomen": 0.02, "other": 0.01,
}
INJURY_GROUP_P = {
    "calf": 0.25, "hamstring": 0.22, "quadriceps": 0.12, "lower_back": 0.15, "foot": 0.08,
    "neck_shoulder": 0.08, "upper_back": 0.05, "hand_forearm": 0.05,
}


def effects(custom_factor: bool) -> tuple[PlantedEffect, ...]:
    """The planted effects of a dataset, with the custom factor when it declares one."""
    return EFFECTS + ((CUSTOM_EFFECT,) if custom_factor else ())
