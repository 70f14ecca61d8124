"""The per-subject ``frequency`` rule: cramps on many days, week after week.

Definition (documented in ``rules.toml`` too). Dates are the local calendar dates of
``started_at``. With W = 7 days, K = ``consecutive_weeks`` and M = ``min_episodes_per_week``, a day
D *qualifies* when each of the K back-to-back windows [D, D+W), [D+W, D+2W), ..., [D+(K-1)W, D+KW)
holds at least M of the subject's episodes. Every calendar day is a possible D, so a pattern is
found wherever its weeks start. The spans [D, D+KW) of all qualifying days are merged when they
overlap or touch; each merged span is one *period* and gives one flag, attached to the period's
first episode, with evidence such as::

    weeks=4; episodes_per_week=3,5,4,3; weeks_from=2024-01-01..2024-01-28;
    period=2024-01-01..2024-02-03; episodes_in_period=19

``episodes_per_week`` and ``weeks_from`` describe the latest qualifying D on or before the period's
first episode; ``period`` runs from the period's first to its last episode.

Why it is exact without trying every day: a window count changes only when a window edge crosses
an episode date, so the set of qualifying days is constant between consecutive "breakpoints"
e + 1 - W*j (e an episode date, j = 0..K). Only breakpoints are evaluated, by binary search in the
sorted (subject, day) keys, which keeps the cost proportional to the number of episode days.
"""

from __future__ import annotations

import polars as pl

WEEK_DAYS = 7

# Each subject's days live in their own block of the integer key space: subject_rank * 2**32 +
# (days since 1970 + 2**31). Offsets of a few weeks never leave a block, so one global binary
# search counts episodes within a subject.
_BLOCK = 1 << 32
_DAY_OFFSET = 1 << 31

FLAG_COLUMNS = ("episode_id", "subject_id", "started_at", "evidence")


def frequency_flags(episodes: pl.DataFrame, *, min_episodes_per_week: int,
                    consecutive_weeks: int) -> pl.DataFrame:
    """One row per frequent-cramping period: episode_id, subject_id, started_at, evidence.

    ``episodes`` needs ``episode_id`` (non-null), ``subject_id`` and ``started_at``.
    """
    assert min_episodes_per_week >= 1 and consecutive_weeks >= 1
    m, k, w = min_episodes_per_week, consecutive_weeks, WEEK_DAYS
    empty = pl.DataFrame(schema={"episode_id": pl.String(), "subject_id": pl.String(),
                                 "started_at": pl.Datetime("us"), "evidence": pl.String()})

    # Subjects with fewer than m*k episodes can never qualify.
    eps = (
        episodes.lazy()
        .select("episode_id", "subject_id", "started_at")
        .filter(pl.len().over("subject_id") >= m * k)
        .with_columns(
            key=(
                pl.col("subject_id").rank("dense").cast(pl.Int64) * _BLOCK
                + pl.col("started_at").dt.date().cast(pl.Int32).cast(pl.Int64)
                + _DAY_OFFSET
            )
        )
        .sort("key", "started_at", "episode_id")
        .collect()
    )
    if eps.height == 0:
        return empty
    keys = eps["key"]

    def count_before(x: pl.Expr) -> pl.Expr:
        """Episodes of the subject before day key x (x stays in the subject's block)."""
        return pl.lit(keys).search_sorted(x, side="left").cast(pl.Int64)

    day_keys = keys.unique(maintain_order=True)
    cand = (
        pl.concat([(day_keys + 1 - w * j) for j in range(k + 1)])
        .unique()
        .sort()
        .to_frame("anchor")
    )
    weekly = [
        (count_before(pl.col("anchor") + w * (i + 1)) - count_before(pl.col("anchor") + w * i))
        .alias(f"week_{i}")
        for i in range(k)
    ]
    cand = cand.with_columns(weekly).with_columns(
        # The qualifying days run from this breakpoint to the day before the next one. The last
        # breakpoint of a subject (its last episode day + 1) never qualifies: its first week is empty.
        last_day=pl.col("anchor").shift(-1) - 1,
        qualifies=pl.all_horizontal(pl.col(f"week_{i}") >= m for i in range(k)),
    )
    q = cand.filter("qualifies").with_columns(span_end=pl.col("last_day") + w * k)
    if q.height == 0:
        return empty
    # Merge spans [anchor, span_end) that overlap or touch; subjects never merge because their
    # key blocks are 2**32 days apart.
    q = q.with_columns(
        period=(pl.col("anchor") > pl.col("span_end").cum_max().shift(1)).fill_null(True).cum_sum()
    )
    periods = q.group_by("period").agg(
        start=pl.col("anchor").min(),
        end=pl.col("span_end").max(),
    )
    periods = periods.with_columns(
        first_idx=count_before(pl.col("start")),
        end_idx=count_before(pl.col("end")),
    ).with_columns(first_key=pl.lit(keys).gather(pl.col("first_idx")))
    # Evidence anchor: the latest qualifying day on or before the period's first episode day.
    anchors = (
        q.join(periods.select("period", "first_key"), on="period")
        .filter(pl.col("anchor") <= pl.col("first_key"))
        .with_columns(day=pl.min_horizontal("last_day", "first_key"))
        .sort("period", "day")
        .group_by("period", maintain_order=True)
        .last()
        .select("period", "day", *[f"week_{i}" for i in range(k)])
    )
    periods = periods.join(anchors, on="period").sort("period")

    def key_date(expr: pl.Expr) -> pl.Expr:
        return ((expr % _BLOCK) - _DAY_OFFSET).cast(pl.Int32).cast(pl.Date).cast(pl.String)

    first_rows = eps.select("episode_id", "subject_id", "started_at")[periods["first_idx"]]
    last_rows = eps.select("started_at")[periods["end_idx"] - 1]
    out = pl.concat(
        [
            first_rows,
            periods.select(
                pl.concat_str(
                    [
                        pl.lit(f"weeks={k}; episodes_per_week="),
                        pl.concat_str([pl.col(f"week_{i}") for i in range(k)], separator=","),
                        pl.lit("; weeks_from="),
                        key_date(pl.col("day")),
                        pl.lit(".."),
                        key_date(pl.col("day") + (w * k - 1)),
                        pl.lit("; period="),
                        key_date(pl.col("first_key")),
                        pl.lit(".."),
                    ]
                ).alias("head"),
                (pl.col("end_idx") - pl.col("first_idx")).alias("n"),
            ),
            last_rows.select(pl.col("started_at").dt.date().cast(pl.String).alias("last")),
        ],
        how="horizontal",
    )
    return out.select(
        "episode_id",
        "subject_id",
        "started_at",
        pl.concat_str(
            [pl.col("head"), pl.col("last"), pl.lit("; episodes_in_period="), pl.col("n")]
        ).alias("evidence"),
    )
