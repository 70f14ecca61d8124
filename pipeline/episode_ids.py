"""Stable ids for episodes that arrived without an ``episode_id``.

Red-flag outputs, notebooks and the timeline all refer to an episode by id, so an episode without
one gets an id derived from its fallback key (``schema.EPISODES.fallback_key``: subject, start and
muscle group), which ingest has already made unique. The id is built from the values as text, not
from a hash, so it is the same on every run, on every machine and under every polars version:

    {subject_id}_{YYYYMMDDTHHMMSS}_{muscle_group}      e.g.  S001_20240103T221500_calf

A start time with a fraction of a second keeps it (``20240103T221500.250000``), so two episodes
that differ only below the second still get different ids. A supplied ``episode_id`` is never
changed.
"""

from __future__ import annotations

import polars as pl

from pipeline import schema

#: ISO 8601 basic format, plus ``.ffffff`` (always six digits) when there is a fraction of a second.
DERIVED_ID_TIME_FORMAT = "%Y%m%dT%H%M%S"
DERIVED_ID_FRACTION_FORMAT = "%Y%m%dT%H%M%S%.6f"


def derived_episode_id() -> pl.Expr:
    """The derived id of every row (whether or not it has an ``episode_id``)."""
    subject, started, muscle = schema.EPISODES.fallback_key
    return pl.concat_str(
        [
            pl.col(subject),
            pl.when(pl.col(started).dt.microsecond() == 0)
            .then(pl.col(started).dt.strftime(DERIVED_ID_TIME_FORMAT))
            .otherwise(pl.col(started).dt.strftime(DERIVED_ID_FRACTION_FORMAT)),
            pl.col(muscle),
        ],
        separator="_",
    )


def with_episode_ids(episodes: pl.LazyFrame) -> pl.LazyFrame:
    """Fill each null ``episode_id`` with its derived id; all other columns are unchanged.

    >>> import datetime as dt
    >>> lf = pl.LazyFrame(
    ...     {"episode_id": [None, "e7"], "subject_id": ["S001", "S001"],
    ...      "started_at": [dt.datetime(2024, 1, 3, 22, 15), dt.datetime(2024, 1, 4, 6, 0)],
    ...      "muscle_group": ["calf", "foot"]})
    >>> with_episode_ids(lf).collect()["episode_id"].to_list()
    ['S001_20240103T221500_calf', 'e7']
    """
    return episodes.with_columns(
        pl.col("episode_id").fill_null(derived_episode_id()).alias("episode_id")
    )
