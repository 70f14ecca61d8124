"""Model designs one subject bucket at a time, kept on disk where every worker can read them.

``design.prepare_design`` builds a model's design whole in memory. For a panel held in buckets
(``Panel.parts``, a run's scratch space) this module builds the same design bucket by bucket:

- the data sufficiency policy and the complete-case rule are decided from reducible per-bucket
  statistics (counts, column minima and maxima, subjects with within-subject variation), with the
  same reasons, word for word, as the in-memory path (``design.judge_sufficiency``);
- the collinearity check adds up per-bucket cross-products (within-subject: each bucket's own
  subject means, since a subject never crosses buckets; population: the raw cross-product and the
  column totals, centred once on the driver);
- each bucket's design is written once, as the estimator's own bucket object
  (``GroupedBucket`` or ``ClusterBucket``) in ``.npy`` files, and a :class:`DesignFile` handle
  (a path and a few numbers) is what the estimators receive: every pass memory-maps the bucket
  where it runs (a thread here, a Dask worker on a shared file system), so neither the driver nor
  a worker ever holds more than the buckets being processed, and a Newton iteration moves only
  coefficients and p x p sums.

Subject codes are the whole panel's (0..G-1 in subject_id order), so a design's subjects, and
anything chosen from them by position (the dose-response subset), are the in-memory path's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.atomic import user_errors_for

#: Arrays of the estimators' bucket objects that are saved (the rest are small scalars).
_SCALARS = ("n_clusters",)
#: A design of at most this many bytes is held in memory instead of on disk when its passes run
#: on this machine's threads (``CRAMP_DESIGN_MEMORY_MB`` overrides; 0: always on disk). Holding
#: it saves writing it and memory-mapping it on every pass; the budget keeps memory bounded.
DESIGN_MEMORY_BYTES = 768 * 2**20
DESIGN_MEMORY_ENV = "CRAMP_DESIGN_MEMORY_MB"


def memory_budget() -> int:
    import os

    wanted = os.environ.get(DESIGN_MEMORY_ENV, "").strip()
    return int(wanted) * 2**20 if wanted.isdigit() else DESIGN_MEMORY_BYTES


@dataclass(frozen=True, eq=False)
class HeldBucket:
    """A design bucket held in memory (a design under the memory budget, local executor): the
    estimator's bucket object, the bucket's subjects, and, after the solution, its fitted rates
    (``fitted[0]``), so that the calibration and the curves' subset read it as they read a
    ``DesignFile``."""

    bucket: Any
    subjects: np.ndarray
    subject_rows: np.ndarray
    fitted: list = field(default_factory=lambda: [None])

    @property
    def n_rows(self) -> int:
        return int(self.bucket.y.shape[0])

    @property
    def kind(self) -> str:
        return "grouped" if hasattr(self.bucket, "starts") else "cluster"


@dataclass(frozen=True)
class DesignFile:
    """A handle on one bucket of a design on disk: what the estimators' per-bucket functions
    receive instead of the arrays (``conditional_buckets.resolve``, ``poisson_buckets.resolve``
    open it where they run)."""

    path: str
    #: ``grouped`` (a within-subject design: ``GroupedBucket``) or ``cluster`` (``ClusterBucket``)
    kind: str
    n_rows: int
    #: The X file (a column drop writes a new one beside it).
    x_file: str = "X.npy"


def save(directory: Path, bucket, kind: str, *, subjects: np.ndarray,
         subject_rows: np.ndarray) -> DesignFile:
    """Write an estimator bucket object (``GroupedBucket`` / ``ClusterBucket``) and the bucket's
    subjects (global codes, in row order) with their row counts."""
    directory = Path(directory)
    with user_errors_for(directory):
        directory.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {}
        for f in fields(bucket):
            value = getattr(bucket, f.name)
            if f.name in _SCALARS:
                meta[f.name] = int(value)
            elif f.name == "blocks":
                np.save(directory / "blocks.npy", np.asarray(value, dtype=np.int64).reshape(-1, 2))
            elif value is not None:
                np.save(directory / f"{f.name}.npy", value)
        np.save(directory / "subjects.npy", np.asarray(subjects, dtype=np.int64))
        np.save(directory / "subject_rows.npy", np.asarray(subject_rows, dtype=np.int64))
        (directory / "meta.json").write_text(json.dumps(meta))
    return DesignFile(path=str(directory), kind=kind, n_rows=int(bucket.y.shape[0]))


def _array(handle: DesignFile, name: str) -> np.ndarray | None:
    path = Path(handle.path) / name
    if not path.exists():
        return None
    with user_errors_for(path):
        return np.load(path, mmap_mode="r")


def load(handle: DesignFile):
    """The estimator bucket object of ``handle``, its arrays memory-mapped (read-only)."""
    if isinstance(handle, HeldBucket):
        return handle.bucket
    from pipeline.models.conditional_buckets import GroupedBucket
    from pipeline.models.poisson_buckets import ClusterBucket

    cls = GroupedBucket if handle.kind == "grouped" else ClusterBucket
    meta = json.loads((Path(handle.path) / "meta.json").read_text())
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in _SCALARS:
            values[f.name] = meta[f.name]
        elif f.name == "blocks":
            values[f.name] = tuple((int(a), int(b)) for a, b in _array(handle, "blocks.npy"))
        elif f.name == "X":
            values[f.name] = _array(handle, handle.x_file)
        else:
            values[f.name] = _array(handle, f"{f.name}.npy")
    return cls(**values)


def subjects(handle: DesignFile) -> tuple[np.ndarray, np.ndarray]:
    """(global subject codes, rows per subject) of the bucket, in row order."""
    if isinstance(handle, HeldBucket):
        return handle.subjects, handle.subject_rows
    return np.asarray(_array(handle, "subjects.npy")), np.asarray(_array(handle,
                                                                         "subject_rows.npy"))


def write_fitted(handle: DesignFile, fitted: np.ndarray) -> None:
    """The fitted rates of a solution, beside the bucket (read back for the calibration)."""
    if isinstance(handle, HeldBucket):
        handle.fitted[0] = fitted
        return
    path = Path(handle.path) / "fitted.npy"
    with user_errors_for(path):
        np.save(path, fitted)


def outcome_and_fitted(handle: DesignFile) -> tuple[np.ndarray, np.ndarray]:
    """(y, fitted rates) of one bucket after ``write_fitted``."""
    if isinstance(handle, HeldBucket):
        return handle.bucket.y, handle.fitted[0]
    return np.asarray(_array(handle, "y.npy")), np.asarray(_array(handle, "fitted.npy"))


def drop_columns(handle: DesignFile, keep: list[int]) -> DesignFile:
    """The same bucket with only the columns ``keep`` of X (a rare path: a feature the estimator
    rejected); the other arrays are shared."""
    if isinstance(handle, HeldBucket):
        return HeldBucket(replace(handle.bucket, X=np.asfortranarray(handle.bucket.X[:, keep])),
                          handle.subjects, handle.subject_rows)
    X = _array(handle, handle.x_file)
    name = f"X-{len(keep)}-{abs(hash(tuple(keep))) % 10**8}.npy"
    path = Path(handle.path) / name
    with user_errors_for(path):
        np.save(path, np.asfortranarray(X[:, keep]))
    return DesignFile(path=handle.path, kind=handle.kind, n_rows=handle.n_rows, x_file=name)


def subject_ranks(panel) -> pl.DataFrame:
    """Every panel subject's code: its rank in subject_id order (``with_subject_codes``' codes,
    without the whole panel in memory)."""
    ids = pl.concat([part.select(pl.col("subject_id").unique()) for part in
                     panel.buckets(["subject_id"])]).sort("subject_id")
    return ids.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_subject"))


def bucket_frame(panel, b: int, ranks: pl.DataFrame, analysis, knots,
                 columns: list[str] | None = None) -> pl.DataFrame:
    """Bucket ``b`` of the panel with the whole panel's subject codes (``SUBJECT_CODE``) and the
    columns of the ``[analysis]`` choices (strata, adjustments: ``time_strata``)."""
    from pipeline.models.design import SUBJECT_CODE
    from pipeline.models.time_strata import frame_for_analysis

    frame = panel.bucket(b, columns).join(ranks.rename({"_subject": SUBJECT_CODE}),
                                          on="subject_id", how="left", maintain_order="left")
    frame, _ = frame_for_analysis(frame, analysis, knots)
    return frame


def days_in_study_knots(panel) -> np.ndarray:
    """``time_strata.days_in_study_knots`` of the whole panel from per-bucket value counts (days
    in study are whole numbers, so a bucket returns at most a few hundred (value, count) pairs)."""
    from pipeline.describe.cohort import quantiles_from_counts
    from pipeline.models.time_strata import (DAYS_IN_STUDY, DAYS_IN_STUDY_INTERIOR_QUANTILES,
                                             days_in_study)

    counts = pl.concat([
        part.select(days_in_study(part)).group_by(DAYS_IN_STUDY).agg(pl.len().alias("n"))
        for part in panel.buckets(["subject_id", "date"])
    ]).group_by(DAYS_IN_STUDY).agg(pl.col("n").sum())
    if counts.height == 0:
        return np.zeros(1)
    values = counts[DAYS_IN_STUDY].to_numpy()
    top = float(values.max())
    inner = quantiles_from_counts(values, counts["n"].to_numpy(),
                                  DAYS_IN_STUDY_INTERIOR_QUANTILES)
    return np.unique(np.r_[0.0, inner, top])


def prepare_design_buckets(panel, model: str, conditional: bool, features, reported, *,
                           ranks: pl.DataFrame, analysis, knots, directory: Path):
    """``design.prepare_design`` for a panel held in buckets: the same ``Design`` (features,
    reasons, sufficiency figures, counts), with its data in ``Design.buckets`` (one
    ``DesignFile`` per non-empty bucket under ``directory``) instead of ``X``/``y``."""
    from pipeline.features.panel import OUTCOME
    from pipeline.models import conditional_buckets as cb
    from pipeline.models import poisson_buckets as pb
    from pipeline.models.design import (FEATURE_REASONS, SUBJECT_CODE, Design, _build_X,
                                        _model_rows, add_cross, add_sufficiency_stats,
                                        candidate_features, centred_cross, collinear_features,
                                        cross_part, drop_mostly_missing, judge_sufficiency,
                                        sufficiency_stats)
    from pipeline.models.time_strata import strata_codes

    d = Design(model, conditional, tuple(features), tuple(reported))
    candidates = candidate_features(d, features, panel)  # the panel lists [analysis] columns
    n_days = panel.n_rows
    d.n_candidate_days = n_days
    if n_days:  # adjustment columns ("_") are never missing
        drop_mostly_missing(d, candidates, panel.summary.get("missing_values", {}), n_days)

    # Panel columns; the [analysis] adjustments ("_" names) are computed per bucket.
    panel_columns = ["subject_id", "date", OUTCOME,
                     *[f.name for f in candidates if not f.name.startswith("_")]]
    kind = "grouped" if conditional else "cluster"
    from pipeline import execution

    hold = (isinstance(execution.current(), execution.LocalExecutor)
            and n_days * (len(candidates) + 4) * 8 <= memory_budget())
    while True:
        names = [f.name for f in candidates]

        def one(b: int, names=names, candidates=tuple(candidates)):
            """Bucket ``b``'s design (a handle, or None when no row is left) and statistics."""
            frame = bucket_frame(panel, b, ranks, analysis, knots, panel_columns)
            subject = frame[SUBJECT_CODE].to_numpy()
            local = np.r_[0, np.cumsum(subject[1:] != subject[:-1])] if subject.size else subject
            outcome = frame[OUTCOME].to_numpy()
            mask, complete, zero = _model_rows(frame, local, outcome, list(candidates),
                                               conditional)
            X = _build_X(frame, names, mask)
            groups = subject[mask]
            y = outcome[mask].astype(np.float64)
            out = {"complete": complete, "zero": zero,
                   "stats": sufficiency_stats(X, groups, conditional),
                   "handle": None, "cross": None, "rows": 0, "subjects": 0, "y_sum": 0.0}
            if not y.size:
                return out
            out["cross"] = cross_part(X, groups, conditional) if X.shape[1] >= 2 else None
            if conditional:
                strata = strata_codes(frame, mask)
                bucket = (cb.grouped_bucket(X, y, groups) if strata is None
                          else cb.grouped_bucket(X, y, strata, groups))
            else:
                bucket = pb.cluster_bucket(X, y, groups)
            starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
            subject_rows = np.diff(np.r_[starts, groups.size])
            out["handle"] = (HeldBucket(bucket, groups[starts], subject_rows) if hold else
                             save(Path(directory) / f"b{b:04d}", bucket, kind,
                                  subjects=groups[starts], subject_rows=subject_rows))
            out.update(rows=int(y.size), subjects=int(starts.size), y_sum=float(y.sum()))
            return out

        # Buckets side by side on this machine's cores (a bucket's work is polars and numpy,
        # which release the GIL; memory: one bucket per thread), results in bucket order.
        parts = execution.concurrently([lambda b=b: one(b) for b in range(panel.n_buckets)])
        handles = [q["handle"] for q in parts if q["handle"] is not None]
        stats = [q["stats"] for q in parts]
        crosses = [q["cross"] for q in parts if q["handle"] is not None]
        n_complete = sum(q["complete"] for q in parts)
        n_zero = sum(q["zero"] for q in parts)
        n_rows = sum(q["rows"] for q in parts)
        n_subjects = sum(q["subjects"] for q in parts)
        y_sum = sum(q["y_sum"] for q in parts)
        del parts
        failures = (judge_sufficiency(add_sufficiency_stats(stats), candidates, conditional, d)
                    if candidates else [])
        if not failures:
            break
        for f in failures:
            candidates.remove(f)

    d.n_dropped_incomplete = n_days - n_complete
    if conditional:
        d.n_subjects_without_episodes = n_zero
        d.n_days_without_episodes_subject = n_complete - n_rows
    d.kept = list(candidates)
    d.buckets = handles
    d.totals = {"n_subject_days": n_rows, "n_subjects": n_subjects,
                "n_episodes": int(round(y_sum))}
    if len(d.kept) >= 2 and n_rows:
        dropped = collinear_features(centred_cross(add_cross([c for c in crosses if c])),
                                     d.kept)
        if dropped:
            d.drop(dropped, FEATURE_REASONS["collinear"])
    for f in d.kept:
        d.sufficiency.setdefault(f.name, {}).update({"status": "estimated", "reason": None})
    return d


