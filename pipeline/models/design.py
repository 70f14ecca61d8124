"""Model designs: which features enter a model, on which subject-days, as one float64 matrix.

For each model this module chooses the features available in the dataset, applies the data
sufficiency policy below, drops incomplete subject-days (complete-case analysis, per model) and
builds the design matrix once (float64, column-major) for the estimators.

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

SUBJECT_CODE = "_subject"


#: EstimationError reasons that concern particular features: drop them and refit the rest.
FEATURE_REASONS = {
    "no_variation": "no variation left to estimate from (constant, or constant within every "
                    "subject with episodes)",
    "separation": "separation: every subject-day with episodes sits at one extreme of this "
                  "feature, so its rate ratio is 0 or infinite",
    "collinear": "collinear with other features of the model (adds no information)",
}


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
    #: Fixed-effect strata of a within-subject model when they are finer than the subject
    #: (``[analysis] strata``, ``time_strata.py``); None: one stratum per subject.
    strata: np.ndarray | None = None
    #: The ``[analysis]`` choices, stated in the note of every within-subject row.
    analysis_note: str | None = None
    n_candidate_days: int = 0
    n_dropped_incomplete: int = 0
    n_subjects_without_episodes: int = 0
    n_days_without_episodes_subject: int = 0
    #: A design held in subject buckets on disk (``design_buckets``): one ``DesignFile`` per
    #: bucket, and ``X``, ``y``, ``groups`` and ``strata`` are None.
    buckets: list | None = None
    #: With ``buckets``: subject-days, subjects and episodes of the design.
    totals: dict[str, int] | None = None

    def drop(self, features, reason: str) -> None:
        """Remove features from the design (a rare path: copies X once)."""
        names = {f.name for f in features}
        keep = [j for j, f in enumerate(self.kept) if f.name not in names]
        if self.buckets is not None:
            from pipeline.models.design_buckets import drop_columns

            self.buckets = [drop_columns(h, keep) for h in self.buckets]
        else:
            self.X = np.asfortranarray(self.X[:, keep])
        self.kept = [self.kept[j] for j in keep]
        for name in names:
            self.excluded[name] = reason
            self.sufficiency.setdefault(name, {}).update(status="not_estimated", reason=reason)

    @property
    def fit_groups(self) -> np.ndarray | None:
        """The estimator's fixed-effect groups: the strata, or the subjects (the clusters)."""
        return self.groups if self.strata is None else self.strata

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.kept]

    @property
    def n_subject_days(self) -> int:
        if self.totals is not None:
            return self.totals["n_subject_days"]
        return 0 if self.y is None else int(self.y.shape[0])

    @property
    def n_subjects(self) -> int:
        if self.totals is not None:
            return self.totals["n_subjects"]
        # groups are sorted (the panel is sorted by subject), so counting changes suffices
        if self.groups is None or self.groups.size == 0:
            return 0
        return int(np.count_nonzero(self.groups[1:] != self.groups[:-1])) + 1

    @property
    def n_episodes(self) -> int:
        if self.totals is not None:
            return self.totals["n_episodes"]
        return 0 if self.y is None else int(round(float(self.y.sum())))


def model_specs(custom_factors=()) -> list[tuple[str, bool, tuple, tuple]]:
    """``(model, conditional, design features, reported features)`` for every model."""
    specs = []
    for model in MODEL_ORDER:
        design, reported = fd.model_features(model, custom_factors)
        specs.append((model, model != fd.POPULATION, design, reported))
    return specs


def with_subject_codes(frame: pl.DataFrame) -> pl.DataFrame:
    """Add integer subject codes (0…G−1, in subject_id order) used as groups and clusters.

    Rows of one subject must be contiguous (the estimators and the collinearity check rely on
    it); ``build_panel`` already sorts by subject and date, so the sort here is only a guard."""
    if not frame["subject_id"].is_sorted():
        frame = frame.sort("subject_id", "date")
    changed = (pl.col("subject_id") != pl.col("subject_id").shift(1)).fill_null(False)
    return frame.with_columns(changed.cum_sum().cast(pl.Int64).alias(SUBJECT_CODE))


