"""``within_subject_lags``: the distributed-lag within-subject model behind ``lags.csv``.

For every core and custom factor the model holds its value on the day at risk and on each of the
L previous days (L = ``max_lag_days``: ``[analysis]`` default, a custom factor's own setting), all
factors and lags in one conditional Poisson fit (strata and time adjustment as the other
within-subject models, ``time_strata.py``; errors clustered by subject). Each lag's rate ratio is
adjusted for the factor's other lags and for every other factor. Up to a week each lag is free;
beyond it the lags follow a natural spline (``lag_basis.py``, dlnm's cross-basis with a linear
exposure-response). The cumulative rate ratio over lags 0..L is the effect of one documented unit
more on each day of the window, ``exp(sum_l beta_l)``, with its CI from the clustered covariance of
the sum. Two Wald tests per factor (clustered covariance, chi-square reference): no effect beyond
lag 0 (beta_1 = ... = beta_L = 0) and a flat lag curve (beta_0 = ... = beta_L).

Missing days are not zero: only days with a complete lag window enter (``lag_design.py``, which
builds the design per bucket of whole subjects); the days dropped are counted in the notes and
in ``diagnostics.json``.

Run time: the design has (L+1) columns per factor, so on a large panel the model is fitted on the
subjects of a stable hash-based subset holding about ``MAX_SUBJECT_DAYS`` subject-days (each
subject is in or out by its own id, so the subset does not depend on bucketing); the rows and
diagnostics say so, and the CIs are those of the subset (wider, never narrower, than all the data
would give).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import polars as pl
from scipy import stats

from pipeline.analysis_config import AnalysisConfig
from pipeline.features import dictionary as fd
from pipeline.features.panel import Panel
from pipeline.models.design import MAX_MISSING_FRACTION, MIN_DAYS_PER_LEVEL, \
    MIN_SUBJECTS_WITH_VARIATION
from pipeline.models.lag_design import (  # noqa: F401 - re-exported for callers and tests
    NOT_LAGGED,
    LagBucket,
    LagTerm,
    combine_buckets,
    lag_design_bucket,
    lag_terms,
)
from pipeline.models.subsets import (  # noqa: F401 - SUBSET_SEED, subject_subset re-exported
    SUBSET_SEED,
    panel_subset,
    subject_subset,
)
from pipeline.outputs import OutputColumn, OutputTable, declare

LAG_MODEL = "within_subject_lags"
#: Bound on the subject-days the lag model is fitted on (see the module docstring).
MAX_SUBJECT_DAYS = 400_000
Z_CRIT = float(stats.norm.ppf(0.975))

LAGS = declare(OutputTable(
    file="lags.csv",
    meaning="The distributed-lag within-subject model: one row per feature and lag (the rate "
            "ratio of the factor on the day at risk, `lag` 0, and on each of the previous days), "
            "and one cumulative row per feature (`lag` `0-L`: one unit more on every day of the "
            "window), adjusted for every other lag and factor, with subject-clustered 95% CIs.",
    caution="Associations in observational diaries, not causes; only days whose whole lag window "
            "was logged enter (the dropped days are counted in the note).",
    columns=(
        OutputColumn("model", pl.String(), "`within_subject_lags`"),
        OutputColumn("factor", pl.String(), "documented contributing factor (or custom)"),
        OutputColumn("feature", pl.String(), "feature name (feature dictionary)"),
        OutputColumn("unit", pl.String(), "the documented unit the IRR is per (per day, for "
                                          "the cumulative row: sustained over the window)"),
        OutputColumn("lag", pl.String(), "days before the day at risk (`0` the same day), or "
                                         "`0-L` for the cumulative effect over lags 0..L"),
        OutputColumn("irr", pl.Float64(), "incidence-rate ratio (empty: not estimable)"),
        OutputColumn("ci_low", pl.Float64(), "lower 95% confidence limit"),
        OutputColumn("ci_high", pl.Float64(), "upper 95% confidence limit"),
        OutputColumn("p_value", pl.Float64(), "two-sided Wald p-value"),
        OutputColumn("n_subjects", pl.Int64(), "subjects contributing"),
        OutputColumn("n_subject_days", pl.Int64(), "subject-days with a complete lag window"),
        OutputColumn("n_episodes", pl.Int64(), "episodes on those days"),
        OutputColumn("note", pl.String(), "design, dropped days, joint tests, or why no estimate"),
    )))


@dataclass(frozen=True)
class LagResults:
    lags: pl.DataFrame
    diagnostics: dict[str, Any]


def fit_lags(panel: Panel, *, custom_factors=(), analysis: AnalysisConfig | None = None,
             max_subject_days: int | None = MAX_SUBJECT_DAYS) -> LagResults:
    """Fit the distributed-lag model on the panel; rows for every core and custom feature."""
    from pipeline.models.time_strata import STRATUM_CODE, frame_for_analysis

    analysis = analysis or AnalysisConfig()
    frame, subset = panel_subset(panel, max_subject_days)
    frame, adjusters = frame_for_analysis(frame, analysis)
    reported = [f for f in fd.model_features(fd.WITHIN_SUBJECT, custom_factors)[1]]
    excluded: dict[str, str] = {}
    candidates = []
    nulls = frame.select(pl.col([f.name for f in reported if f.name in panel.features])
                         .null_count()).row(0, named=True) if frame.height else {}
    for f in reported:
        if f.name not in panel.features:
            excluded[f.name] = panel.absent.get(f.name, "not in the panel")
        elif frame.height and nulls[f.name] / frame.height > MAX_MISSING_FRACTION:
            excluded[f.name] = (f"missing on {nulls[f.name]:,} of {frame.height:,} subject-days "
                                f"(more than {MAX_MISSING_FRACTION:.0%})")
        else:
            candidates.append(f)
    terms = lag_terms(candidates, analysis, custom_factors)
    strata_column = STRATUM_CODE if analysis.strata == "subject_month" else None
    adjust = [f.name for f in adjusters]

    while True:
        data = lag_design_bucket(frame, terms, adjust, strata_column)
        failures = _insufficient(data, terms)
        if not failures:
            fit, failure = _fit(data, terms, adjust, excluded)
            if fit is not None or failure is not None:
                break
            terms = [t for t in terms if t.feature.name not in excluded]
            continue
        excluded.update(failures)
        terms = [t for t in terms if t.feature.name not in failures]
    rows, tests = _rows(reported, terms, fit, failure, data, excluded, analysis, custom_factors)
    lags = sort_lags(LAGS.conform(pl.DataFrame(rows, schema=LAGS.schema(), orient="row")),
                     custom_factors)
    diagnostics = {
        "model": LAG_MODEL, "analysis": {**analysis.as_dict(), "description": analysis.describe()},
        "max_lag_days": {t.feature.name: t.max_lag for t in terms},
        "lag_basis": {t.feature.name: t.basis for t in terms},
        "n_subject_days_panel": data.n_days,
        "n_dropped_window_incomplete": data.n_window_incomplete,
        "n_dropped_value_missing": data.n_value_missing,
        "n_subject_days": int(data.y.size), "joint_tests": tests,
        "not_estimated": dict(excluded), "subset": subset, "failure": failure,
        "small_sample_factor": None if fit is None else fit.small_sample_factor,
        # The declarations, so a notebook can refit from the store with other choices.
        "custom_factors": [dict(vars(c)) for c in custom_factors],
    }
    return LagResults(lags=lags, diagnostics=diagnostics)


def _insufficient(data: LagBucket, terms: Sequence[LagTerm]) -> dict[str, str]:
    """The design policy of ``design.py`` on each factor's same-day column."""
    out: dict[str, str] = {}
    if data.y.size == 0:
        return out
    has = np.bincount(data.subjects, weights=data.y) > 0
    starts = np.flatnonzero(np.r_[True, data.subjects[1:] != data.subjects[:-1]])
    with_events = has[data.subjects[starts]]
    for j, t in enumerate(terms):
        x0 = data.same_day[:, j]
        if t.feature.kind == "binary":
            yes = int(np.count_nonzero(x0 > 0.5))
            if min(yes, x0.size - yes) < MIN_DAYS_PER_LEVEL:
                out[t.feature.name] = (f"only {min(yes, x0.size - yes):,} complete-window "
                                       f"subject-days at one level (need {MIN_DAYS_PER_LEVEL})")
                continue
        vary = np.maximum.reduceat(x0, starts) > np.minimum.reduceat(x0, starts)
        n_vary = int(np.count_nonzero(vary & with_events))
        if n_vary < MIN_SUBJECTS_WITH_VARIATION:
            out[t.feature.name] = (f"varies within only {n_vary} subject(s) with episodes on "
                                   f"complete-window days (need {MIN_SUBJECTS_WITH_VARIATION})")
    return out