def gather_rows(design, subjects_wanted: np.ndarray):
    """The rows of the given subjects (global codes, sorted) from a bucketed design, in memory:
    (X, y, groups, strata) in subject order, as the in-memory design would hold them."""
    wanted = np.asarray(subjects_wanted)
    Xs, ys, gs, ss = [], [], [], []
    offset = 0  # stratum labels of different buckets kept apart
    for h in design.buckets:
        codes, rows = subjects(h)
        pick = np.isin(codes, wanted)
        if not pick.any():
            continue
        bucket = load(h)
        row_pick = np.repeat(pick, rows)
        Xs.append(np.asarray(bucket.X[row_pick]))
        ys.append(np.asarray(bucket.y[row_pick]))
        gs.append(np.repeat(codes[pick], rows[pick]))
        if hasattr(bucket, "starts") and not np.array_equal(bucket.clusters, bucket.codes):
            ss.append(np.asarray(bucket.codes[row_pick]) + offset)
            offset += bucket.n_groups
    if not Xs:
        p = len(design.kept)
        return np.empty((0, p), order="F"), np.zeros(0), np.zeros(0, np.int64), None
    X, y, g = np.concatenate(Xs), np.concatenate(ys), np.concatenate(gs)
    strata = np.concatenate(ss) if ss else None
    # Rows in subject order (each bucket's rows are; buckets interleave subjects).
    by_subject = np.argsort(g, kind="stable")
    if not np.all(by_subject == np.arange(by_subject.size)):
        X, y, g = X[by_subject], y[by_subject], g[by_subject]
        strata = None if strata is None else strata[by_subject]
    return np.asfortranarray(X), y, g, strata
