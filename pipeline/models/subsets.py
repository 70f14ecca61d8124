"""Bounded fits on large panels: a subset of whole subjects chosen by a stable hash of their id.

Used by the analyses that refit the within-subject model many times or with many columns (the lag
model, the subgroups), so their run time stays bounded. Each subject is in or out by its own id,
so the subset does not depend on how subjects are bucketed or ordered; the note it returns goes
into the rows and diagnostics of the analysis, whose intervals are then those of the subset.
"""

from __future__ import annotations

import hashlib

import polars as pl

SUBSET_SEED = 20261201


def subject_subset(frame: pl.DataFrame, max_subject_days: int | None,
                   what: str = "the lag model") -> tuple[pl.DataFrame, dict | None]:
    """Whole subjects chosen by a stable hash of their id so that about ``max_subject_days``
    subject-days remain (all of them when the panel is smaller). ``what`` names the analysis in
    the note."""
    if max_subject_days is None or frame.height <= max_subject_days:
        return frame, None
    fraction = max_subject_days / frame.height
    sub = _chosen(frame, fraction)
    return sub, _note(sub, frame.height, int(frame["subject_id"].n_unique()), max_subject_days,
                      what)


def panel_subset(panel, max_subject_days: int | None, what: str = "the lag model",
                 columns: list[str] | None = None) -> tuple[pl.DataFrame, dict | None]:
    """``subject_subset`` of a ``Panel`` read one bucket at a time: only the chosen subjects'
    rows are ever in memory together (the same subjects and rows, in subject_id and date order,
    as ``subject_subset(panel.whole())``)."""
    n_rows = panel.n_rows
    if max_subject_days is None or n_rows <= max_subject_days or panel.n_buckets == 1:
        return subject_subset(panel.whole(columns), max_subject_days, what)
    from pipeline.features.panel import _sorted

    fraction = max_subject_days / n_rows
    keep = pl.concat([_chosen_ids(part["subject_id"], fraction)
                      for part in panel.buckets(["subject_id"])]).implode()

    def rows_of(part: pl.DataFrame) -> pl.DataFrame:
        # A gather, not a filter: polars' filter returns the runs of kept rows as slices of the
        # part's buffers, so every part would stay in memory behind its few subjects (5 GB for
        # a 240,000-row subset of 110M subject-days).
        return part[part.select(pl.arg_where(pl.col("subject_id").is_in(keep))).to_series()]

    sub = _sorted(pl.concat([rows_of(part) for part in panel.buckets(columns)]))
    return sub, _note(sub, n_rows, int(panel.summary["n_subjects"]), max_subject_days, what)


def _chosen(frame: pl.DataFrame, fraction: float) -> pl.DataFrame:
    """The rows of the subjects whose hash falls below ``fraction``."""
    keep = _chosen_ids(frame["subject_id"], fraction)
    return frame.filter(pl.col("subject_id").is_in(keep.implode()))


def _chosen_ids(subject_ids: pl.Series, fraction: float) -> pl.Series:
    """The distinct ids whose hash falls below ``fraction``."""
    ids = subject_ids.unique().to_list()
    # sha256 of the seed and the id: stable across platforms and library versions (one hash per
    # subject, not per row).
    u = [int.from_bytes(hashlib.sha256(f"{SUBSET_SEED}:{s}".encode()).digest()[:8], "big")
         / 2.0**64 for s in ids]
    return pl.Series("subject_id", [s for s, v in zip(ids, u) if v < fraction],
                     dtype=subject_ids.dtype)


def _note(sub: pl.DataFrame, of_rows: int, of_subjects: int, max_subject_days: int,
          what: str) -> dict:
    return {"n_subject_days": sub.height, "of_subject_days": of_rows,
            "n_subjects": int(sub["subject_id"].n_unique()),
            "of_subjects": of_subjects, "seed": SUBSET_SEED,
            "why": f"{what} is fitted on the subjects of a hash-based subset of about "
                   f"{max_subject_days:,} subject-days to bound run time; CIs are the subset's"}
