"""Subjects and their daily exposures, simulated one block of subjects at a time.

Every factor is drawn on the full subject × day grid as the value the subject would log (already
rounded to the diary's resolution), so the rate uses exactly the numbers a reader sees. Habitual
(subject-level) levels are independent of age, sex and frailty, except in the confounded scenario,
so only there does a between-subject comparison mislead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
from scipy.signal import lfilter

from pipeline.synth import truth

#: Resolution each factor is logged at (the diary's rounding), in the column's unit.
STEP = {
    "exercise_min": 5, "exercise_rpe": 1, "fluid_l": 0.1, "heat_c": 0.1, "sitting_h": 0.5,
    "stress": 1, "sleep_h": 0.25, "caffeine_mg": 5, "alcohol_units": 0.5, "magnesium_mg": 50,
}


def quantize(x: np.ndarray, step: float) -> np.ndarray:
    """Round to the nearest multiple of ``step`` so that 2.3 is the double nearest 2.3."""
    if step < 1:
        inv = round(1 / step)
        return np.round(x * inv) / inv
    return np.round(x / step) * step


@dataclass
class Block:
    """Simulated values for a block of subjects (arrays are subjects × days unless noted)."""

    age_band: np.ndarray          # (S,) index into schema.AGE_BANDS
    sex: np.ndarray               # (S,) index into schema.SEXES
    frailty: np.ndarray           # (S,) gamma frailty (times confounding term when confounded)
    age_mult: np.ndarray          # (S,)
    habitual_stress: np.ndarray   # (S,)
    habitual_sitting: np.ndarray  # (S,)
    x: dict[str, np.ndarray]      # feature -> values (bool arrays for booleans)
    in_window: np.ndarray         # bool, inside the subject's logging window
    logged: np.ndarray            # bool, a logged day (subset of in_window)
    injury: np.ndarray            # bool, an injury on that day
    injury_group: np.ndarray      # int index into truth.INJURY_GROUP_P, where injury


def calendar(start: date, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Day-of-year (1-366) and weekday (0 = Monday) of each study day."""
    days = [start + timedelta(days=d) for d in range(n_days)]
    doy = np.array([d.timetuple().tm_yday for d in days], dtype=float)
    weekday = np.array([d.weekday() for d in days])
    return doy, weekday


def _ar1(rng: np.random.Generator, shape: tuple[int, int], phi: float, sd: float) -> np.ndarray:
    """Stationary AR(1) noise along days with marginal standard deviation ``sd``."""
    e = rng.normal(0.0, sd * np.sqrt(1 - phi**2), size=shape)
    e[:, 0] = rng.normal(0.0, sd, size=shape[0])
    return lfilter([1.0], [1.0, -phi], e, axis=1)


def _bernoulli_logit(rng: np.random.Generator, logit: np.ndarray) -> np.ndarray:
    return rng.random(logit.shape) < 1.0 / (1.0 + np.exp(-logit))


