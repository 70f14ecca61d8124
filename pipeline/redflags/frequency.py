"""The per-subject ``frequency`` rule: cramps week after week.

Definition (documented in ``rules.toml`` too). Dates are the local calendar dates of
``started_at``. With W = 7 days, K = ``consecutive_weeks`` and M = ``min_episodes_per_week``, a day
D *qualifies* when each of the K back-to-back windows [D, D+W), [D+W, D+2W), ..., [D+(K-1)W, D+KW)
holds at least M of the subject's episodes (episodes, not days: three cramps on one day count
three). Every calendar day is a possible D, so a pattern is found wherever its weeks start. The
spans [D, D+KW) of all qualifying days are merged when they overlap or touch; each merged span is
one *period* and gives one flag, attached to the period's first episode, with evidence such as::

    weeks=4; episodes_per_week=3,5,4,3; weeks_from=2024-01-01..2024-01-28;
    period=2024-01-01..2024-02-03; episodes_in_period=19

``episodes_per_week`` and ``weeks_from`` describe the latest qualifying D on or before the period's
first episode; ``period`` runs from the period's first to its last episode.

How: inside a qualifying span every window holds an episode, so consecutive episode days in it
are less than 2W days apart. Each subject's days are therefore cut into clusters at gaps of 2W
days or more: a qualifying span only ever holds episodes of one cluster, and spans of different
clusters can neither overlap nor touch. Clusters with fewer than M*K episodes are dropped; each
other cluster gets a dense day grid (W days of padding before, KW after), on which window counts
are differences of one cumulative sum read at fixed offsets. The grid is about as long as the
dense parts of the diaries, and every step is a vectorised pass.
"""

from __future__ import annotations

import polars as pl

from pipeline.episode_ids import with_episode_ids

WEEK_DAYS = 7

# Subject-day keys: subject code * 2**32 + (days since 1970 + 2**31); a few weeks' offset never
# leaves a subject's block.
_BLOCK = 1 << 32
_DAY_OFFSET = 1 << 31

FLAG_SCHEMA: dict[str, pl.DataType] = {
    "episode_id": pl.String(),
    "subject_id": pl.String(),
    "started_at": pl.Datetime("us"),
    "muscle_group": pl.String(),
    "evidence": pl.String(),
}


