"""``generate()``: a synthetic contract dataset whose episode rate follows the planted truth.

Subjects are simulated in fixed-size blocks, each with its own random streams (keyed by seed, block
and component), so memory stays bounded and the output depends only on the arguments. The intercept
is then calibrated so that the expected mean over logged subject-days is ``TARGET_MEAN_RATE``, and
episodes are drawn on the logged days (plus a few on skipped days, which a reader must count but
not model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import polars as pl

from pipeline import schema
from pipeline.errors import UserError
from pipeline.synth import episodes as ep
from pipeline.synth import modification
from pipeline.synth import heterogeneity as het
from pipeline.synth import truth
from pipeline.synth.exposures import calendar, linear_predictor, simulate_block
from pipeline.synth.lagged import lagged_predictor
from pipeline.synth.truth_doc import truth_document

DEFAULT_START = date(2026, 1, 5)
#: Subjects per simulation block. Part of the output's definition: changing it changes the data.
BLOCK_SUBJECTS = 4096
_STREAMS = {"subjects": 0, "daily": 1, "window": 2, "injury": 3, "custom": 4, "missing": 5}
_GLOBAL_STREAMS = {"counts": 100, "episodes": 102}
#: Per-block stream of the planted per-person deviations (``heterogeneous=True`` only).
_HETEROGENEITY_STREAM = 6
_BOOL_FEATURES = ("electrolytes", "poor_posture")


@dataclass(frozen=True)
class SynthDataset:
    """A generated dataset: the contract tables (as stored: schema dtypes) and the planted truth."""

    subjects: pl.DataFrame
    daily: pl.DataFrame
    injuries: pl.DataFrame
    episodes: pl.DataFrame
    truth: dict
    custom_factors: tuple[schema.CustomFactor, ...] = field(default=())

    def tables(self) -> dict[str, pl.DataFrame]:
        return {"subjects": self.subjects, "daily": self.daily, "injuries": self.injuries,
                "episodes": self.episodes}


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _check_args(n_subjects: int, n_days: int, seed: int) -> None:
    for name, value, low in (("n_subjects", n_subjects, 1), ("n_days", n_days, 1),
                             ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise UserError(f"synth: {name} must be an integer ≥ {low}, not {value!r}")


def generate(n_subjects: int, n_days: int, seed: int, *, confounded: bool = False,
             start_date: date = DEFAULT_START, custom_factor: bool = True,
             effect_modification: bool = False, lagged: bool = False,
             heterogeneous: bool = False) -> SynthDataset:
    """Simulate ``n_subjects`` subjects over ``n_days`` days from ``start_date``.

    ``effect_modification=True`` plants a sitting effect only in people aged 60+
    (:mod:`pipeline.synth.modification`); the default leaves the data unchanged.

    >>> ds = generate(20, 14, seed=1)
    >>> ds.subjects.columns
    ['subject_id', 'age_band', 'sex']
    >>> ds.truth["planted"]["fluid_l"]["irr"]
    0.85
    """
    _check_args(n_subjects, n_days, seed)
    effects = truth.effects(custom_factor)
    if effect_modification:
        effects = modification.replace_effects(effects)
    doy, weekday = calendar(start_date, n_days)

    width = max(5, len(str(n_subjects)))
    sid = pl.select(pl.concat_str(pl.lit("S"), pl.int_range(1, n_subjects + 1).cast(pl.String)
                                  .str.zfill(width))).to_series()
    start = np.datetime64(start_date, "D")

    # Per block, the daily table is built at once (so the big float arrays are freed); only what the
    # episode draw needs (subject, day, linear predictor) is kept for the logged and skipped days.
    daily_parts, logged_parts, skipped_parts, injury_parts, subject_parts = [], [], [], [], []
    deviation_parts = []
    recent_injury_days = 0
    for b, lo in enumerate(range(0, n_subjects, BLOCK_SUBJECTS)):
        n = min(BLOCK_SUBJECTS, n_subjects - lo)
        rngs = {name: _rng(seed, b, k) for name, k in _STREAMS.items()}
        blk = simulate_block(rngs, n, doy, weekday, confounded=confounded,
                             custom_factor=custom_factor)
        subj_lp = np.log(blk.frailty * blk.age_mult)
        lp = linear_predictor(blk.x, effects) + subj_lp[:, None]
        if effect_modification:
            lp += modification.extra_log_rate(blk.x, blk.age_band)
        if lagged:  # planted lag > 0 effects (pipeline/synth/lagged.py)
            lp += lagged_predictor(blk.x)
        if heterogeneous:  # per-person rate ratios (pipeline/synth/heterogeneity.py)
            deviations = het.draw_deviations(_rng(seed, b, _HETEROGENEITY_STREAM), n)
            lp += het.deviation_predictor(blk.x, deviations, effects)
            deviation_parts.append(deviations)
        cells = np.flatnonzero(blk.logged)  # row-major: sorted by subject, then day
        subject, day = (cells // n_days + lo).astype(np.int32), (cells % n_days).astype(np.int32)
        daily_parts.append(_daily_frame({k: v.ravel()[cells] for k, v in blk.x.items()}, subject,
                                        day, sid, start, custom_factor, rngs["missing"]))
        recent_injury_days += int(blk.x["recent_injury"].ravel()[cells].sum())
        logged_parts.append({"subject": subject, "day": day, "lp": lp.ravel()[cells]})
        cells = np.flatnonzero(blk.in_window & ~blk.logged)
        skipped_parts.append({"subject": (cells // n_days + lo).astype(np.int32),
                              "day": (cells % n_days).astype(np.int32), "lp": lp.ravel()[cells]})
        cells = np.flatnonzero(blk.injury)
        injury_parts.append({"subject": cells // n_days + lo, "day": cells % n_days,
                             "group": blk.injury_group.ravel()[cells]})
        subject_parts.append({"age_band": blk.age_band, "sex": blk.sex, "frailty": blk.frailty,
                              "habitual_stress": blk.habitual_stress,
                              "habitual_sitting": blk.habitual_sitting,
                              "logged_days": blk.logged.sum(axis=1),
                              "window_days": blk.in_window.sum(axis=1)})
        del blk, lp, cells

    cat = lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}  # noqa: E731
    logged, skipped, injuries, subj = (cat(logged_parts), cat(skipped_parts), cat(injury_parts),
                                       cat(subject_parts))
    del logged_parts, skipped_parts, injury_parts, subject_parts
    daily = pl.concat(daily_parts, rechunk=False)
    del daily_parts

    intercept = math.log(truth.TARGET_MEAN_RATE / float(np.mean(np.exp(logged["lp"]))))
    rc = _rng(seed, _GLOBAL_STREAMS["counts"])
    rate = np.exp(intercept + logged["lp"])
    counts = rc.poisson(rate)
    skipped_counts = rc.binomial(rc.poisson(np.exp(intercept + skipped["lp"])),
                                 truth.LOGGING["p_episode_logged_on_skipped_day"])

    subjects = pl.DataFrame({
        "subject_id": sid,
        "age_band": _labels(schema.AGE_BANDS, subj["age_band"]),
        "sex": _labels(schema.SEXES, subj["sex"]),
    })

    injuries_df = pl.DataFrame({
        "subject_id": sid.gather(injuries["subject"]),
        "date": start + injuries["day"],
        "muscle_group": _labels(list(truth.INJURY_GROUP_P), injuries["group"]),
    }).sort("subject_id", "date", "muscle_group")

    ep_subject = np.concatenate([np.repeat(logged["subject"], counts),
                                 np.repeat(skipped["subject"], skipped_counts)])
    ep_day = np.concatenate([np.repeat(logged["day"], counts),
                             np.repeat(skipped["day"], skipped_counts)])
    episodes_df, attrs = _episodes_frame(_rng(seed, _GLOBAL_STREAMS["episodes"]), ep_subject,
                                         ep_day, sid, start)

    custom = (schema.CustomFactor(**truth.CUSTOM_FACTOR),) if custom_factor else ()
    args = {"n_subjects": n_subjects, "n_days": n_days, "seed": seed, "confounded": confounded,
            "start_date": start_date.isoformat(), "custom_factor": custom_factor,
            "block_subjects": BLOCK_SUBJECTS}
    if effect_modification:  # only when set, so the default truth file is unchanged
        args["effect_modification"] = True
    if lagged:
        args["lagged"] = True
    doc = truth_document(
        args=args, effects=effects, intercept=intercept, confounded=confounded,
        realized={
            "n_subjects": n_subjects,
            "n_subject_days": int(counts.size),
            "n_episodes": int(episodes_df.height),
            "n_episodes_on_logged_days": int(counts.sum()),
            "episodes_outside_logged_days": int(skipped_counts.sum()),
            "mean_episodes_per_subject_day": float(counts.mean()) if counts.size else 0.0,
            "expected_mean_episodes_per_subject_day": float(rate.mean()) if rate.size else 0.0,
            "n_injuries": int(injuries_df.height),
            "subject_days_with_recent_injury": recent_injury_days,
            "subjects_whose_window_spans_the_period": int((subj["window_days"] == n_days).sum()),
            "logged_days_per_subject": {"min": int(subj["logged_days"].min()),
                                        "median": float(np.median(subj["logged_days"])),
                                        "max": int(subj["logged_days"].max())},
            "subjects_with_planted_rate_3_per_week": _frequent_subjects(logged, rate, n_subjects),
            "missing_fraction": {c: daily[c].null_count() / max(daily.height, 1)
                                 for c in daily.columns[2:]},
            "episodes": attrs,
        },
        subject_level={"habitual_stress": subj["habitual_stress"],
                       "habitual_sitting": subj["habitual_sitting"], "frailty": subj["frailty"]},
    )
    if effect_modification:
        doc["effect_modification"] = modification.truth_entry()
    if lagged:
        from pipeline.synth import lagged as planted_lags

        doc["planted_lags"] = planted_lags.truth_entries()
        doc["formula_lags"] = planted_lags.FORMULA
    if heterogeneous:
        doc["args"]["heterogeneous"] = True
        doc["heterogeneity"] = het.truth_section(sid.to_list(), cat(deviation_parts), effects)
    return SynthDataset(subjects=subjects, daily=daily, injuries=injuries_df, episodes=episodes_df,
                        truth=doc, custom_factors=custom)


def _labels(values, codes: np.ndarray) -> pl.Series:
    """Enum labels from integer codes (a gather, not a Python loop)."""
    return pl.Series(list(values), dtype=pl.String).gather(codes)


def _frequent_subjects(logged: dict, rate: np.ndarray, n_subjects: int) -> int:
    """Subjects whose planted mean rate is ≥ 3 a week over at least 28 logged days."""
    days = np.bincount(logged["subject"], minlength=n_subjects)
    total = np.bincount(logged["subject"], weights=rate, minlength=n_subjects)
    mean = np.divide(total, days, out=np.zeros(n_subjects), where=days > 0)
    return int(((mean >= 3 / 7) & (days >= 28)).sum())


def _daily_frame(x: dict[str, np.ndarray], subject: np.ndarray, day: np.ndarray, sid: pl.Series,
                 start: np.datetime64, custom_factor: bool,
                 rng: np.random.Generator) -> pl.DataFrame:
    """``daily`` rows of logged days: factor columns in schema order, a few % blanked (MCAR).

    A skipped diary section blanks every column of one contributing factor together; single
    values are blanked on their own as well (rates in ``truth``).
    """
    data: dict[str, object] = {"subject_id": sid.gather(subject), "date": start + day}
    # Core columns first, the custom one after, so that declaring it leaves the others unchanged.
    parts = [{c: col.factor for c, col in schema.FACTOR_COLUMNS.items()}]
    if custom_factor:
        parts.append({"magnesium_mg": truth.CUSTOM_FACTOR["factor"]})
    for section in parts:
        skipped = {f: rng.random(day.size) < truth.SECTION_MISSING_RATE
                   for f in dict.fromkeys(section.values())}
        for c, factor in section.items():
            blank = rng.random(day.size) < truth.MISSING_RATE[c]
            if c not in truth.SECTIONLESS_COLUMNS:
                blank |= skipped[factor]
            s = pl.Series(c, x[c], dtype=pl.Boolean if c in _BOOL_FEATURES else pl.Float64)
            data[c] = s.scatter(np.flatnonzero(blank), None) if blank.any() else s
    return pl.DataFrame(data)


def _episodes_frame(rng: np.random.Generator, subject: np.ndarray, day: np.ndarray, sid: pl.Series,
                    start: np.datetime64) -> tuple[pl.DataFrame, dict]:
    """The ``episodes`` table, sorted by subject and time (ids in that order), and its summary."""
    n = subject.size
    a = ep.simulate_attributes(rng, subject, len(sid))
    # Same-second episodes of one subject-day are nudged apart (t' = rank + cummax(t - rank) within
    # the subject-day), so the fallback key (subject_id, started_at, muscle_group) is unique even
    # without episode_id. Offsetting each subject-day by a large constant lets one running maximum
    # over the whole sorted array act as a per-group one.
    row = np.lexsort((a["second"], day, subject))
    group = subject[row].astype(np.int64) * (int(day.max(initial=0)) + 1) + day[row]
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1] if n else np.array([], np.int64)
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    big = 2 * ep.SECONDS_PER_DAY
    second = np.maximum.accumulate(a["second"][row] - rank + group * big) - group * big + rank
    assert n == 0 or second.max() < ep.SECONDS_PER_DAY
    started = ((start + day[row]).astype("datetime64[us]")
               + second.astype("timedelta64[s]").astype("timedelta64[us]"))

    ids = pl.select(pl.concat_str(pl.lit("E"), pl.int_range(1, n + 1).cast(pl.String).str.zfill(9))
                    ).to_series()
    data = {
        "episode_id": pl.Series("episode_id", ids, dtype=pl.String).scatter(
            np.nonzero(a["episode_id__null"][row])[0], None),
        "subject_id": sid.gather(subject[row]),
        "started_at": pl.Series("started_at", started, dtype=pl.Datetime("us")),
    }
    a["muscle_group"] = _labels(list(truth.MUSCLE_GROUP_P), a["muscle_group"])
    a["numbness"] = _labels(schema.NUMBNESS_LEVELS, a["numbness"])
    for c in ("duration_min", "muscle_group", "pain", "pain_uncontrolled", "swelling",
              "skin_changes", "sleep_loss", "er_visit", "numbness"):
        v = a[c]
        v = v.gather(row) if isinstance(v, pl.Series) else v[row]
        s = pl.Series(c, v, dtype=schema.EPISODES.column(c).dtype)
        null = a.get(f"{c}__null")
        if null is not None and null.any():
            s = s.scatter(np.flatnonzero(null[row]), None)
        data[c] = s
    df = pl.DataFrame(data).select(schema.EPISODES.column_names)

    attrs = {
        "median_duration_min": float(df["duration_min"].median() or 0.0),
        "fraction_duration_over_15_min": rate_of(df["duration_min"] > 15),
        "fraction_pain_7_or_more": rate_of(df["pain"] >= 7),
        "muscle_group_share": {g: round(float((df["muscle_group"] == g).mean() or 0.0), 6)
                               for g in schema.MUSCLE_GROUPS},
        "night_share_calf": rate_of(pl.Series(a["night"]).filter(a["muscle_group"] == "calf")),
        "red_flag_rate_among_recorded": {
            c: rate_of(df[c])
            for c in ("pain_uncontrolled", "swelling", "skin_changes", "sleep_loss", "er_visit")},
        "numbness_share_among_recorded": {
            lvl: rate_of(df["numbness"].drop_nulls() == lvl) for lvl in schema.NUMBNESS_LEVELS},
        "null_fraction": {c: round(float(df[c].is_null().mean()), 6) if n else 0.0
                          for c in truth.EPISODES["missing_rate"]},
    }
    return df, attrs


def rate_of(mask: pl.Series) -> float | None:
    """Share of true values among the recorded (non-null) ones."""
    v = mask.drop_nulls()
    return round(float(v.mean()), 6) if v.len() else None
