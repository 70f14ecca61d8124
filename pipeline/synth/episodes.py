"""Attributes of simulated cramp episodes: time of day, muscle group, duration, pain, red flags.

None of these feed back into the daily rate; in particular a cramp that cost sleep does not shorten
the next ``sleep_h`` (that would plant reverse causation the models are not meant to untangle).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

from pipeline import schema
from pipeline.synth import truth

SECONDS_PER_DAY = 86_400
#: Times are drawn below this so that nudging same-second episodes apart never crosses midnight.
_LATEST_DRAWN_SECOND = SECONDS_PER_DAY - 120


def _logistic(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, low: float, high: float,
                      n: int) -> np.ndarray:
    """Normal(mean, sd) restricted to [low, high] by inverting the CDF (no pile-up at the edges)."""
    a, b = ndtr((low - mean) / sd), ndtr((high - mean) / sd)
    return mean + sd * ndtri(a + (b - a) * rng.random(n))


def simulate_attributes(rng: np.random.Generator, subject: np.ndarray,
                        n_subjects: int) -> dict[str, np.ndarray]:
    """Draw the attributes of episodes of ``subject`` (indices); nullable ones come with a mask.

    A latent severity z ~ N(0, 1) drives duration, pain and the red-flag fields; part of it
    (``severity_subject_share`` of its variance) belongs to the subject, so severe episodes cluster
    in a minority of people, as in a clinic, rather than touching everyone now and then.

    Returns arrays keyed by column name (enums as integer codes: ``muscle_group`` into
    ``truth.MUSCLE_GROUP_P``, ``numbness`` into ``schema.NUMBNESS_LEVELS``); ``<column>__null``
    holds the blanking mask.
    """
    e = truth.EPISODES
    n = subject.size
    subject_severity = rng.normal(size=n_subjects)
    share = e["severity_subject_share"]
    groups = list(truth.MUSCLE_GROUP_P)
    assert set(groups) == set(schema.MUSCLE_GROUPS)
    group = rng.choice(len(groups), size=n, p=list(truth.MUSCLE_GROUP_P.values()))
    is_calf, is_foot = group == groups.index("calf"), group == groups.index("foot")
    p_night = np.where(is_calf, e["p_night"]["calf"],
                       np.where(is_foot, e["p_night"]["foot"], e["p_night"]["other_groups"]))
    night = rng.random(n) < p_night
    night_s = np.mod(rng.normal(e["night_centre_h"], e["night_sd_h"], n) * 3600, SECONDS_PER_DAY)
    day_s = _truncated_normal(rng, e["day_centre_h"], e["day_sd_h"], *e["day_window_h"], n) * 3600
    second = np.minimum(np.where(night, night_s, day_s), _LATEST_DRAWN_SECOND).astype(np.int64)

    severity = np.sqrt(share) * subject_severity[subject] + np.sqrt(1 - share) * rng.normal(size=n)
    log_dur = np.log(e["duration_median_min"]) + e["duration_log_sd"] * (
        0.5 * severity + np.sqrt(0.75) * rng.normal(size=n))
    duration = np.clip(np.round(np.exp(log_dur) * 10) / 10, 0.1, 240.0)
    pain = np.clip(np.round(e["pain_mean"] + e["pain_per_severity"] * severity
                            + rng.normal(0, e["pain_noise_sd"], n)), 0, 10).astype(np.int64)

    lg = e["red_flag_logit"]
    flag = lambda key: rng.random(n) < _logistic(lg[key][0] + lg[key][1] * severity)  # noqa: E731
    pain_uncontrolled = flag("pain_uncontrolled")
    swelling = flag("swelling")
    # Skin changes travel with swelling (as in a clot or a muscle tear).
    skin_changes = flag("skin_changes") | (swelling & (rng.random(n) < e["p_skin_given_swelling"]))
    sleep_loss = np.where(night, flag("sleep_loss_night"), flag("sleep_loss_day"))
    er_visit = flag("er_visit") | (pain_uncontrolled
                                   & (rng.random(n) < e["p_er_given_uncontrolled"]))
    numb = flag("numbness")
    both = rng.random(n) < e["numbness_both_legs_share"]
    numbness = np.where(numb, np.where(both, 2, 1), 0)

    out = {
        "muscle_group": group,  # codes into MUSCLE_GROUP_P
        "second": second,
        "night": night,
        "duration_min": duration,
        "pain": pain,
        "pain_uncontrolled": pain_uncontrolled,
        "swelling": swelling,
        "skin_changes": skin_changes,
        "sleep_loss": sleep_loss,
        "er_visit": er_visit,
        "numbness": numbness,  # codes into schema.NUMBNESS_LEVELS
    }
    for column, rate in e["missing_rate"].items():
        out[f"{column}__null"] = rng.random(n) < rate
    return out
