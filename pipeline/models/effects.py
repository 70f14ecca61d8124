"""Model assembly: from the subject-day panel to ``effects.csv``, one row per model and feature.

For each model (``population``, ``within_subject`` and the secondary models named in the feature
dictionary) this module takes the design from ``design.py`` (features, sufficiency policy, complete
cases), calls the estimators in ``poisson.py`` / ``conditional.py``, adds Benjamini–Hochberg
q-values within the model, and assembles effects.csv, dose_response.csv and diagnostics.json.
A feature the estimator rejects (no variation, separation, collinearity) leaves the design with the
reason, and the rest is refitted. A dataset too small for the ``population`` or ``within_subject``
model is a ``UserError``; a secondary model that cannot be fitted says so in its rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from pipeline import progress
from pipeline.errors import UserError
from pipeline.outputs import OutputColumn, OutputTable, declare
from pipeline.features import dictionary as fd
from pipeline.features.panel import OUTCOME, Panel
from pipeline.models.design import (  # noqa: F401 - re-exported for callers and tests
    COLLINEAR_TOLERANCE,
    FEATURE_REASONS,
    MAX_MISSING_FRACTION,
    MIN_DAYS_PER_LEVEL,
    MIN_SUBJECTS_WITH_VARIATION,
    MODEL_ORDER,
    PRIMARY_MODELS,
    SUBJECT_CODE,
    Design,
    model_specs,
    prepare_design,
    with_subject_codes,
)

EFFECTS = declare(OutputTable(
    file="effects.csv",
    meaning="One row per model and feature: the incidence-rate ratio per documented unit with its "
            "subject-clustered 95% CI.",
    caution="Associations in observational diaries, not causes; `population` rows mix differences "
            "between people with differences between days.",
    columns=(
        OutputColumn("model", pl.String(), "model name (`within_subject` leads)"),
        OutputColumn("factor", pl.String(), "documented contributing factor (or `custom`)"),
        OutputColumn("feature", pl.String(), "feature name (feature dictionary)"),
        OutputColumn("unit", pl.String(), "the documented unit the IRR is per"),
        OutputColumn("irr", pl.Float64(), "incidence-rate ratio per unit (empty: not estimable)"),
        OutputColumn("ci_low", pl.Float64(), "lower 95% confidence limit"),
        OutputColumn("ci_high", pl.Float64(), "upper 95% confidence limit"),
        OutputColumn("p_value", pl.Float64(), "two-sided Wald p-value"),
        OutputColumn("q_value", pl.Float64(), "Benjamini-Hochberg q-value within the model"),
        OutputColumn("n_subjects", pl.Int64(), "subjects contributing"),
        OutputColumn("n_subject_days", pl.Int64(), "complete subject-days used"),
        OutputColumn("n_episodes", pl.Int64(), "episodes on those days"),
        OutputColumn("note", pl.String(), "why there is no estimate, or what qualifies it"),
    )))
EFFECTS_COLUMNS = EFFECTS.names
EFFECTS_SCHEMA = EFFECTS.schema()


@dataclass(frozen=True)
class ModelResults:
    """What ``fit_models`` returns and ``write_model_outputs`` writes."""

    #: effects.csv: ``EFFECTS_COLUMNS``, one row per model and reported feature, sorted.
    effects: pl.DataFrame
    #: dose_response.csv: model, feature, unit, x, reference_x, irr, ci_low, ci_high.
    dose_response: pl.DataFrame
    #: diagnostics.json content.
    diagnostics: dict[str, Any]


def fit_models(panel: Panel, *, custom_factors=(), dose_response: bool = True,
               analysis=None) -> ModelResults:
    """Fit every model on the panel. Raises ``UserError`` when the dataset is too small to fit.

    ``dose_response=False`` skips the spline curves (one extra within-subject fit per continuous
    feature, most of the fitting time); ``dose_response`` is then an empty table. ``analysis``
    (``AnalysisConfig``, default: subject strata, no time adjustment) sets the strata and time
    adjustment of every within-subject model (``time_strata.py``)."""
    from pipeline.analysis_config import AnalysisConfig
    from pipeline.models import diagnostics as dg
    from pipeline.models.dose_response import DOSE_SCHEMA, fit_dose_response
    from pipeline.models.time_strata import frame_for_analysis

    from pipeline import scratch

    custom_factors = tuple(custom_factors)
    analysis = analysis or AnalysisConfig()
    _check_fittable(panel)
    # A panel held in buckets (a run's scratch space) gets its designs built bucket by bucket
    # and kept on disk (``design_buckets``): memory holds a bucket at a time. Otherwise the
    # whole panel is in memory and so is each design.
    bucketed = panel.n_buckets > 1 and scratch.current() is not None
    if bucketed:
        from pipeline.models import design_buckets as db

        frame = None
        ranks = db.subject_ranks(panel)
        knots = db.days_in_study_knots(panel) if "days_in_study" in analysis.adjust else None
        first = next(b for b in range(panel.n_buckets) if panel.bucket(b, ["date"]).height)
        _, adjusters = frame_for_analysis(
            db.bucket_frame(panel, first, ranks, AnalysisConfig(), None).head(1), analysis, knots)
    else:
        frame = with_subject_codes(panel.whole())
        frame, adjusters = frame_for_analysis(frame, analysis)
    if adjusters:
        from dataclasses import replace

        panel = replace(panel, features={**panel.features, **{f.name: f for f in adjusters}})

    rows: list[dict[str, Any]] = []
    diagnostics: dict[str, Any] = {"models": {}, "policy": dg.policy(),
                                   "analysis": {**analysis.as_dict(),
                                                "description": analysis.describe()}}
    dose, dose_notes = pl.DataFrame(schema=DOSE_SCHEMA), {"skipped": True}
    within: dict[str, float] = {}  # within_subject estimates: the secondary models' start
    for model, conditional, features, reported in model_specs(custom_factors):
        # One model's design in memory at a time: each is released before the next is built.
        timer = progress.begin(f"fit model {model}")
        terms = tuple(features) + (tuple(adjusters) if conditional else ())
        directory = None
        if bucketed:
            directory = scratch.new_directory(f"design-{model}")
            design = db.prepare_design_buckets(panel, model, conditional, terms, reported,
                                               ranks=ranks, analysis=analysis, knots=knots,
                                               directory=directory)
        else:
            design = prepare_design(frame, panel, model, conditional, terms, reported)
        if conditional and not analysis.is_default:
            design.analysis_note = analysis.describe()
        if model not in PRIMARY_MODELS and not set(design.names) & {f.name for f in reported}:
            # Nothing this model reports survived the checks: its rows say why; skip the fit.
            fit, failure = None, "none of the model's own features can be estimated"
        else:
            fit, failure = _fit(design, within if conditional else None)
        if model == fd.WITHIN_SUBJECT and fit is not None:
            within = dict(zip(fit.names, (float(b) for b in fit.coef)))
        if model in PRIMARY_MODELS and fit is None:
            reasons = "; ".join(f"{name}: {why}" for name, why in design.excluded.items()
                                if name not in panel.absent)
            raise UserError(f"cannot fit the {model} model: {failure}"
                            + (f" ({reasons})" if reasons else ""))
        rows.extend(_effect_rows(design, fit, failure))
        diagnostics["models"][model] = dg.model_diagnostics(design, fit, failure)
        if model == fd.WITHIN_SUBJECT and dose_response:
            dose, dose_notes = fit_dose_response(design, within)
        del design, fit
        scratch.remove(directory)
        timer.end()

    effects = sort_effects(add_q_values(pl.DataFrame(rows, schema=EFFECTS_SCHEMA,
                                                      orient="row")), custom_factors)
    diagnostics["dose_response"] = dose_notes
    diagnostics["panel"] = panel.summary
    return ModelResults(effects=effects, dose_response=dose, diagnostics=diagnostics)


def _check_fittable(panel: Panel) -> None:
    """Refuse a panel too small to model (from its summary: no pass over the rows)."""
    summary = panel.summary
    if not {"n_subject_days", "n_subjects", "n_episodes_on_logged_days"} <= summary.keys():
        frame = panel.whole()  # a panel made by hand, without build_panel's summary
        summary = {"n_subject_days": frame.height,
                   "n_subjects": frame["subject_id"].n_unique() if frame.height else 0,
                   "n_episodes_on_logged_days": int(frame[OUTCOME].sum()) if frame.height else 0}
    if summary["n_subject_days"] == 0:
        raise UserError("the dataset has no accepted daily rows: nothing to model")
    n_subjects = summary["n_subjects"]
    if n_subjects < 2:
        raise UserError(
            f"the dataset has {n_subjects} subject: the models need at least 2 subjects "
            "(robust errors are clustered by subject)")
    n_episodes = int(summary["n_episodes_on_logged_days"])
    if n_episodes == 0:
        outside = panel.summary.get("episodes_outside_logged_days", 0)
        extra = (f" ({outside:,} episode(s) fell on days without a daily row)" if outside else "")
        raise UserError("no episodes fall on logged days: nothing to model" + extra)
    if not any(f.role == "core" for f in panel.features.values()):
        raise UserError("the daily table has none of the factor columns the models use "
                        "(and no usable custom factor): nothing to model")


def _fit(design: Design, start: dict[str, float] | None = None,
         clusters: np.ndarray | None = None):
    """Fit one design; returns ``(fit, None)`` or ``(None, reason)``.

    ``clusters`` (optional, within-subject designs): cluster labels of the design's rows when the
    fixed-effect groups are finer than the subjects (a subject's days stacked once per outcome);
    default: the groups themselves.

    When the estimator rejects particular features (no variation, separation, collinearity) they
    are dropped from the design with the reason, and the rest is refitted. ``start`` (optional,
    within-subject designs): starting coefficients by feature name (0 for a name it lacks),
    e.g. the within_subject estimates for a secondary model, instead of a subsample fit."""
    from pipeline.models.conditional import fit_conditional_poisson
    from pipeline.models.poisson import EstimationError, fit_poisson

    while True:
        if design.n_episodes == 0:
            return None, "no episodes on the model's complete subject-days"
        if design.n_subjects < 2:
            who = "with episodes on" if design.conditional else "with"
            return None, (f"only {design.n_subjects} subject(s) {who} complete subject-days "
                          "(subject-clustered errors need at least 2)")
        if not design.kept:
            return None, "no feature has enough data for this model"
        try:
            if design.buckets is not None:
                fit = _fit_buckets(design, start)
            elif design.conditional:
                beta0 = None if not start else np.array(
                    [start.get(name, 0.0) for name in design.names])
                fit = fit_conditional_poisson(design.X, design.y, groups=design.fit_groups,
                                              clusters=design.groups if clusters is None
                                              else clusters, feature_names=design.names,
                                              start=beta0)
            else:
                fit = fit_poisson(design.X, design.y, clusters=design.groups,
                                  feature_names=design.names)
        except EstimationError as exc:
            involved = [f for f in design.kept if f.name in exc.features]
            if exc.reason not in FEATURE_REASONS or not involved:
                return None, f"the solver failed ({exc})"
            if exc.reason == "collinear":
                involved = involved[-1:]  # keep the earlier features of a collinear set
            design.drop(involved, FEATURE_REASONS[exc.reason])
            continue
        if not fit.converged:
            return None, "the solver did not converge"
        return fit, None


def _fit_buckets(design: Design, start: dict[str, float] | None):
    """Fit a design held in buckets on disk: the estimators map their passes over the bucket
    handles on the run's executor (each pass opens its bucket where it runs)."""
    from pipeline import execution
    from pipeline.models.conditional import fit_conditional_buckets
    from pipeline.models.poisson import fit_poisson_buckets

    ex = execution.current()
    if design.conditional:
        beta0 = None if not start else np.array([start.get(name, 0.0) for name in design.names])
        return fit_conditional_buckets(design.buckets, design.names, executor=ex, start=beta0)
    return fit_poisson_buckets(design.buckets, design.names, executor=ex)


def _effect_rows(design: Design, fit, failure: str | None) -> list[dict[str, Any]]:
    index = {} if fit is None else {name: i for i, name in enumerate(fit.names)}
    counts = {"n_subjects": design.n_subjects, "n_subject_days": design.n_subject_days,
              "n_episodes": design.n_episodes}
    common_notes = []
    if design.n_dropped_incomplete:
        common_notes.append(
            f"{design.n_dropped_incomplete:,} of {design.n_candidate_days:,} subject-days dropped "
            "for a missing value (complete-case)")
    if design.conditional and design.n_subjects_without_episodes:
        common_notes.append(
            f"{design.n_subjects_without_episodes:,} subject(s) without episodes carry no "
            "within-subject information")
    if design.model not in PRIMARY_MODELS:
        common_notes.append("adjusted for the core features it does not stand in for")
    if design.analysis_note:
        common_notes.append(design.analysis_note)
    rows = []
    for f in design.reported:
        row: dict[str, Any] = {"model": design.model, "factor": f.factor, "feature": f.name,
                               "unit": f.unit, "irr": None, "ci_low": None, "ci_high": None,
                               "p_value": None, "q_value": None, **counts}
        if f.name in design.excluded:
            row["note"] = "not estimated: " + design.excluded[f.name]
        elif fit is None:
            row["note"] = "not estimated: " + (failure or "model not fitted")
        else:
            i = index[f.name]
            row.update(irr=float(fit.irr[i]), ci_low=float(fit.ci_low[i]),
                       ci_high=float(fit.ci_high[i]), p_value=float(fit.p_value[i]))
            row["note"] = "; ".join(common_notes)
        rows.append(row)
    return rows


def add_q_values(effects: pl.DataFrame) -> pl.DataFrame:
    """Benjamini–Hochberg q-values across the estimated features of each model."""
    from pipeline.models.multiplicity import benjamini_hochberg

    q = np.full(effects.height, np.nan)
    models = effects["model"].to_numpy()
    p = effects["p_value"].to_numpy().astype(float)
    for model in np.unique(models):
        idx = np.flatnonzero((models == model) & ~np.isnan(p))
        if idx.size:
            q[idx] = benjamini_hochberg(p[idx])
    return effects.with_columns(pl.Series("q_value", q).fill_nan(None))


def sort_effects(effects: pl.DataFrame, custom_factors=()) -> pl.DataFrame:
    """Sort by model (output order), factor (guidance order, then custom) and feature
    (dictionary order)."""
    model_rank = {m: i for i, m in enumerate(MODEL_ORDER)}
    factor_rank = fd.factor_order(custom_factors)
    names = [f.name for f in fd.CORE_FEATURES] + [c.column for c in custom_factors] + [
        f.name for f in fd.SECONDARY_FEATURES]
    feature_rank = {n: i for i, n in enumerate(names)}
    return (
        effects.with_columns(
            pl.col("model").replace_strict(model_rank, default=len(model_rank)).alias("_m"),
            pl.col("factor").replace_strict(factor_rank, default=len(factor_rank)).alias("_f"),
            pl.col("feature").replace_strict(feature_rank, default=len(feature_rank)).alias("_x"),
        )
        .sort("_m", "_f", "_x", "feature")
        .select(EFFECTS_COLUMNS)
    )


def write_model_outputs(results: ModelResults, out_dir) -> None:
    """Write effects.csv, dose_response.csv and diagnostics.json atomically, stably formatted
    (floats to 6 significant digits, empty cell for no estimate, sorted JSON keys)."""
    from pathlib import Path

    from pipeline import atomic, csvsafe

    out_dir = Path(out_dir)
    csvsafe.write_csv(out_dir / "effects.csv", format_floats(results.effects))
    csvsafe.write_csv(out_dir / "dose_response.csv", format_floats(results.dose_response))
    atomic.write_json(out_dir / "diagnostics.json", _json_safe(results.diagnostics))


def format_floats(frame: pl.DataFrame, digits: int = 6) -> pl.DataFrame:
    """Float columns as text with ``digits`` significant digits (stable across platforms)."""
    exprs = []
    for name, dtype in frame.schema.items():
        if dtype.is_float():
            values = frame[name].to_list()
            exprs.append(pl.Series(name, [_fmt(v, digits) for v in values], dtype=pl.String))
    return frame.with_columns(exprs) if exprs else frame


def _fmt(v, digits: int) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return f"{v:.{digits}g}"


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if not np.isfinite(v) else float(f"{v:.6g}")
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
