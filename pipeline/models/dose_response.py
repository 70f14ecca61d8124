"""dose_response.csv: a spline curve per continuous core feature, within subject.

For each continuous feature estimated in the ``within_subject`` model, the linear term is replaced
by a natural cubic spline while every other feature stays linear, and the model is refitted by
conditional Poisson with subject-clustered errors. The curve is the IRR at x relative to the
reference value (the median), with pointwise 95% bands from the cluster-robust covariance, over the
1st–99th percentile range of the feature.

The basis: cubic B-splines from ``sklearn.preprocessing.SplineTransformer`` with knots at the 5th,
35th, 65th and 95th percentiles (Harrell's placement for four knots) and linear extrapolation,
constrained to a *natural* spline (second derivative zero at the boundary knots, so linear beyond
them) and with the constant removed (the splines sum to one, which the subject fixed effects
already absorb): ``Z = B(x) @ N``, where the columns of N span the B-spline coefficients that
satisfy both constraints. Four knots give three columns, the same flexibility as a restricted cubic
spline, at a cost close to the linear model's. Curves are in the source unit (minutes, °C, ...),
not in the per-scale model unit.

Run time: each curve is one more within-subject fit. On a large panel the curves are fitted on a
random subset of whole subjects holding at most ``MAX_SUBJECT_DAYS`` subject-days (fixed seed, so
the output is reproducible); ``diagnostics.json`` states the subset, and the bands are those of
that subset (wider than the full data would give, never narrower). The effect estimates in
effects.csv always use every subject-day.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from scipy import linalg, stats

if TYPE_CHECKING:  # sklearn costs ~0.5 s to import: only when a curve is fitted
    from sklearn.preprocessing import SplineTransformer

KNOT_QUANTILES = (0.05, 0.35, 0.65, 0.95)
RANGE_QUANTILES = (0.01, 0.99)
REFERENCE_QUANTILE = 0.5
N_GRID = 41
MAX_SUBJECT_DAYS = 250_000
SUBSET_SEED = 20261128
DEGREE = 3
Z = float(stats.norm.ppf(0.975))

DOSE_COLUMNS = ("model", "feature", "unit", "x", "reference_x", "irr", "ci_low", "ci_high")
DOSE_SCHEMA = {"model": pl.String, "feature": pl.String, "unit": pl.String, "x": pl.Float64,
               "reference_x": pl.Float64, "irr": pl.Float64, "ci_low": pl.Float64,
               "ci_high": pl.Float64}


def fit_dose_response(design, start: dict[str, float] | None = None
                      ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Curves for the continuous core features of a fitted within-subject ``Design``.

    ``start`` (optional): the linear model's coefficients by feature name, used as starting
    values of each curve's fit (the other features keep them; the spline terms start as the
    least-squares spline fit of the linear term). Returns the dose_response table and, per
    feature, a note (knots used, or why no curve)."""
    frames: list[pl.DataFrame] = []
    notes: dict[str, Any] = {}
    if (design.X is None and design.buckets is None) or not design.kept:
        return pl.DataFrame(schema=DOSE_SCHEMA), notes
    design, subset = _subset(design, MAX_SUBJECT_DAYS)
    if subset:
        notes["subset"] = subset
    from pipeline.models.poisson import EstimationError

    # The curves are independent fits on the same (subset) design: they run side by side
    # (``execution.concurrently``), each on its own working copy of the design with room for
    # the extra spline columns (curve j writes its first spline column over feature j and the
    # others at the end, then puts feature j back, so a working copy serves several curves).
    from pipeline import execution

    n, p = design.X.shape
    wanted = [j for j, f in enumerate(design.kept) if f.kind == "numeric" and f.role == "core"]
    local = threading.local()  # one working copy per thread, made on its first curve

    def curve_task(j: int):
        work = getattr(local, "work", None)
        if work is None:
            work = local.work = np.empty((n, p + len(KNOT_QUANTILES) - 2), order="F")
            work[:, :p] = design.X
        try:
            return _curve(design, j, work, start)
        except (EstimationError, ValueError, np.linalg.LinAlgError) as exc:
            # A curve that cannot be fitted is reported as such; it must not sink the run.
            return None, {"status": "not_estimated", "reason": f"spline fit failed ({exc})"}
        finally:
            work[:, j] = design.X[:, j]

    results = execution.concurrently([lambda j=j: curve_task(j) for j in wanted])
    for j, (curve, note) in zip(wanted, results):
        notes[design.kept[j].name] = note
        if curve is not None:
            frames.append(curve)
    if not frames:
        return pl.DataFrame(schema=DOSE_SCHEMA), notes
    return pl.concat(frames).select(DOSE_COLUMNS), notes


