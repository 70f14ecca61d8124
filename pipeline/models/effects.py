"""Model assembly: from the subject-day panel to ``effects.csv``, one row per model and feature.

For each model (``population``, ``within_subject`` and the secondary models named in the feature
dictionary) this module chooses the design (features available in the dataset), applies the data
sufficiency policy below, drops incomplete subject-days (complete-case analysis, per model), builds
the design matrix once (float64, column-major), calls the estimators in ``poisson.py`` /
``conditional.py``, and adds Benjamini–Hochberg q-values within the model.

Data sufficiency policy (a feature that fails gets no estimate and a stated reason, and leaves the
model's design):

- its source column is not in the dataset;
- it is missing on more than ``MAX_MISSING_FRACTION`` of the subject-days (keeping it would shrink
  the complete-case sample for every other feature);
- binary: fewer than ``MIN_DAYS_PER_LEVEL`` subject-days at either level;
- numeric: no variation at all;
- within-subject models: it varies within fewer than ``MIN_SUBJECTS_WITH_VARIATION`` subjects who
  have episodes (the estimate would rest on one or two people, and a subject-clustered sandwich
  error from so few informative clusters is not trustworthy);
- it is collinear with the other features of the model (it adds nothing the design does not
  already contain).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from pipeline.errors import UserError
from pipeline.features import dictionary as fd
from pipeline.features.panel import OUTCOME, Panel

MIN_DAYS_PER_LEVEL = 30
MAX_MISSING_FRACTION = 0.5
MIN_SUBJECTS_WITH_VARIATION = 5
#: 1 − R² of a feature on the other features below which it counts as collinear.
COLLINEAR_TOLERANCE = 1e-8

MODEL_ORDER = (fd.POPULATION, fd.WITHIN_SUBJECT, fd.WITHIN_SUBJECT_LAGGED,
               fd.WITHIN_SUBJECT_THRESHOLDS)
PRIMARY_MODELS = (fd.POPULATION, fd.WITHIN_SUBJECT)

EFFECTS_COLUMNS = ("model", "factor", "feature", "unit", "irr", "ci_low", "ci_high", "p_value",
                   "q_value", "n_subjects", "n_subject_days", "n_episodes", "note")
EFFECTS_SCHEMA = {
    "model": pl.String, "factor": pl.String, "feature": pl.String, "unit": pl.String,
    "irr": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "p_value": pl.Float64,
    "q_value": pl.Float64, "n_subjects": pl.Int64, "n_subject_days": pl.Int64,
    "n_episodes": pl.Int64, "note": pl.String,
}
SUBJECT_CODE = "_subject"


@dataclass
class Design:
    """One model's fitted-ready data: what went in, what was left out and why."""

    model: str
    conditional: bool
    features: tuple[fd.Feature, ...]
    reported: tuple[fd.Feature, ...]
    #: Features kept in the design, in column order of ``X``.
    kept: list[fd.Feature] = field(default_factory=list)
    #: Feature name -> reason it has no estimate.
    excluded: dict[str, str] = field(default_factory=dict)
    #: Per-feature sufficiency figures for diagnostics.json.
    sufficiency: dict[str, dict[str, Any]] = field(default_factory=dict)
    X: np.ndarray | None = None
    y: np.ndarray | None = None
    groups: np.ndarray | None = None
    n_candidate_days: int = 0
    n_dropped_incomplete: int = 0
    n_subjects_without_episodes: int = 0
    n_days_without_episodes_subject: int = 0

    def drop(self, features, reason: str) -> None:
        """Remove features from the design (a rare path: copies X once)."""
        names = {f.name for f in features}
        keep = [j for j, f in enumerate(self.kept) if f.name not in names]
        self.X = np.asfortranarray(self.X[:, keep])
        self.kept = [self.kept[j] for j in keep]
        for name in names:
            self.excluded[name] = reason
            self.sufficiency.setdefault(name, {}).update(status="not_estimated", reason=reason)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.kept]

    @property
    def n_subject_days(self) -> int:
        return 0 if self.y is None else int(self.y.shape[0])

    @property
    def n_subjects(self) -> int:
        # groups are sorted (the panel is sorted by subject), so counting changes suffices
        if self.groups is None or self.groups.size == 0:
            return 0
        return int(np.count_nonzero(self.groups[1:] != self.groups[:-1])) + 1

    @property
    def n_episodes(self) -> int:
        return 0 if self.y is None else int(round(float(self.y.sum())))


