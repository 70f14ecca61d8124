"""``cramp synth --lagged``: planted effects at lags > 0, so the lag model can be seen to recover them.

On top of the same-day effects of ``truth.EFFECTS``, the log rate of day d gains
``log(IRR) * x[k, d - lag] / per`` for each planted lag below, where ``x`` is the factor's full
(never blanked) value on that calendar day, logged or not: a person still exercised on a day they
did not write down. Before the first day of the period the first day's value stands in (those days
never have a complete lag window, so no model sees them).

``alcohol_units`` is the telling case: no same-day effect (IRR 1.00 in ``truth.EFFECTS``) but a
next-day one, so its lag-0 estimate must cover 1 while its lag-1 estimate does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.synth import truth


@dataclass(frozen=True)
class PlantedLag:
    feature: str
    lag: int
    irr: float
    why: str

    @property
    def log_coef(self) -> float:
        return math.log(self.irr)


PLANTED_LAGS: tuple[PlantedLag, ...] = (
    PlantedLag("exercise_min", 1, 1.12, "Next-day muscle fatigue after a long session."),
    PlantedLag("exercise_min", 2, 1.05, "Fatigue fading on the second day."),
    PlantedLag("alcohol_units", 1, 1.10, "Next-day dehydration after drinking; no same-day "
                                         "effect."),
    PlantedLag("fluid_l", 1, 0.93, "Yesterday's hydration still protects."),
)
#: The lag model these plants are written for: lags 0..3.
PLANTED_MAX_LAG = 3


def _per(feature: str) -> float:
    return next(e.per for e in truth.EFFECTS if e.feature == feature)


def lagged_predictor(x: dict[str, np.ndarray]) -> np.ndarray:
    """sum over planted lags of log(IRR) * x[k, d - lag] / per, for (subjects x days) arrays."""
    shape = next(iter(x.values())).shape
    eta = np.zeros(shape)
    for p in PLANTED_LAGS:
        v = np.asarray(x[p.feature], dtype=float)
        shifted = np.concatenate([np.repeat(v[:, :1], p.lag, axis=1), v[:, :-p.lag]], axis=1) \
            if shape[1] > p.lag else np.repeat(v[:, :1], shape[1], axis=1)
        eta += p.log_coef / _per(p.feature) * shifted
    return eta


def truth_entries() -> dict:
    """The truth document's ``planted_lags``: per feature, the IRR per documented unit at each
    lag 0..PLANTED_MAX_LAG (lag 0 from ``truth.EFFECTS``) and the cumulative IRR over them."""
    out = {}
    same_day = {e.feature: e for e in truth.EFFECTS}
    for feature in dict.fromkeys(p.feature for p in PLANTED_LAGS):
        irr = [same_day[feature].irr] + [1.0] * PLANTED_MAX_LAG
        why = {}
        for p in PLANTED_LAGS:
            if p.feature == feature:
                irr[p.lag] = p.irr
                why[str(p.lag)] = p.why
        out[feature] = {"unit": same_day[feature].unit, "irr_by_lag": irr,
                        "cumulative_lags": f"0-{PLANTED_MAX_LAG}",
                        "cumulative_irr": round(math.exp(sum(math.log(v) for v in irr)), 6),
                        "why": why}
    return out


FORMULA = ("log rate[i,d] gains sum_(k,lag) log_coef[k,lag] * x[k,i,d-lag] / per[k] for the "
           "planted lags (x on every calendar day, logged or not)")