def frequency_flags(episodes: pl.LazyFrame | pl.DataFrame, *, min_episodes_per_week: int,
                    consecutive_weeks: int) -> pl.DataFrame:
    """One row per frequent-cramping period: episode_id (derived if missing), subject_id,
    started_at and muscle_group of the period's first episode, and the evidence.

    ``episodes`` needs ``episode_id``, ``subject_id``, ``started_at`` and ``muscle_group``.
    """
    assert min_episodes_per_week >= 1 and consecutive_weeks >= 1
    m, k, w = min_episodes_per_week, consecutive_weeks, WEEK_DAYS
    span = w * k
    empty = pl.DataFrame(schema=FLAG_SCHEMA)

    # One integer per subject-day: (subject code) * 2**32 + (days since 1970 + 2**31). The code
    # only groups rows (its values never reach the output), and integers group and sort fast.
    episodes = (
        episodes.lazy()
        .select(
            "episode_id", "subject_id", "started_at", "muscle_group",
            key=pl.col("subject_id").cast(pl.Categorical).to_physical().cast(pl.Int64) * _BLOCK
            + pl.col("started_at").dt.date().cast(pl.Int32).cast(pl.Int64)
            + _DAY_OFFSET,
        )
        .collect()
    )
    # Episodes per subject-day: runs of equal keys once sorted (cheaper than a hash group-by).
    runs = episodes["key"].sort().rle().struct.unnest()
    days = (
        runs.lazy()
        .select(key="value", n=pl.col("len").cast(pl.Int64))
        .with_columns(subject=pl.col("key") // _BLOCK)
        .with_columns(
            cluster=(
                (pl.col("subject") != pl.col("subject").shift(1))
                | (pl.col("key") - pl.col("key").shift(1) >= 2 * w)
            )
            .fill_null(True)
            .cum_sum()
        )
        # A cluster with fewer than m*k episodes can never qualify.
        .filter(pl.col("n").sum().over("cluster") >= m * k)
        # Renumber the clusters kept 0, 1, 2, ... (rows are still in key order).
        .with_columns(
            cluster=(pl.col("cluster") != pl.col("cluster").shift(1)).fill_null(True).cum_sum() - 1
        )
        .collect()
    )
    if days.height == 0:
        return empty
    clusters = (
        days.lazy()
        .group_by("cluster")
        .agg(lo=pl.col("key").min() - w, hi=pl.col("key").max() + span)
        .sort("cluster")
        .with_columns(length=pl.col("hi") - pl.col("lo") + 1)
        .with_columns(offset=pl.col("length").cum_sum() - pl.col("length"))
        .collect()
    )
    size = int(clusters["length"].sum())
    pos = days["key"] - clusters["lo"].gather(days["cluster"]) + clusters["offset"].gather(
        days["cluster"]
    )
    counts = pl.zeros(size, pl.Int64, eager=True).scatter(pos, days["n"])
    # before[i] = episodes at grid positions < i (length size + 1).
    before = pl.concat([pl.Series([0], dtype=pl.Int64), counts.cum_sum()])

    grid = pl.DataFrame({"n": counts, "before": before[:-1]})
    # Anchors whose windows run off the end read null and do not qualify; they lie past their
    # cluster's last episode day, where the first window is empty anyway.
    weeks = [
        (pl.col("before").shift(-w * (i + 1)) - pl.col("before").shift(-w * i)).alias(f"week_{i}")
        for i in range(k)
    ]
    grid = (
        grid.lazy()
        .with_row_index("pos")
        .with_columns(pl.col("pos").cast(pl.Int64))
        .with_columns(weeks)
    )
    qualifying = (
        grid.filter(pl.all_horizontal(pl.col(f"week_{i}") >= m for i in range(k)))
        .select("pos", *[f"week_{i}" for i in range(k)])
        .with_columns(
            # Qualifying spans [pos, pos + span) merge when they overlap or touch. Spans never
            # reach another cluster's grid: each is padded by `span` empty days.
            period=(pl.col("pos") > (pl.col("pos") + span).cum_max().shift(1))
            .fill_null(True)
            .cum_sum()
        )
        .collect()
    )
    if qualifying.height == 0:
        return empty

    periods = qualifying.group_by("period").agg(
        start=pl.col("pos").min(), end=pl.col("pos").max() + span
    )
    # `pos` (grid positions of episode days) is sorted: find each period's first and last.
    periods = periods.with_columns(
        first=pos.gather(pos.search_sorted(periods["start"], side="left")),
        last=pos.gather(pos.search_sorted(periods["end"], side="left") - 1),
        episodes=before.gather(periods["end"]) - before.gather(periods["start"]),
    )
    # Evidence anchor: the latest qualifying day on or before the period's first episode.
    anchors = (
        qualifying.join(periods.select("period", "first"), on="period")
        .filter(pl.col("pos") <= pl.col("first"))
        .sort("pos")
        .group_by("period")
        .last()
        .select("period", anchor="pos", *[f"week_{i}" for i in range(k)])
    )
    periods = periods.join(anchors, on="period")

    def key_of(pos_col: str) -> pl.Series:
        """Subject-day key of grid positions."""
        idx = clusters["offset"].search_sorted(periods[pos_col], side="right") - 1
        return periods[pos_col] - clusters["offset"].gather(idx) + clusters["lo"].gather(idx)

    def day_of(key: pl.Series, name: str) -> pl.Series:
        return ((key % _BLOCK) - _DAY_OFFSET).cast(pl.Int32).cast(pl.Date).alias(name)

    first_key = key_of("first").alias("key")
    located = pl.DataFrame(
        [
            first_key,
            day_of(first_key, "first_day"),
            day_of(key_of("last"), "last_day"),
            day_of(key_of("anchor"), "anchor_day"),
            periods["episodes"],
            *[periods[f"week_{i}"] for i in range(k)],
        ]
    )
    first_episodes = (
        with_episode_ids(episodes.lazy().join(located.lazy().select("key"), on="key"))
        .sort("started_at", "episode_id")
        .group_by("key")
        .first()
        .select("key", "episode_id", "subject_id", "started_at", "muscle_group")
    )

    def iso(expr: pl.Expr) -> pl.Expr:
        return expr.dt.strftime("%Y-%m-%d")

    return (
        located.lazy()
        .join(first_episodes, on="key")
        .select(
            "episode_id",
            "subject_id",
            "started_at",
            "muscle_group",
            pl.concat_str(
                [
                    pl.lit(f"weeks={k}; episodes_per_week="),
                    pl.concat_str([pl.col(f"week_{i}") for i in range(k)], separator=","),
                    pl.lit("; weeks_from="),
                    iso(pl.col("anchor_day")),
                    pl.lit(".."),
                    iso(pl.col("anchor_day") + pl.duration(days=span - 1)),
                    pl.lit("; period="),
                    iso(pl.col("first_day")),
                    pl.lit(".."),
                    iso(pl.col("last_day")),
                    pl.lit("; episodes_in_period="),
                    pl.col("episodes"),
                ]
            ).alias("evidence"),
        )
        .collect()
    )