def model_specs(custom_factors=()) -> list[tuple[str, bool, tuple, tuple]]:
    """``(model, conditional, design features, reported features)`` for every model."""
    specs = []
    for model in MODEL_ORDER:
        design, reported = fd.model_features(model, custom_factors)
        specs.append((model, model != fd.POPULATION, design, reported))
    return specs


def with_subject_codes(frame: pl.DataFrame) -> pl.DataFrame:
    """Add integer subject codes (0…G−1, in subject_id order) used as groups and clusters."""
    frame = frame.with_columns(
        (pl.col("subject_id").rank("dense") - 1).cast(pl.Int64).alias(SUBJECT_CODE)
    )
    # Rows of one subject must be contiguous (the estimators and the collinearity check rely on
    # it); build_panel already sorts, so this is only a check.
    if not frame[SUBJECT_CODE].is_sorted():
        frame = frame.sort(SUBJECT_CODE, "date")
    return frame


def prepare_design(frame: pl.DataFrame, panel: Panel, model: str, conditional: bool,
                   features, reported) -> Design:
    """Apply the sufficiency policy and complete-case rule; build X, y and groups."""
    d = Design(model, conditional, tuple(features), tuple(reported))
    candidates: list[fd.Feature] = []
    for f in features:
        if f.name in panel.features:
            candidates.append(f)
        else:
            d.excluded[f.name] = panel.absent.get(f.name, "not in the panel")
            d.sufficiency[f.name] = {"status": "absent", "reason": d.excluded[f.name]}

    n_days = frame.height
    d.n_candidate_days = n_days
    if n_days:
        nulls = frame.select(pl.col([f.name for f in candidates]).null_count()).row(0, named=True)
        for f in list(candidates):
            fraction = nulls[f.name] / n_days
            if fraction > MAX_MISSING_FRACTION:
                candidates.remove(f)
                d.excluded[f.name] = (
                    f"missing on {nulls[f.name]:,} of {n_days:,} subject-days "
                    f"({fraction:.0%}; more than {MAX_MISSING_FRACTION:.0%})")
                d.sufficiency[f.name] = {"status": "not_estimated", "reason": d.excluded[f.name],
                                         "n_missing": int(nulls[f.name])}

    # Only the columns the model needs travel through the filters below.
    base = frame.select(SUBJECT_CODE, OUTCOME, *[f.name for f in candidates])
    # Dropping a feature can only enlarge the complete-case sample, which can change another
    # feature's verdict; iterate to a fixed point (a few rounds at most).
    while True:
        rows, n_complete, n_zero = _model_rows(base, candidates, conditional)
        failures = _check_sufficiency(rows, candidates, conditional, d)
        if not failures:
            break
        for f in failures:
            candidates.remove(f)

    d.n_dropped_incomplete = n_days - n_complete
    if conditional:
        d.n_subjects_without_episodes = n_zero
        d.n_days_without_episodes_subject = n_complete - rows.height
    d.y = rows[OUTCOME].cast(pl.Float64).to_numpy()
    d.groups = rows[SUBJECT_CODE].to_numpy()
    names = [f.name for f in candidates]
    if names:
        # One float64, column-major copy: the estimators read it in row blocks.
        d.X = np.asfortranarray(rows.select(pl.col(names).cast(pl.Float64)).to_numpy())
    else:
        d.X = np.empty((rows.height, 0), order="F")
    d.kept = list(candidates)
    del rows
    _drop_collinear(d)
    for f in d.kept:
        d.sufficiency.setdefault(f.name, {}).update({"status": "estimated", "reason": None})
    return d


def _model_rows(base: pl.DataFrame, features, conditional: bool):
    """The model's subject-days: complete cases, and for a within-subject model only subjects
    with at least one episode on them. Returns (rows, n complete, n subjects without episodes)."""
    rows = base
    if features:
        rows = rows.filter(pl.all_horizontal(pl.col([f.name for f in features]).is_not_null()))
    n_complete = rows.height
    n_zero = 0
    if conditional:
        # A subject with no episode on any complete day carries no within-subject information.
        has = pl.col(OUTCOME).sum().over(SUBJECT_CODE) > 0
        n_zero = rows.filter(~has).select(pl.col(SUBJECT_CODE).n_unique()).item()
        rows = rows.filter(has)
    return rows, n_complete, n_zero