def simulate_block(rngs: dict[str, np.random.Generator], n: int, doy: np.ndarray,
                   weekday: np.ndarray, *, confounded: bool, custom_factor: bool) -> Block:
    """Simulate ``n`` subjects over the study days (``rngs`` holds one stream per component)."""
    rs, rd, rw, ri = rngs["subjects"], rngs["daily"], rngs["window"], rngs["injury"]
    n_days = doy.size
    shape = (n, n_days)
    weekend = (weekday >= 5)[None, :]
    col = lambda v: v[:, None]  # noqa: E731 - subject vector against the day axis

    age_band = rs.choice(len(truth.AGE_BAND_P), size=n, p=truth.AGE_BAND_P)
    sex = rs.choice(len(truth.SEX_P), size=n, p=list(truth.SEX_P.values()))
    age_mult = np.array(list(truth.AGE_MULTIPLIER.values()))[age_band]
    frailty = rs.gamma(truth.FRAILTY_SHAPE, 1.0 / truth.FRAILTY_SHAPE, size=n)

    # Habitual levels; a shared "busy life" trait ties stress, sitting, sleep and caffeine together
    # between subjects (correlated covariates, not confounders: none of them touches frailty).
    busy = rs.normal(size=n)
    ex_p = rs.beta(2.0, 3.5, size=n)
    ex_median = np.exp(rs.normal(np.log(40), 0.35, size=n))
    rpe_hab = np.clip(rs.normal(5.0, 1.2, size=n), 1, 9)
    fluid_hab = np.clip(rs.normal(2.0, 0.45, size=n), 0.8, 4.0)
    climate = rs.normal(0.0, 3.0, size=n)
    elec_logit = rs.normal(-2.2, 1.0, size=n)
    sit_hab = np.clip(7.0 + 2.0 * (0.5 * busy + np.sqrt(0.75) * rs.normal(size=n)), 1, 13)
    posture_logit = rs.normal(-1.2, 0.8, size=n)
    stress_hab = np.clip(4.0 + 1.4 * (0.6 * busy + 0.8 * rs.normal(size=n)), 0.5, 9)
    sleep_hab = np.clip(rs.normal(7.1, 0.6, size=n) - 0.15 * (stress_hab - 4.0), 4.5, 9.5)
    caffeine_hab = np.where(rs.random(n) < 0.12, 0.0,
                            np.exp(rs.normal(np.log(180), 0.6, size=n))
                            * (1 + 0.08 * busy).clip(0.5))
    drinker = rs.random(n) < 0.75
    drink_p = rs.beta(2.0, 5.0, size=n)
    drink_units = np.exp(rs.normal(np.log(3.0), 0.5, size=n))
    mg_taker = rs.random(n) < 0.20
    mg_dose = rs.choice([200.0, 250.0, 300.0, 400.0], size=n)
    mg_adherence = rs.beta(8.0, 2.0, size=n)
    injury_prone = rs.gamma(2.0, 0.5, size=n)

    if confounded:
        c = truth.CONFOUNDING
        frailty = frailty * np.exp(
            c["stress"]["gamma_per_unit"] * (stress_hab - c["stress"]["centre"])
            + c["sitting_h"]["gamma_per_unit"] * (sit_hab - c["sitting_h"]["centre"]))

    # Daily values.
    ex_day = rd.random(shape) < np.clip(col(ex_p) * np.where(weekend, 1.3, 0.88), 0, 0.97)
    ex_min = np.clip(col(ex_median) * np.exp(rd.normal(0, 0.45, shape)), 10, 240)
    ex_min = np.where(ex_day, quantize(ex_min, STEP["exercise_min"]), 0.0)
    rpe = (col(rpe_hab) + 0.8 * np.log(np.maximum(ex_min, 1) / col(ex_median))
           + rd.normal(0, 1.1, shape))
    rpe = np.where(ex_day, np.clip(quantize(rpe, 1), 1, 10), 0.0)

    season = 14.0 - 10.0 * np.cos(2 * np.pi * (doy - 20.0) / 365.25)
    heat = quantize(season[None, :] + col(climate) + _ar1(rd, shape, 0.7, 3.0), STEP["heat_c"])

    fluid = (col(fluid_hab) + 0.04 * (heat - 15.0) + 0.5 * ex_min / 60.0
             + rd.normal(0, 0.35, shape))
    fluid = np.clip(quantize(fluid, STEP["fluid_l"]), 0.3, 8.0)
    electrolytes = _bernoulli_logit(
        rd, col(elec_logit) + 1.0 * (ex_min >= 45) + 0.05 * (heat - 15.0))

    sitting = col(sit_hab) + np.where(weekend, -2.0, 0.5) - 0.01 * ex_min + rd.normal(0, 1.2, shape)
    sitting = np.clip(quantize(sitting, STEP["sitting_h"]), 0, 18)
    posture = _bernoulli_logit(rd, col(posture_logit) + 0.3 * (sitting - 7.0))

    stress_dev = np.where(weekend, -0.8, 0.3) + _ar1(rd, shape, 0.5, 1.3)
    stress = np.clip(quantize(col(stress_hab) + stress_dev, 1), 0, 10)
    sleep = (col(sleep_hab) - 0.2 * (stress - col(stress_hab)) + np.where(weekend, 0.5, -0.1)
             + rd.normal(0, 0.7, shape))
    sleep = np.clip(quantize(sleep, STEP["sleep_h"]), 2, 12)
    caffeine = col(caffeine_hab) * rd.gamma(6.0, 1 / 6.0, shape) * np.clip(
        1 + 0.15 * (col(sleep_hab) - sleep), 0.5, 2.0)
    caffeine = np.clip(quantize(caffeine, STEP["caffeine_mg"]), 0, 1500)
    drink_p_day = np.clip(col(drink_p) * np.where(weekend, 2.0, 0.7), 0, 1)
    drinks = col(drinker) & (rd.random(shape) < drink_p_day)
    alcohol = np.where(drinks, np.clip(quantize(col(drink_units) * np.exp(rd.normal(0, 0.4, shape)),
                                                STEP["alcohol_units"]), 0.5, 30), 0.0)

    x = {"exercise_min": ex_min, "exercise_rpe": rpe, "fluid_l": fluid, "heat_c": heat,
         "electrolytes": electrolytes, "sitting_h": sitting, "poor_posture": posture,
         "stress": stress, "sleep_h": sleep, "caffeine_mg": caffeine, "alcohol_units": alcohol}
    if custom_factor:
        rm = rngs["custom"]
        takes = col(mg_taker) & (rm.random(shape) < col(mg_adherence))
        x["magnesium_mg"] = np.where(takes, col(mg_dose), 0.0)

    # Logging window: first..last logged day; days inside it are skipped now and then.
    third = max(n_days // 3, 1)
    first = np.where(rw.random(n) < truth.LOGGING["p_late_start"], rw.integers(0, third, n), 0)
    stop_early = rw.random(n) < truth.LOGGING["p_early_stop"]
    earliest_stop = np.minimum(first + third, n_days - 1)
    last = np.where(stop_early, earliest_stop + rw.integers(0, n_days - earliest_stop), n_days - 1)
    day = np.arange(n_days)[None, :]
    in_window = (day >= col(first)) & (day <= col(last))
    skip_p = rw.beta(*truth.LOGGING["skip_beta"], size=n)
    logged = in_window & ((rw.random(shape) >= col(skip_p))
                          | (day == col(first)) | (day == col(last)))

    # Injuries: rare, more likely on long exercise days; at most one a day (the table's key).
    hazard = (truth.INJURY["base_per_year"] / 365.25 * col(injury_prone)
              * (1 + truth.INJURY["exercise_multiplier_per_hour"] * ex_min / 60.0))
    injury = in_window & (ri.random(shape) < hazard)
    injury_group = ri.choice(len(truth.INJURY_GROUP_P), size=shape,
                             p=list(truth.INJURY_GROUP_P.values()))
    # recent_injury: an injury on any of d-30..d-1.
    cum = np.concatenate(
        [np.zeros((n, 1), dtype=np.int32), np.cumsum(injury, axis=1, dtype=np.int32)], axis=1)
    lo = np.maximum(np.arange(n_days) - 30, 0)
    x["recent_injury"] = (cum[:, np.arange(n_days)] - cum[:, lo]) > 0

    return Block(age_band=age_band, sex=sex, frailty=frailty, age_mult=age_mult,
                 habitual_stress=stress_hab, habitual_sitting=sit_hab, x=x, in_window=in_window,
                 logged=logged, injury=injury, injury_group=injury_group)


def linear_predictor(x: dict[str, np.ndarray], effects) -> np.ndarray:
    """sum_k log(IRR_k) * x_k / unit_k, over the planted effects (without intercept or frailty)."""
    eta = np.zeros(next(iter(x.values())).shape)
    for e in effects:
        if not e.null:
            eta += e.log_coef / e.per * x[e.feature]
    return eta