def _subset(design, max_rows: int):
    """A copy of the design restricted to a seeded random subset of subjects with at most
    ``max_rows`` subject-days, or the design itself when it is small enough."""
    if design.buckets is not None:
        return _subset_of_buckets(design, max_rows)
    n = design.X.shape[0]
    if n <= max_rows:
        return design, None
    starts = np.flatnonzero(np.r_[True, design.groups[1:] != design.groups[:-1]])
    counts = np.diff(np.r_[starts, n])
    order = np.random.default_rng(SUBSET_SEED).permutation(starts.size)
    take = order[np.cumsum(counts[order]) <= max_rows]
    rows = np.zeros(n, dtype=bool)
    rows[np.repeat(np.isin(np.arange(starts.size), take), counts)] = True
    from copy import copy

    sub = copy(design)
    sub.X = np.asfortranarray(design.X[rows])
    sub.y = design.y[rows]
    sub.groups = design.groups[rows]
    sub.strata = None if design.strata is None else design.strata[rows]
    note = {"n_subjects": int(take.size), "of_subjects": int(starts.size),
            "n_subject_days": int(rows.sum()), "of_subject_days": int(n),
            "seed": SUBSET_SEED,
            "why": f"curves use a random subset of whole subjects with at most {max_rows:,} "
                   "subject-days to bound run time; bands are those of the subset"}
    return sub, note


def _subset_of_buckets(design, max_rows: int):
    """``_subset`` of a design held in buckets on disk: the same subjects (chosen by position in
    subject order, from each subject's row count), their rows gathered into memory."""
    from copy import copy

    from pipeline.models.design_buckets import gather_rows, subjects

    pairs = [subjects(h) for h in design.buckets]
    codes = np.concatenate([c for c, _ in pairs]) if pairs else np.zeros(0, np.int64)
    rows = np.concatenate([r for _, r in pairs]) if pairs else np.zeros(0, np.int64)
    by_code = np.argsort(codes, kind="stable")
    codes, counts = codes[by_code], rows[by_code]
    n = int(counts.sum())
    note = None
    if n > max_rows:
        order = np.random.default_rng(SUBSET_SEED).permutation(codes.size)
        take = np.sort(order[np.cumsum(counts[order]) <= max_rows])
        note = {"n_subjects": int(take.size), "of_subjects": int(codes.size),
                "n_subject_days": int(counts[take].sum()), "of_subject_days": n,
                "seed": SUBSET_SEED,
                "why": f"curves use a random subset of whole subjects with at most {max_rows:,} "
                       "subject-days to bound run time; bands are those of the subset"}
        codes = codes[take]
    sub = copy(design)
    sub.X, sub.y, sub.groups, sub.strata = gather_rows(design, codes)
    sub.buckets, sub.totals = None, None
    return sub, note


def place_knots(x: np.ndarray) -> tuple[np.ndarray, str]:
    """Knots at ``KNOT_QUANTILES`` of x. When many days share the lowest value (no alcohol, no
    exercise) those quantiles coincide; the inner knots then go to the quantiles of the values
    above the lowest knot, so the curve can still bend where the data are."""
    knots = np.unique(np.quantile(x, KNOT_QUANTILES))
    if knots.size == len(KNOT_QUANTILES):
        return knots, "quantiles " + ", ".join(f"{q:.0%}" for q in KNOT_QUANTILES)
    above = x[x > knots[0]]
    if above.size:
        inner = np.quantile(above, KNOT_QUANTILES[1:])
        knots = np.unique(np.concatenate([knots[:1], inner]))
    return knots, ("lowest knot at the 5th percentile, which many days share; the others at the "
                   + ", ".join(f"{q:.0%}" for q in KNOT_QUANTILES[1:])
                   + " quantiles of the values above it")


