"""Red flags one bucket of whole subjects at a time, on the run's executor.

Every rule reads one episode, except ``frequent``, which reads one subject's episodes: so a bucket
of whole subjects (``pipeline.execution``) holds everything any rule needs, and ``evaluate`` on
one bucket is a pure function whose results only need concatenating. The merge restores the
orders ``RedFlagResult`` documents (flags by subject, then as within the subject; not-recorded by
rule order then subject; the per-subject summary recomputed from the merged flags), so the output
equals ``evaluate`` on the whole table.
"""

from __future__ import annotations

import polars as pl

from pipeline import execution
from pipeline.redflags.evaluate import RedFlagResult, _subject_flags, evaluate
from pipeline.redflags.rules import RuleSet

#: Episodes per bucket the red-flag pass aims at (a few columns each: small).
EPISODES_PER_BUCKET = 2_000_000


def evaluate_bucket(episodes: pl.DataFrame, rules: RuleSet) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The flags and not-recorded rows of one bucket of whole subjects."""
    result = evaluate(episodes.lazy(), rules)
    return result.flags, result.not_recorded


def evaluate_by_bucket(episodes: pl.LazyFrame, rules: RuleSet,
                       executor: execution.Executor | None = None,
                       n_buckets: int | None = None) -> RedFlagResult:
    """``evaluate`` mapped over subject buckets of ``episodes`` and merged."""
    ex = executor or execution.current()
    frame = episodes.collect()
    if n_buckets is None:
        n_buckets = max(execution.bucket_count(frame.height, EPISODES_PER_BUCKET),
                        min(ex.workers, max(1, frame.height // 50_000)))
    if n_buckets <= 1 or frame.height == 0:
        return evaluate(frame.lazy(), rules)
    parts = [p for p in execution.split_by_bucket(frame, "subject_id", n_buckets) if p.height]
    del frame
    results = ex.map(evaluate_bucket, ex.scatter(parts), rules)
    # Stable sorts: a subject's rows come from one bucket, already in their documented order.
    flags = pl.concat([r[0] for r in results]).sort("subject_id", maintain_order=True)
    rule_rank = {r.id: i for i, r in enumerate(rules)}
    not_recorded = (
        pl.concat([r[1] for r in results])
        .with_columns(pl.col("rule_id").replace_strict(rule_rank, return_dtype=pl.Int64)
                      .alias("_rule"))
        .sort("_rule", "subject_id", maintain_order=True)
        .drop("_rule")
    )
    return RedFlagResult(flags=flags, subject_flags=_subject_flags(flags, rules),
                         not_recorded=not_recorded, rules=rules)
