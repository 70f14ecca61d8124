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
    return merge(ex.map(evaluate_bucket, ex.scatter(parts), rules), rules)


def evaluate_stored_bucket(bucket: int, store_path: str,
                           rules: RuleSet) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The flags and not-recorded rows of one bucket of a bucketed store, read where this runs
    (the store must be on a file system every worker can read)."""
    from pipeline.store import Store

    return evaluate_bucket(Store(store_path).read_bucket("episodes", bucket).collect(), rules)


def evaluate_store(store, rules: RuleSet,
                   executor: execution.Executor | None = None) -> RedFlagResult:
    """Red flags of a store: each worker reads and evaluates its own subject buckets of a
    bucketed store; a store of one bucket is split in memory (``evaluate_by_bucket``)."""
    n_buckets = store.manifest.n_buckets
    if n_buckets <= 1:
        return evaluate_by_bucket(store.read("episodes"), rules, executor)
    ex = executor or execution.current()
    return merge(ex.map(evaluate_stored_bucket, list(range(n_buckets)),
                        str(store.path.resolve()), rules), rules)


def merge(results: list[tuple[pl.DataFrame, pl.DataFrame]], rules: RuleSet) -> RedFlagResult:
    """One ``RedFlagResult`` from per-bucket results, in ``evaluate``'s documented orders."""
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
