"""Check every episode against every rule: flags, per-subject summary and "not recorded" counts.

Policy (issue 3): every episode that meets a rule is listed, whatever the statistics say; nothing
here is suppressed, sampled or capped. A null in a field a rule reads never fires the rule, but an
episode where the rule did not fire and one of its fields was null is counted as *not recorded*
for that rule and subject, so an unanswered question is never read as a reassuring answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from pipeline import schema
from pipeline.episode_ids import with_episode_ids
from pipeline.redflags.frequency import frequency_flags
from pipeline.redflags.rules import RULE_COLUMNS, SEVERITIES, Rule, RuleSet

#: Columns of ``RedFlagResult.flags`` / ``red_flags.csv``.
FLAG_SCHEMA: dict[str, pl.DataType] = {
    "episode_id": pl.String(),
    "subject_id": pl.String(),
    "started_at": pl.Datetime("us"),
    "rule_id": pl.String(),
    "severity": pl.String(),
    "evidence": pl.String(),
}
#: Columns of ``RedFlagResult.not_recorded`` / ``red_flags_not_recorded.csv``.
NOT_RECORDED_SCHEMA: dict[str, pl.DataType] = {
    "rule_id": pl.String(),
    "severity": pl.String(),
    "subject_id": pl.String(),
    "n_episodes": pl.Int64(),
    "n_not_recorded": pl.Int64(),
    "missing_fields": pl.String(),
}
#: Leading columns of ``RedFlagResult.subject_flags``; one ``n_<rule_id>`` count per rule follows.
SUBJECT_FLAG_SCHEMA: dict[str, pl.DataType] = {
    "subject_id": pl.String(),
    "highest_severity": pl.String(),
    "total_flags": pl.Int64(),
    "first_flagged_date": pl.Date(),
    "last_flagged_date": pl.Date(),
}

_ID_COLUMNS = ("episode_id", *schema.EPISODES.fallback_key)


@dataclass(frozen=True)
class RedFlagResult:
    """The outcome of ``evaluate``; every frame is sorted deterministically.

    flags          one row per episode and rule that fired, by subject_id, started_at,
                   episode_id, then rule order in the rule file.
    subject_flags  one row per subject with any flag, red_flag subjects first, then by subject_id.
    not_recorded   one row per rule and subject with at least one episode the rule could not
                   assess, by rule order then subject_id.
    """

    flags: pl.DataFrame
    subject_flags: pl.DataFrame
    not_recorded: pl.DataFrame
    rules: RuleSet


def evaluate(episodes: pl.LazyFrame, rules: RuleSet) -> RedFlagResult:
    """Evaluate all ``rules`` on the stored episodes table (``Store.read("episodes")``).

    Episodes without an ``episode_id`` are given their stable derived id
    (``pipeline.episode_ids``).
    """
    needed = list(dict.fromkeys([*_ID_COLUMNS, *(c for r in rules for c in r.columns)]))
    _check_input(episodes, needed)
    df = episodes.select(needed).collect()

    flag_frames: list[pl.LazyFrame] = []
    missing_frames: list[pl.LazyFrame] = []
    for order, rule in enumerate(rules):
        if rule.kind == "frequency":
            flag_frames.append(_frequency(df, rule, order))
        else:
            flags, missing = _episode_rule(df.lazy(), rule, order)
            flag_frames.append(flags)
            missing_frames.append(missing)

    per_subject = df.lazy().group_by("subject_id").agg(n_episodes=pl.len().cast(pl.Int64))
    # Ids are derived for flagged episodes only: formatting a date-time is the costly part.
    # Sorting on strings is slow, so subjects sort by their rank in the sorted list of subject
    # ids (same order as sorting subject_id itself).
    subjects = df["subject_id"].unique().sort()
    flags_lf = (
        with_episode_ids(pl.concat(flag_frames))
        .with_columns(
            subject_order=pl.col("subject_id").replace_strict(
                subjects, pl.int_range(subjects.len(), eager=True)
            )
        )
        .sort("subject_order", "started_at", "episode_id", "rule_order")
    )
    missing_lf = (
        pl.concat(missing_frames).join(per_subject, on="subject_id", how="left")
        if missing_frames
        else pl.LazyFrame(schema={**NOT_RECORDED_SCHEMA, "rule_order": pl.Int64()})
    )
    missing_lf = missing_lf.sort("rule_order", "subject_id").select(list(NOT_RECORDED_SCHEMA))
    flags_df, not_recorded = pl.collect_all([flags_lf, missing_lf])
    flags_df = flags_df.select(list(FLAG_SCHEMA))
    return RedFlagResult(
        flags=flags_df,
        subject_flags=_subject_flags(flags_df, rules),
        not_recorded=not_recorded,
        rules=rules,
    )


def _check_input(episodes: pl.LazyFrame, needed: list[str]) -> None:
    """A missing or mistyped column is a bug upstream, never a silent skip."""
    have = episodes.collect_schema()
    for c in needed:
        if c not in have:
            raise ValueError(f"episodes has no column {c!r}; red-flag rules read it")
        if have[c] != RULE_COLUMNS[c]:
            raise ValueError(f"episodes column {c!r} is {have[c]}, expected {RULE_COLUMNS[c]} "
                             "(schema.EPISODES)")


def _episode_rule(lf: pl.LazyFrame, rule: Rule, order: int) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    clauses = [e.fill_null(False) for e in rule.clause_exprs()]
    clause_cols = rule.clause_columns()
    fired = pl.any_horizontal(clauses)
    flags = lf.filter(fired).select(
        "episode_id",
        "subject_id",
        "started_at",
        "muscle_group",
        pl.lit(rule.id).alias("rule_id"),
        pl.lit(rule.severity).alias("severity"),
        _evidence(rule, clauses, clause_cols).alias("evidence"),
        pl.lit(order, dtype=pl.Int64).alias("rule_order"),
    )
    unassessed = ~fired & pl.any_horizontal([pl.col(c).is_null() for c in rule.columns])
    counts = [pl.col(c).is_null().sum().cast(pl.Int64).alias(f"null_{c}") for c in rule.columns]
    missing = (
        lf.filter(unassessed)
        .group_by("subject_id")
        .agg(pl.len().cast(pl.Int64).alias("n_not_recorded"), *counts)
        .select(
            pl.lit(rule.id).alias("rule_id"),
            pl.lit(rule.severity).alias("severity"),
            "subject_id",
            "n_not_recorded",
            pl.concat_str(
                [
                    pl.when(pl.col(f"null_{c}") > 0).then(
                        pl.concat_str([pl.lit(f"{c}="), pl.col(f"null_{c}")])
                    )
                    for c in rule.columns
                ],
                separator="; ",
                ignore_nulls=True,
            ).alias("missing_fields"),
            pl.lit(order, dtype=pl.Int64).alias("rule_order"),
        )
    )
    return flags, missing


def _evidence(rule: Rule, clauses: list[pl.Expr], clause_cols) -> pl.Expr:
    """``col=value`` for each column of each clause that is true, e.g. ``pain=8``."""
    pieces = []
    for c in rule.columns:
        shown = pl.any_horizontal(
            [clause for clause, cols in zip(clauses, clause_cols) if c in cols]
        )
        pieces.append(pl.when(shown).then(pl.concat_str([pl.lit(f"{c}="), _value_text(c)])))
    return pl.concat_str(pieces, separator="; ", ignore_nulls=True)


def _value_text(column: str) -> pl.Expr:
    col = pl.col(column)
    if RULE_COLUMNS[column] == pl.Boolean():
        text = pl.when(col).then(pl.lit("true")).when(~col).then(pl.lit("false"))
    else:
        text = col.cast(pl.String)
    return text.fill_null(pl.lit("null"))


def _frequency(df: pl.DataFrame, rule: Rule, order: int) -> pl.LazyFrame:
    flags = frequency_flags(
        df.lazy(),
        min_episodes_per_week=int(rule.parameter("min_episodes_per_week")),
        consecutive_weeks=int(rule.parameter("consecutive_weeks")),
    )
    return flags.lazy().select(
        "episode_id",
        "subject_id",
        "started_at",
        "muscle_group",
        pl.lit(rule.id).alias("rule_id"),
        pl.lit(rule.severity).alias("severity"),
        "evidence",
        pl.lit(order, dtype=pl.Int64).alias("rule_order"),
    )


def _subject_flags(flags: pl.DataFrame, rules: RuleSet) -> pl.DataFrame:
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    out = (
        flags.lazy()
        .with_columns(
            pl.col("severity").replace_strict(rank, return_dtype=pl.Int64).alias("severity_rank")
        )
        .group_by("subject_id")
        .agg(
            pl.col("severity_rank").min().alias("severity_rank"),
            pl.len().cast(pl.Int64).alias("total_flags"),
            pl.col("started_at").min().dt.date().alias("first_flagged_date"),
            pl.col("started_at").max().dt.date().alias("last_flagged_date"),
            *[
                (pl.col("rule_id") == r.id).sum().cast(pl.Int64).alias(f"n_{r.id}")
                for r in rules
            ],
        )
        .with_columns(
            pl.col("severity_rank")
            .replace_strict({i: s for s, i in rank.items()}, return_dtype=pl.String)
            .alias("highest_severity")
        )
        .sort("severity_rank", "subject_id")
        .select(*SUBJECT_FLAG_SCHEMA, *[f"n_{r.id}" for r in rules])
        .collect()
    )
    return out
