"""Planted heterogeneity: each person's own rate ratios (``cramp synth --heterogeneous``, issue 13).

With ``heterogeneous=True`` subject i's log rate ratio of feature k is the planted one plus a
person-level deviation, log IRR_k,i = log IRR_k + delta_k,i with delta_k,i ~ N(0, SD_k²) drawn
independently of everything else (its own random stream, so the daily exposures are identical to
the homogeneous dataset of the same seed). Features not in :data:`SD_LOG_IRR` are the same for
everyone, so one dataset tests both "people differ" (tau > 0) and "they do not" (tau = 0).
The mean log IRR is the planted one, and the deviation is applied to the exposure centred on the
person's own mean, so the cohort's within-subject estimate stays near it.

Every person's true IRRs go to the truth file (``heterogeneity.subjects``).
"""

from __future__ import annotations

import numpy as np

#: Between-person SD of the log IRR per documented unit. Sized near the typical SE of a person's
#: own estimate over a year of diary (sitting, stress, heat: about 0.1-0.15; fluid: about 0.45),
#: so that how much to trust each person's own data is a real question.
SD_LOG_IRR = {"fluid_l": 0.30, "heat_c": 0.15, "sitting_h": 0.12, "stress": 0.12}


def draw_deviations(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """delta_k,i for the ``n`` subjects of one block (feature order of :data:`SD_LOG_IRR`)."""
    return {k: rng.normal(0.0, sd, n) for k, sd in SD_LOG_IRR.items()}


def deviation_predictor(x: dict[str, np.ndarray], deviations: dict[str, np.ndarray],
                        effects) -> np.ndarray:
    """sum_k delta_k,i * (x_k,i,d − mean_d x_k,i,d) / unit_k (subjects × days), added to the
    linear predictor.

    Centred on the person's own mean exposure, so a person's deviation changes how their rate
    moves with the exposure and not their overall rate. Uncentred, a person with a steeper slope
    on a feature that is never near 0 (sitting ~7 h a day) would also cramp far more overall, and
    would dominate every estimator that weights people by their episodes."""
    per = {e.feature: e.per for e in effects}
    eta = np.zeros(next(iter(x.values())).shape)
    for k, delta in deviations.items():
        xk = x[k]
        eta += delta[:, None] / per[k] * (xk - xk.mean(axis=1, keepdims=True))
    return eta


def truth_section(subject_ids, deviations: dict[str, np.ndarray], effects) -> dict:
    """The truth file's ``heterogeneity`` key: the SDs and every person's true IRRs."""
    planted = {e.feature: e.log_coef for e in effects}
    ids = list(subject_ids)
    irr = {k: np.exp(planted[k] + d) for k, d in deviations.items()}
    return {
        "description": (
            "log IRR[k, i] = planted log_coef[k] + delta[k, i], delta ~ Normal(0, sd_log_irr[k]²) "
            "independently per person and feature; features not listed are the same for everyone"),
        "sd_log_irr": dict(SD_LOG_IRR),
        "subjects": {sid: {k: round(float(irr[k][i]), 6) for k in irr}
                     for i, sid in enumerate(ids)},
    }