def _fit(data: LagBucket, terms, adjust, excluded):
    """(fit, None), (None, reason), or (None, None) after dropping features the estimator
    rejected (the caller rebuilds the design and refits)."""
    from pipeline.models.conditional import fit_conditional_poisson
    from pipeline.models.design import FEATURE_REASONS
    from pipeline.models.estimation import EstimationError

    if not terms:
        return None, "no factor has enough complete-window data"
    if data.y.sum() == 0:
        return None, "no episodes on complete-window subject-days"
    names = [c for t in terms for c in t.columns] + list(adjust)
    try:
        fit = fit_conditional_poisson(data.X, data.y, groups=data.strata, clusters=data.subjects,
                                      feature_names=names)
    except EstimationError as exc:
        owners = {c: t.feature.name for t in terms for c in t.columns}
        involved = sorted({owners[c] for c in exc.features if c in owners})
        if exc.reason not in FEATURE_REASONS or not involved:
            return None, f"the solver failed ({exc})"
        if exc.reason == "collinear":
            involved = involved[-1:]
        for name in involved:
            excluded[name] = FEATURE_REASONS[exc.reason]
        return None, None
    return fit, None


def lag_estimates(term_index: int, terms: Sequence[LagTerm], fit) -> dict[str, Any]:
    """Per-lag and cumulative log rate ratios of one term with their clustered covariance, and
    the two joint Wald tests."""
    start = sum(t.C.shape[1] for t in terms[:term_index])
    t = terms[term_index]
    idx = np.arange(start, start + t.C.shape[1])
    theta = np.asarray(fit.coef)[idx]
    V = np.asarray(fit.cov_cluster)[np.ix_(idx, idx)]
    beta, cov = t.C @ theta, t.C @ V @ t.C.T
    ones = np.ones(t.max_lag + 1)
    out = {"beta": beta, "cov": cov, "cumulative": float(ones @ beta),
           "cumulative_se": float(np.sqrt(max(ones @ cov @ ones, 0.0)))}
    if t.max_lag:
        out["beyond_lag0"] = _wald(np.eye(t.max_lag + 1)[1:], beta, cov)
        out["flat"] = _wald(np.eye(t.max_lag + 1)[1:] - np.eye(t.max_lag + 1)[0], beta, cov)
    return out