def natural_spline(knots: np.ndarray) -> tuple[SplineTransformer, np.ndarray]:
    """A fitted cubic B-spline transformer on ``knots`` and the matrix N mapping its basis to a
    natural spline without the constant (``len(knots) - 1`` columns)."""
    from sklearn.preprocessing import SplineTransformer

    spline = SplineTransformer(knots=np.asarray(knots, dtype=float)[:, None], degree=DEGREE,
                               extrapolation="linear", include_bias=True)
    spline.fit(np.asarray(knots, dtype=float)[:, None])
    second = spline.bsplines_[0].derivative(2)
    constraints = np.vstack([second(knots[0]), second(knots[-1]),
                             np.ones(spline.n_features_out_)])
    return spline, linalg.null_space(constraints)


def _curve(design, j: int, work: np.ndarray, start: dict[str, float] | None = None):
    from pipeline.models.conditional import fit_conditional_poisson

    feature = design.kept[j]
    x = design.X[:, j]
    knots, placement = place_knots(x)
    if knots.size < 3:
        return None, {"status": "not_estimated",
                      "reason": f"only {knots.size} distinct knot value(s) at the "
                      f"{', '.join(f'{q:.0%}' for q in KNOT_QUANTILES)} percentiles"}
    spline, natural = natural_spline(knots)
    basis = spline.transform(x[:, None]) @ natural
    k = basis.shape[1]
    p = design.X.shape[1]
    work[:, j] = basis[:, 0]
    work[:, p:p + k - 1] = basis[:, 1:]
    names = design.names
    spline_names = [f"{feature.name}__s{i}" for i in range(k)]
    names = names[:j] + spline_names[:1] + names[j + 1:] + spline_names[1:]
    beta0 = None
    if start and all(name in start for name in design.names):
        # The natural spline spans linear functions of x (constants aside, absorbed by the
        # subject effects): its least-squares fit to start[feature] * x starts the curve at
        # the linear model's answer.
        centred = basis - basis.mean(axis=0)
        coef = np.linalg.lstsq(centred, start[feature.name] * (x - x.mean()), rcond=None)[0]
        linear = [start[name] for name in design.names]
        beta0 = np.array(linear[:j] + [coef[0]] + linear[j + 1:] + list(coef[1:]))
        if not np.all(np.isfinite(beta0)):
            beta0 = None
    fit = fit_conditional_poisson(work[:, :p + k - 1], design.y, groups=design.fit_groups,
                                  clusters=design.groups, feature_names=names, start=beta0)
    idx = [names.index(name) for name in spline_names]
    if not fit.converged:
        return None, {"status": "not_estimated", "reason": "the solver did not converge"}
    beta = np.asarray(fit.coef)[idx]
    cov = np.asarray(fit.cov_cluster)[np.ix_(idx, idx)]

    low, reference, high = (float(v) for v in np.quantile(
        x, [RANGE_QUANTILES[0], REFERENCE_QUANTILE, RANGE_QUANTILES[1]]))
    grid = np.unique(np.concatenate([np.linspace(low, high, N_GRID), [reference]]))
    at_grid = spline.transform(np.r_[grid, reference][:, None]) @ natural
    contrast = at_grid[:-1] - at_grid[-1]
    log_irr = contrast @ beta
    se = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", contrast, cov, contrast), 0.0, None))
    scale = feature.scale
    n = grid.shape[0]
    curve = pl.DataFrame({
        "model": np.full(n, "within_subject"),
        "feature": np.full(n, feature.name),
        "unit": np.full(n, feature.source_unit or ""),
        "x": grid * scale,
        "reference_x": np.full(grid.shape, reference * scale),
        "irr": np.exp(log_irr),
        "ci_low": np.exp(log_irr - Z * se),
        "ci_high": np.exp(log_irr + Z * se),
    }, schema=DOSE_SCHEMA)
    note = {"status": "estimated", "knots": [float(v * scale) for v in knots],
            "reference": "median", "reference_x": reference * scale,
            "range": [float(low * scale), float(high * scale)],
            "knot_placement": placement, "n_spline_terms": int(k)}
    return curve, note