def prepare_design(frame: pl.DataFrame, panel: Panel, model: str, conditional: bool,
                   features, reported) -> Design:
    """Apply the sufficiency policy and complete-case rule; build X, y and groups."""
    d = Design(model, conditional, tuple(features), tuple(reported))
    candidates = candidate_features(d, features, panel)
    n_days = frame.height
    d.n_candidate_days = n_days
    if n_days:
        nulls = frame.select(pl.col([f.name for f in candidates]).null_count()).row(0, named=True)
        drop_mostly_missing(d, candidates, nulls, n_days)

    # The model's rows are a boolean mask over the frame; X is filled column by column straight
    # from the frame's columns (no filtered copy of the frame, one column temporary at a time).
    codes = frame[SUBJECT_CODE].to_numpy()
    outcome = frame[OUTCOME].to_numpy()
    # Dropping a feature can only enlarge the complete-case sample, which can change another
    # feature's verdict; iterate to a fixed point (a few rounds at most).
    while True:
        mask, n_complete, n_zero = _model_rows(frame, codes, outcome, candidates, conditional)
        X = _build_X(frame, [f.name for f in candidates], mask)
        groups = codes[mask]
        failures = _check_sufficiency(X, groups, candidates, conditional, d)
        if not failures:
            break
        del X
        for f in failures:
            candidates.remove(f)

    d.n_dropped_incomplete = n_days - n_complete
    n_rows = X.shape[0]
    if conditional:
        d.n_subjects_without_episodes = n_zero
        d.n_days_without_episodes_subject = n_complete - n_rows
    d.y = outcome[mask].astype(np.float64)
    d.groups = groups
    if conditional:
        from pipeline.models.time_strata import strata_codes

        d.strata = strata_codes(frame, mask)
    d.X = X
    d.kept = list(candidates)
    del mask
    _drop_collinear(d)
    for f in d.kept:
        d.sufficiency.setdefault(f.name, {}).update({"status": "estimated", "reason": None})
    return d


def candidate_features(d: Design, features, panel: Panel) -> list:
    """The model's features the panel has; the others are recorded in ``d`` as absent."""
    candidates: list[fd.Feature] = []
    for f in features:
        if f.name in panel.features:
            candidates.append(f)
        else:
            d.excluded[f.name] = panel.absent.get(f.name, "not in the panel")
            d.sufficiency[f.name] = {"status": "absent", "reason": d.excluded[f.name]}
    return candidates


def drop_mostly_missing(d: Design, candidates: list, nulls: dict[str, int], n_days: int) -> None:
    """Remove from ``candidates`` (and record in ``d``) the features missing on more than
    ``MAX_MISSING_FRACTION`` of the ``n_days`` candidate subject-days (``nulls``: by name)."""
    for f in list(candidates):
        n_missing = int(nulls.get(f.name, 0))
        fraction = n_missing / n_days
        if fraction > MAX_MISSING_FRACTION:
            candidates.remove(f)
            d.excluded[f.name] = (
                f"missing on {n_missing:,} of {n_days:,} subject-days "
                f"({fraction:.0%}; more than {MAX_MISSING_FRACTION:.0%})")
            d.sufficiency[f.name] = {"status": "not_estimated", "reason": d.excluded[f.name],
                                     "n_missing": n_missing}


def _model_rows(frame: pl.DataFrame, codes: np.ndarray, outcome: np.ndarray, features,
                conditional: bool) -> tuple[np.ndarray, int, int]:
    """The model's subject-days: complete cases, and for a within-subject model only subjects
    with at least one episode on them. Returns (row mask, n complete, n subjects without
    episodes)."""
    if features:
        mask = frame.select(
            pl.all_horizontal(pl.col([f.name for f in features]).is_not_null())
        ).to_series().to_numpy()
    else:
        mask = np.ones(frame.height, dtype=bool)
    n_complete = int(np.count_nonzero(mask))
    n_zero = 0
    if conditional and codes.size:
        # A subject with no episode on any complete day carries no within-subject information.
        n_codes = int(codes.max()) + 1
        days = np.bincount(codes, weights=mask, minlength=n_codes)
        events = np.bincount(codes, weights=np.where(mask, outcome, 0), minlength=n_codes)
        has = events > 0
        n_zero = int(np.count_nonzero((days > 0) & ~has))
        mask &= has[codes]
    return mask, n_complete, n_zero


def _build_X(frame: pl.DataFrame, names: list[str], mask: np.ndarray) -> np.ndarray:
    """The float64, column-major design of ``names`` on the rows of ``mask`` (the estimators
    read it in row blocks). Polars selects the columns and filters once, in parallel, and hands
    numpy one Fortran-ordered block (about 3x faster than a numpy row selection per column; the
    model's rows are complete cases, so no null remains)."""
    if not names:
        return np.empty((int(np.count_nonzero(mask)), 0), order="F")
    block = (frame.lazy().select([pl.col(name).cast(pl.Float64) for name in names])
             .filter(pl.Series(mask)).collect())
    return block.to_numpy(order="fortran")


def _check_sufficiency(X: np.ndarray, groups: np.ndarray, features, conditional: bool,
                       d: Design) -> list:
    if not features:
        return []
    return judge_sufficiency(sufficiency_stats(X, groups, conditional), features, conditional, d)