def _wald(R: np.ndarray, beta: np.ndarray, cov: np.ndarray) -> dict[str, float]:
    """Wald chi-square of R beta = 0 with the (possibly reduced-rank) covariance."""
    b, V = R @ beta, R @ cov @ R.T
    df = int(np.linalg.matrix_rank(V, tol=1e-10 * max(float(np.abs(V).max()), 1e-300)))
    w = float(b @ np.linalg.pinv(V, rcond=1e-10, hermitian=True) @ b)
    return {"chi2": w, "df": df, "p_value": float(stats.chi2.sf(w, df)) if df else float("nan")}


def _row(f: fd.Feature, lag: str, counts: dict, note: str, est=None) -> dict[str, Any]:
    row = {"model": LAG_MODEL, "factor": f.factor, "feature": f.name, "unit": f.unit, "lag": lag,
           "irr": None, "ci_low": None, "ci_high": None, "p_value": None, **counts, "note": note}
    if est is not None:
        b, se = est
        row.update(irr=float(np.exp(b)), ci_low=float(np.exp(b - Z_CRIT * se)),
                   ci_high=float(np.exp(b + Z_CRIT * se)),
                   p_value=float(2 * stats.norm.sf(abs(b / se))) if se > 0 else None)
    return row


def _rows(reported, terms, fit, failure, data: LagBucket, excluded, analysis, custom_factors):
    n_subj = int(np.count_nonzero(np.bincount(data.subjects, weights=data.y) > 0)) \
        if data.y.size else 0
    counts = {"n_subjects": n_subj, "n_subject_days": int(data.y.size),
              "n_episodes": int(round(float(data.y.sum())))}
    dropped = data.n_window_incomplete + data.n_value_missing
    common = [analysis.describe(),
              f"{dropped:,} of {data.n_days:,} subject-days dropped for an incomplete lag window "
              f"({data.n_window_incomplete:,} reach an unlogged day or the time before the first "
              f"diary day, {data.n_value_missing:,} miss a value in the window)"]
    by_name = {t.feature.name: i for i, t in enumerate(terms)}
    # Lags of features left out (absent, too much missing): as they would have been fitted.
    planned = {t.feature.name: t.max_lag for t in lag_terms(reported, analysis, custom_factors)}
    rows: list[dict[str, Any]] = []
    tests: dict[str, Any] = {}
    for f in reported:
        i = by_name.get(f.name)
        L = terms[i].max_lag if i is not None else planned[f.name]
        if f.name in excluded or fit is None or i is None:
            why = excluded.get(f.name) or failure or "model not fitted"
            for lag in [str(k) for k in range(L + 1)] + [f"0-{L}"]:
                rows.append(_row(f, lag, counts, "not estimated: " + why))
            continue
        est = lag_estimates(i, terms, fit)
        se = np.sqrt(np.clip(np.diag(est["cov"]), 0.0, None))
        note = "; ".join(common + ([NOT_LAGGED[f.name]] if f.name in NOT_LAGGED else []))
        for lag in range(L + 1):
            rows.append(_row(f, str(lag), counts, note, (est["beta"][lag], se[lag])))
        test_note = ""
        if L:
            tests[f.name] = {"no_effect_beyond_lag0": est["beyond_lag0"],
                             "flat_lag_curve": est["flat"]}
            test_note = (f"; joint tests: no effect beyond lag 0 p = "
                         f"{est['beyond_lag0']['p_value']:.3g} (df {est['beyond_lag0']['df']}), "
                         f"flat lag curve p = {est['flat']['p_value']:.3g} "
                         f"(df {est['flat']['df']})")
        cum_note = note + (f"; cumulative: one unit ({f.unit}) more on each of the {L + 1} days "
                           f"(the day and the {L} before)" if L else
                           "; cumulative over lag 0 only (the same as lag 0)") + test_note
        rows.append(_row(f, f"0-{L}", counts, cum_note,
                         (est["cumulative"], est["cumulative_se"])))
    return rows, tests


def sort_lags(lags: pl.DataFrame, custom_factors=()) -> pl.DataFrame:
    """Sorted by factor (guidance order, then custom), feature (dictionary order) and lag (the
    per-lag rows in order, the cumulative row last)."""
    factor_rank = fd.factor_order(custom_factors)
    names = [f.name for f in fd.CORE_FEATURES] + [c.column for c in custom_factors]
    feature_rank = {n: i for i, n in enumerate(names)}
    lag_rank = pl.when(pl.col("lag").str.contains("-")).then(10_000).otherwise(
        pl.col("lag").cast(pl.Int64, strict=False))
    return (lags.with_columns(
        pl.col("factor").replace_strict(factor_rank, default=len(factor_rank)).alias("_f"),
        pl.col("feature").replace_strict(feature_rank, default=len(feature_rank)).alias("_x"),
        lag_rank.alias("_l"))
        .sort("model", "_f", "_x", "feature", "_l").select(LAGS.names))


def write_lags(results: LagResults, out_dir) -> None:
    """lags.csv, floats to 6 significant digits as effects.csv."""
    from pathlib import Path

    from pipeline import atomic
    from pipeline.models.effects import format_floats

    atomic.write_csv(Path(out_dir) / "lags.csv", format_floats(results.lags))
