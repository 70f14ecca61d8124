"""Descriptive outputs of a run: the cohort table (``cohort.csv``) and the subgroup analysis
(``subgroups.csv``), written by one call from ``pipeline/run.py``."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from pipeline.describe.cohort import (COHORT, FREQUENT_RULE, cohort_table, combine,
                                      summarise_bucket)

__all__ = ["COHORT", "cohort_for_run", "write_describe_outputs"]


def cohort_for_run(store, panel, flags) -> pl.DataFrame:
    """``cohort.csv`` of a run: the stored subjects and episodes, the panel, and the subjects the
    ``frequent`` advisory flagged (``flags``: the run's ``RedFlagResult``)."""
    frequent = None
    column = f"n_{FREQUENT_RULE}"
    if column in flags.subject_flags.columns:
        frequent = flags.subject_flags.lazy().filter(pl.col(column) > 0).select("subject_id")
    features = [f for f in panel.features.values() if f.role == "core"]
    if panel.n_buckets == 1:
        parts = summarise_bucket(store.read("subjects"), panel.whole().lazy(),
                                 store.read("episodes"), features, frequent)
    else:
        # The panel's parts are the store's subject buckets: one bucket in memory at a time.
        parts = combine([summarise_bucket(store.read_bucket("subjects", b),
                                          panel.bucket(b).lazy(),
                                          store.read_bucket("episodes", b), features, frequent)
                         for b in range(panel.n_buckets)])
    return cohort_table(parts, features)


def write_describe_outputs(store, panel, flags, effects: pl.DataFrame, out_dir: Path, *,
                           custom_factors=()) -> list[str]:
    """Write ``cohort.csv`` and ``subgroups.csv`` into ``out_dir``; returns lines for the user."""
    from pipeline import atomic
    from pipeline.features import dictionary as fd
    from pipeline.models.effects import format_floats
    from pipeline.models.subgroups import fit_subgroups, write_subgroups

    out_dir = Path(out_dir)
    atomic.write_csv(out_dir / COHORT.file, format_floats(cohort_for_run(store, panel, flags)))
    within = effects.filter((pl.col("model") == fd.WITHIN_SUBJECT) & pl.col("irr").is_not_null())
    start = {f: math.log(irr) for f, irr in zip(within["feature"], within["irr"])}
    subgroups = fit_subgroups(panel, store.read("subjects"), store.read("episodes"),
                              custom_factors=custom_factors, start=start)
    write_subgroups(subgroups, out_dir)
    return ["Cohort and subgroups: cohort.csv and subgroups.csv written."]