def sufficiency_stats(X: np.ndarray, groups: np.ndarray, conditional: bool) -> dict[str, Any]:
    """What the sufficiency policy reads from a design (all of it or one bucket of whole
    subjects), as sums, minima and maxima that add up over buckets (``add_sufficiency_stats``):
    rows, column totals (binary features: the days at 1), minima, maxima and, within-subject,
    the subjects in whom each column varies."""
    n_rows, p = X.shape
    out = {"n_rows": n_rows, "total": X.sum(axis=0) if n_rows else np.zeros(p),
           "lo": X.min(axis=0) if n_rows else np.full(p, np.inf),
           "hi": X.max(axis=0) if n_rows else np.full(p, -np.inf),
           "n_vary": np.zeros(p, dtype=np.int64)}
    if conditional and n_rows:
        # groups are sorted (the panel is sorted by subject): one run per subject
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        # Reductions along contiguous memory: X is column-major, so X.T's rows are its columns.
        XT = X.T if X.flags.f_contiguous else np.ascontiguousarray(X.T)
        out["n_vary"] = np.count_nonzero(np.maximum.reduceat(XT, starts, axis=1)
                                         > np.minimum.reduceat(XT, starts, axis=1), axis=1)
    return out


def add_sufficiency_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"n_rows": sum(q["n_rows"] for q in parts),
            "total": sum(q["total"] for q in parts),
            "lo": np.minimum.reduce([q["lo"] for q in parts]),
            "hi": np.maximum.reduce([q["hi"] for q in parts]),
            "n_vary": sum(q["n_vary"] for q in parts)}


def judge_sufficiency(stats: dict[str, Any], features, conditional: bool, d: Design) -> list:
    """Apply the data sufficiency policy to ``sufficiency_stats`` (of the whole design or added
    up over its buckets); records each feature's figures and reason in ``d``; returns the
    features that fail. "No variation" is a column whose maximum equals its minimum."""
    n_rows = stats["n_rows"]
    failures = []
    for j, f in enumerate(features):
        info: dict[str, Any] = {"n_subject_days": n_rows}
        reason = None
        if f.kind == "binary":
            yes = int(round(float(stats["total"][j])))
            no = n_rows - yes
            info.update(n_days_yes=yes, n_days_no=no)
            if min(yes, no) < MIN_DAYS_PER_LEVEL:
                level = "yes" if yes < no else "no"
                reason = (f"only {min(yes, no):,} subject-days with {f.name} = {level} "
                          f"(need at least {MIN_DAYS_PER_LEVEL} at each level)")
        if reason is None and not (n_rows >= 2 and stats["hi"][j] > stats["lo"][j]):
            reason = "no variation in the model's subject-days"
        if conditional and n_rows:
            n_vary = int(stats["n_vary"][j])
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
    dropped = collinear_features(centred_cross(add_cross([cross_part(X, d.groups,
                                                                     d.conditional)])), d.kept)
    if dropped:
        d.drop(dropped, FEATURE_REASONS["collinear"])


def cross_part(X: np.ndarray, groups: np.ndarray, conditional: bool) -> dict[str, Any]:
    """One bucket's share of the collinearity check's cross-product: within-subject, already
    centred on the bucket's own subject means (a subject never crosses buckets); population, the
    raw cross-product and column totals (centred once all buckets are added)."""
    cross = X.T @ X
    if conditional:
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        XT = X.T if X.flags.f_contiguous else np.ascontiguousarray(X.T)
        sums = np.add.reduceat(XT, starts, axis=1).T  # contiguous reductions (X column-major)
        counts = np.diff(np.r_[starts, X.shape[0]])
        cross -= (sums / counts[:, None]).T @ sums
        return {"cross": cross, "total": None, "n": X.shape[0]}
    return {"cross": cross, "total": X.sum(axis=0), "n": X.shape[0]}


def add_cross(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"cross": sum(q["cross"] for q in parts),
            "total": None if parts[0]["total"] is None else sum(q["total"] for q in parts),
            "n": sum(q["n"] for q in parts)}


def centred_cross(c: dict[str, Any]) -> np.ndarray:
    if c["total"] is None:
        return c["cross"]
    return c["cross"] - np.outer(c["total"], c["total"]) / c["n"]


def collinear_features(cross: np.ndarray, kept) -> list:
    """The features (later ones first) that the earlier ones span, from the centred
    cross-product."""
    scale = np.sqrt(np.clip(np.diag(cross), 1e-300, None))
    corr = cross / np.outer(scale, scale)
    kept_idx: list[int] = []
    dropped = []
    for j, f in enumerate(kept):
        residual = 1.0
        if kept_idx:
            sub = corr[np.ix_(kept_idx, kept_idx)]
            r = corr[kept_idx, j]
            residual = 1.0 - float(r @ np.linalg.lstsq(sub, r, rcond=None)[0])
        if residual < COLLINEAR_TOLERANCE:
            dropped.append(f)
        else:
            kept_idx.append(j)
    return dropped
