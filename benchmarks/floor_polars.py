"""The plain-polars floor (issue 10): read the daily and episodes CSVs and build the subject-day
panel (episodes per subject and calendar date joined to the logged days, the core features in
model units), with nothing else: no validation, no store, no identifiers scan, no models. The
time an expert needs just to have the panel in memory; `cramp run` is measured against it.

Usage: python benchmarks/floor_polars.py DATA_DIR
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import polars as pl

SCALES = {"exercise_min": 30.0, "heat_c": 5.0, "caffeine_mg": 100.0}


def build(data: Path) -> pl.DataFrame:
    daily = pl.scan_csv(data / "daily.csv", try_parse_dates=True)
    episodes = pl.scan_csv(data / "episodes.csv", try_parse_dates=True)
    counts = (episodes.select("subject_id", pl.col("started_at").dt.date().alias("date"))
              .group_by("subject_id", "date").agg(pl.len().cast(pl.Int64).alias("episodes")))
    names = daily.collect_schema().names()
    units = [(pl.col(c) / s).alias(c) for c, s in SCALES.items() if c in names]
    return (daily.join(counts, on=["subject_id", "date"], how="left")
            .with_columns(pl.col("episodes").fill_null(0), *units)
            .sort("subject_id", "date").collect())


def main(argv: list[str]) -> None:
    started = time.perf_counter()
    panel = build(Path(argv[0]))
    print(f"polars floor: {panel.height:,} subject-days in {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
