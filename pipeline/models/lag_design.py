"""The lag design of the distributed-lag model, per bucket of whole subjects.

Missing days are not zero. A day's lag window is complete when the subject logged every one of
the L days before it (a day whose window reaches an unlogged day, or the time before the
subject's first diary day, has an unknown lagged exposure) and every value in it is recorded.
Only complete windows enter the model; ``LagBucket`` counts the days dropped each way. Nothing is
filled with 0 or carried forward.

``lag_design_bucket`` is a pure function of one bucket of whole subjects (rows sorted by subject
and date; a lag never looks past the subject's own rows) returning its design rows and counts;
``combine_buckets`` is the reduction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import polars as pl

from pipeline.analysis_config import AnalysisConfig
from pipeline.features import dictionary as fd
from pipeline.features.panel import OUTCOME
from pipeline.models.lag_basis import lag_basis

#: Factors not lagged, and why: they are already a window of previous days.
NOT_LAGGED = {"recent_injury": "not lagged: it already marks an injury on any of the 30 days "
                               "before the day"}

@dataclass(frozen=True)
class LagTerm:
    """One factor's distributed-lag term: lags 0..max_lag through the basis ``C``."""

    feature: fd.Feature
    max_lag: int
    C: np.ndarray = field(repr=False)
    basis: str = ""

    @property
    def columns(self) -> list[str]:
        return [f"{self.feature.name}__b{k}" for k in range(self.C.shape[1])]


@dataclass
class LagBucket:
    """One bucket's design rows (complete windows) and what was dropped."""

    X: np.ndarray
    #: Each term's same-day value on the design rows (for the sufficiency checks).
    same_day: np.ndarray
    y: np.ndarray
    subjects: np.ndarray   # codes 0..S-1 within the bucket
    strata: np.ndarray     # codes 0..T-1 within the bucket
    n_days: int
    n_window_incomplete: int
    n_value_missing: int


def lag_terms(features: Sequence[fd.Feature], analysis: AnalysisConfig,
              custom_factors=()) -> list[LagTerm]:
    """The lag term of each feature: ``[analysis] max_lag_days``, a custom factor's own."""
    own = {c.column: c.max_lag_days for c in custom_factors if c.max_lag_days is not None}
    terms = []
    for f in features:
        L = 0 if f.name in NOT_LAGGED else own.get(f.name, analysis.max_lag_days)
        C, basis = lag_basis(L)
        terms.append(LagTerm(f, L, C, basis))
    return terms


def lag_design_bucket(bucket: pl.DataFrame, terms: Sequence[LagTerm],
                      adjust: Sequence[str] = (), strata_column: str | None = None) -> LagBucket:
    """The lag design of one bucket of whole subjects (a pure function of the bucket).

    ``bucket``: panel rows (subject_id, date, episodes, the terms' features and the ``adjust``
    columns) of whole subjects. A row enters when its window of ``max(L)`` previous calendar days
    was logged without a gap and every value the terms read in it is recorded."""
    bucket = bucket.sort("subject_id", "date") if not _is_sorted(bucket) else bucket
    n = bucket.height
    sid = bucket["subject_id"]
    new_subject = np.r_[True, (sid != sid.shift(1)).fill_null(True).to_numpy()[1:]] if n else \
        np.zeros(0, bool)
    day = bucket["date"].cast(pl.Int32).to_numpy().astype(np.int64)
    gap = np.r_[True, np.diff(day) != 1] if n else np.zeros(0, bool)
    run_start = np.maximum.accumulate(np.where(new_subject | gap, np.arange(n), 0)) if n else \
        np.zeros(0, np.int64)
    # Days logged without a gap before this one (0 on the first diary day or after a gap).
    position = np.arange(n) - run_start
    max_lag = max((t.max_lag for t in terms), default=0)
    window_ok = position >= max_lag
    values_ok = np.ones(n, dtype=bool)
    cache: dict[str, np.ndarray] = {}
    for t in terms:
        x = bucket[t.feature.name].cast(pl.Float64).fill_null(np.nan).to_numpy()
        cache[t.feature.name] = x
        missing = np.r_[0, np.cumsum(np.isnan(x))]
        # Missing values among x[i-L..i]: valid wherever the window is complete.
        lo = np.clip(np.arange(n) - t.max_lag, 0, None)
        values_ok &= (missing[np.arange(n) + 1] - missing[lo]) == 0
    rows = np.flatnonzero(window_ok & values_ok)
    n_cols = sum(t.C.shape[1] for t in terms) + len(adjust)
    X = np.empty((rows.size, n_cols), order="F")
    j = 0
    for t in terms:
        x = cache[t.feature.name]
        lagged = [x[rows - lag] for lag in range(t.max_lag + 1)]
        for k in range(t.C.shape[1]):
            col = X[:, j]
            col[:] = 0.0
            for lag, c in enumerate(t.C[:, k]):
                if c != 0.0:
                    col += c * lagged[lag]
            j += 1
    for name in adjust:
        X[:, j] = bucket[name].cast(pl.Float64).to_numpy()[rows]
        j += 1
    subjects = np.cumsum(new_subject) - 1
    strata = (bucket[strata_column].to_numpy() if strata_column else subjects)[rows]
    same_day = np.column_stack([cache[t.feature.name][rows] for t in terms]) if terms else \
        np.empty((rows.size, 0))
    return LagBucket(
        X=X, same_day=same_day, y=bucket[OUTCOME].cast(pl.Float64).to_numpy()[rows], subjects=subjects[rows],
        strata=_recode(strata), n_days=n, n_window_incomplete=int(np.count_nonzero(~window_ok)),
        n_value_missing=int(np.count_nonzero(window_ok & ~values_ok)))


def _is_sorted(frame: pl.DataFrame) -> bool:
    if frame.height < 2:
        return True
    sid, day = pl.col("subject_id"), pl.col("date")
    ok = (sid > sid.shift(1)) | ((sid == sid.shift(1)) & (day > day.shift(1)))
    return bool(frame.select(ok.slice(1).all()).item())


def _recode(codes: np.ndarray) -> np.ndarray:
    """Sorted-run codes 0..G-1 (codes of rows sorted by subject and date are runs)."""
    if codes.size == 0:
        return codes.astype(np.int64)
    return np.cumsum(np.r_[True, codes[1:] != codes[:-1]]) - 1


def combine_buckets(parts: Sequence[LagBucket]) -> LagBucket:
    """The reduction: stack the buckets' rows, offsetting subject and stratum codes."""
    subjects, strata, s_off, t_off = [], [], 0, 0
    for b in parts:
        subjects.append(b.subjects + s_off)
        strata.append(b.strata + t_off)
        s_off += int(b.subjects.max()) + 1 if b.subjects.size else 0
        t_off += int(b.strata.max()) + 1 if b.strata.size else 0
    return LagBucket(
        X=np.asfortranarray(np.vstack([b.X for b in parts])) if len(parts) > 1 else parts[0].X,
        same_day=np.vstack([b.same_day for b in parts]),
        y=np.concatenate([b.y for b in parts]), subjects=np.concatenate(subjects),
        strata=np.concatenate(strata), n_days=sum(b.n_days for b in parts),
        n_window_incomplete=sum(b.n_window_incomplete for b in parts),
        n_value_missing=sum(b.n_value_missing for b in parts))