def _check_sufficiency(rows: pl.DataFrame, features, conditional: bool, d: Design) -> list:
    if not features:
        return []
    names = [f.name for f in features]
    stats = rows.select(
        *[pl.col(n).sum().alias(f"{n}__yes") for n in names],
        *[pl.col(n).std().alias(f"{n}__sd") for n in names],
    ).row(0, named=True) if rows.height else {}
    varying: dict[str, int] = {}
    if conditional and rows.height:
        varying = rows.group_by(SUBJECT_CODE).agg(
            *[(pl.col(n).max() > pl.col(n).min()).alias(n) for n in names]
        ).select(pl.col(names).sum()).row(0, named=True)
    failures = []
    for f in features:
        info: dict[str, Any] = {"n_subject_days": rows.height}
        reason = None
        sd = stats.get(f"{f.name}__sd")
        if f.kind == "binary":
            yes = int(stats.get(f"{f.name}__yes") or 0)
            no = rows.height - yes
            info.update(n_days_yes=yes, n_days_no=no)
            if min(yes, no) < MIN_DAYS_PER_LEVEL:
                level = "yes" if yes < no else "no"
                reason = (f"only {min(yes, no):,} subject-days with {f.name} = {level} "
                          f"(need at least {MIN_DAYS_PER_LEVEL} at each level)")
        if reason is None and (sd is None or not sd > 0):
            reason = "no variation in the model's subject-days"
        if conditional and rows.height:
            n_vary = int(varying.get(f.name) or 0)
            info["n_subjects_with_variation"] = n_vary
            if reason is None and n_vary < MIN_SUBJECTS_WITH_VARIATION:
                reason = (f"varies within only {n_vary} subject(s) with episodes (need at least "
                          f"{MIN_SUBJECTS_WITH_VARIATION} for a within-subject estimate)")
        info["status"] = "estimated" if reason is None else "not_estimated"
        info["reason"] = reason
        d.sufficiency[f.name] = info
        if reason is not None:
            d.excluded[f.name] = reason
            failures.append(f)
    return failures


def _drop_collinear(d: Design) -> None:
    """Drop features (later ones first) that the others already span, after centring within
    subject (conditional) or overall (with an intercept). Works on the k × k cross-product of the
    built design, so it costs one pass over X."""
    X = d.X
    if X is None or X.shape[1] < 2 or X.shape[0] == 0:
        return
    cross = X.T @ X
    if d.conditional:
        starts = np.flatnonzero(np.r_[True, d.groups[1:] != d.groups[:-1]])
        sums = np.add.reduceat(X, starts, axis=0)
        counts = np.diff(np.r_[starts, X.shape[0]])
        cross -= (sums / counts[:, None]).T @ sums
    else:
        total = X.sum(axis=0)
        cross -= np.outer(total, total) / X.shape[0]
    scale = np.sqrt(np.clip(np.diag(cross), 1e-300, None))
    corr = cross / np.outer(scale, scale)
    kept_idx: list[int] = []
    dropped = []
    for j, f in enumerate(d.kept):
        residual = 1.0
        if kept_idx:
            sub = corr[np.ix_(kept_idx, kept_idx)]
            r = corr[kept_idx, j]
            residual = 1.0 - float(r @ np.linalg.lstsq(sub, r, rcond=None)[0])
        if residual < COLLINEAR_TOLERANCE:
            dropped.append(f)
        else:
            kept_idx.append(j)
    if dropped:
        d.drop(dropped, _FEATURE_REASONS["collinear"])


# --------------------------------------------------------------------------------------------
# Fitting and the effects table


@dataclass(frozen=True)
class ModelResults:
    """What ``fit_models`` returns and ``write_model_outputs`` writes."""

    #: effects.csv: ``EFFECTS_COLUMNS``, one row per model and reported feature, sorted.
    effects: pl.DataFrame
    #: dose_response.csv: model, feature, unit, x, reference_x, irr, ci_low, ci_high.
    dose_response: pl.DataFrame
    #: diagnostics.json content.
    diagnostics: dict[str, Any]


def fit_models(panel: Panel, *, custom_factors=(), dose_response: bool = True) -> ModelResults:
    """Fit every model on the panel. Raises ``UserError`` when the dataset is too small to fit.

    ``dose_response=False`` skips the spline curves (one extra within-subject fit per continuous
    feature, most of the fitting time); ``dose_response`` is then an empty table."""
    from pipeline.models import diagnostics as dg
    from pipeline.models.dose_response import fit_dose_response

    custom_factors = tuple(custom_factors)
    frame = panel.frame
    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect()
    _check_fittable(frame, panel)
    frame = with_subject_codes(frame)

    rows: list[dict[str, Any]] = []
    diagnostics: dict[str, Any] = {"models": {}, "policy": dg.policy()}
    designs: dict[str, Design] = {}
    fits: dict[str, Any] = {}
    for model, conditional, features, reported in model_specs(custom_factors):
        design = prepare_design(frame, panel, model, conditional, features, reported)
        designs[model] = design
        fit, failure = _fit(design)
        if model in PRIMARY_MODELS and fit is None:
            reasons = "; ".join(f"{name}: {why}" for name, why in design.excluded.items())
            raise UserError(f"cannot fit the {model} model: {failure}"
                            + (f" ({reasons})" if reasons else ""))
        fits[model] = fit
        rows.extend(_effect_rows(design, fit, failure))
        diagnostics["models"][model] = dg.model_diagnostics(design, fit, failure)

    effects = sort_effects(add_q_values(pl.DataFrame(rows, schema=EFFECTS_SCHEMA,
                                                      orient="row")), custom_factors)
    if dose_response and fits[fd.WITHIN_SUBJECT] is not None:
        dose, dose_notes = fit_dose_response(designs[fd.WITHIN_SUBJECT])
    else:
        from pipeline.models.dose_response import DOSE_SCHEMA

        dose, dose_notes = pl.DataFrame(schema=DOSE_SCHEMA), {"skipped": True}
    diagnostics["dose_response"] = dose_notes
    diagnostics["panel"] = panel.summary
    return ModelResults(effects=effects, dose_response=dose, diagnostics=diagnostics)


def _check_fittable(frame: pl.DataFrame, panel: Panel) -> None:
    if frame.height == 0:
        raise UserError("the dataset has no accepted daily rows: nothing to model")
    n_subjects = frame["subject_id"].n_unique()
    if n_subjects < 2:
        raise UserError(
            f"the dataset has {n_subjects} subject: the models need at least 2 subjects "
            "(robust errors are clustered by subject)")
    n_episodes = int(frame[OUTCOME].sum())
    if n_episodes == 0:
        outside = panel.summary.get("episodes_outside_logged_days", 0)
        extra = (f" ({outside:,} episode(s) fell on days without a daily row)" if outside else "")
        raise UserError("no episodes fall on logged days: nothing to model" + extra)
    if not any(f.role == "core" for f in panel.features.values()):
        raise UserError("the daily table has none of the factor columns the models use "
                        "(and no usable custom factor): nothing to model")


#: EstimationError reasons that concern particular features: drop them and refit the rest.
_FEATURE_REASONS = {
    "no_variation": "no variation left to estimate from (constant, or constant within every "
                    "subject with episodes)",
    "separation": "separation: every subject-day with episodes sits at one extreme of this "
                  "feature, so its rate ratio is 0 or infinite",
    "collinear": "collinear with other features of the model (adds no information)",
}


def _fit(design: Design):
    """Fit one design; returns ``(fit, None)`` or ``(None, reason)``.

    When the estimator rejects particular features (no variation, separation, collinearity) they
    are dropped from the design with the reason, and the rest is refitted."""
    from pipeline.models.conditional import fit_conditional_poisson
    from pipeline.models.poisson import EstimationError, fit_poisson

    while True:
        if not design.kept:
            return None, "no feature has enough data for this model"
        if design.n_subjects < 2:
            return None, f"only {design.n_subjects} subject(s) with usable subject-days"
        if design.n_episodes == 0:
            return None, "no episodes on the model's complete subject-days"
        try:
            if design.conditional:
                fit = fit_conditional_poisson(design.X, design.y, groups=design.groups,
                                              clusters=design.groups, feature_names=design.names)
            else:
                fit = fit_poisson(design.X, design.y, clusters=design.groups,
                                  feature_names=design.names)
        except EstimationError as exc:
            involved = [f for f in design.kept if f.name in exc.features]
            if exc.reason not in _FEATURE_REASONS or not involved:
                return None, f"the solver failed ({exc})"
            if exc.reason == "collinear":
                involved = involved[-1:]  # keep the earlier features of a collinear set
            design.drop(involved, _FEATURE_REASONS[exc.reason])
            continue
        if not fit.converged:
            return None, "the solver did not converge"
        return fit, None


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

    from pipeline import atomic

    out_dir = Path(out_dir)
    atomic.write_csv(out_dir / "effects.csv", format_floats(results.effects))
    atomic.write_csv(out_dir / "dose_response.csv", format_floats(results.dose_response))
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
