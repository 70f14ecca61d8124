"""Cross-row checks: unknown subjects, exact duplicates and key conflicts.

Rows that passed row-level validation are compared with each other and with the rows already
in the store (which come first: stored rows are never changed by a later ingest).

* ``unknown_subject`` (``stored.split_known``): the row's ``subject_id`` is not an accepted
  subject (stored or new); such rows are held in the store until their subject arrives.
* ``conflict``: rows sharing the table's key (``schema.Table.key``; ``fallback_key`` for rows
  whose key is null) with different content. Every new row in such a group is quarantined; a
  stored row stays stored, so a new file cannot silently change what earlier files said.
* duplicates: a new row identical in every contract column to an earlier row (stored, or earlier
  in file order) with no conflict in its group is counted once as a duplicate and not stored again.

Content is compared on typed values (``yes`` and ``1`` are the same boolean), never on provenance.

The checks run one subject bucket at a time (``resolve_bucket``, driven by
``stored.resolve_with_held``): a key that holds ``subject_id`` never spans two buckets, so a
bucket's new rows need only that bucket's stored rows. A key that two subjects can share
(``episode_id``) is checked across buckets on the narrow key column alone (``resolve_across``):
only rows whose key repeats somewhere are compared whole. Each row carries ``ORDER``, its place
in file order, so "earlier" means the same in every bucket as in one pass over the whole table,
and the decisions are the same whatever the number of buckets (``tests/test_ingest_buckets.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.ingest.validate import empty_quarantine
from pipeline.schema import SOURCE_FILE, SOURCE_LINE, Table

_NEW = "__new"
_HASH = "__content_hash"


#: Each row's place in the table's processing order (held rows admitted now first, then the new
#: rows in file order): what "earlier" means for a duplicate, whatever bucket the row is in.
ORDER = "__order"


@dataclass(frozen=True)
class Decisions:
    """What the cross-row checks decided for some new rows, each named by its ``ORDER``."""

    #: Rows not to store: duplicates and conflicts.
    dropped: pl.Series
    #: The exact duplicates: ``ORDER``, ``source_file``.
    duplicates: pl.DataFrame
    #: Conflicting rows: ``QUARANTINE_COLUMNS`` and ``ORDER``, in ``ORDER``.
    quarantine: pl.DataFrame


def no_decisions() -> Decisions:
    return Decisions(pl.Series(ORDER, [], dtype=pl.Int64),
                     pl.DataFrame(schema={ORDER: pl.Int64, SOURCE_FILE: pl.String}),
                     empty_quarantine().with_columns(pl.lit(None, dtype=pl.Int64).alias(ORDER)))


def combine(parts: list[Decisions]) -> Decisions:
    """The decisions of disjoint sets of key groups (buckets), as if taken on the whole table."""
    if not parts:
        return no_decisions()
    return Decisions(pl.concat([p.dropped for p in parts]).sort(),
                     pl.concat([p.duplicates for p in parts]).sort(ORDER),
                     pl.concat([p.quarantine for p in parts]).sort(ORDER))


def key_columns(table: Table) -> list[pl.Expr]:
    """Expressions giving each row's key; rows with a null primary key use the fallback key."""
    if not table.fallback_key:
        return [pl.col(c) for c in table.key]
    primary_null = pl.any_horizontal([pl.col(c).is_null() for c in table.key])
    exprs = [pl.when(~primary_null).then(pl.col(c)).alias(f"__k_{c}") for c in table.key]
    exprs += [pl.when(primary_null).then(pl.col(c)).alias(f"__kf_{c}")
              for c in table.fallback_key]
    return exprs


def crosses_subjects(table: Table) -> bool:
    """Whether two subjects' rows can share a key (``episode_id``): then rows with a primary key
    are checked across buckets, on the narrow key column alone (:func:`resolve_across`); rows
    keyed by the fallback key (which holds ``subject_id``) are checked within their bucket."""
    if "subject_id" in table.key:
        return False
    assert not table.fallback_key or "subject_id" in table.fallback_key, table.name
    return True


def primary_present(table: Table) -> pl.Expr:
    return pl.all_horizontal([pl.col(c).is_not_null() for c in table.key])


def aligned(stored: pl.LazyFrame, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    """Stored rows with the new rows' columns and dtypes (a custom column declared since the
    stored rows were written is null in them)."""
    present = stored.collect_schema().names()
    return stored.select((pl.col(c) if c in present else pl.lit(None)).cast(dtype).alias(c)
                         for c, dtype in schema.items() if c != ORDER)


def _content_hash(schema: dict[str, pl.DataType], content: list[str]) -> pl.Expr:
    # -0.0 and 0.0 are the same value; so are 'yes' and '1' (already parsed to True).
    return pl.struct([pl.col(c) + 0.0 if schema[c] == pl.Float64 else pl.col(c)
                      for c in content]).hash(seed=0).alias(_HASH)


def _narrow(table: Table, frame, schema: dict, content: list[str], is_new: bool):
    """Key, content hash and provenance: what the group decisions need of a row."""
    order = pl.col(ORDER) if is_new else pl.lit(None, dtype=pl.Int64).alias(ORDER)
    return frame.select(*key_columns(table), _content_hash(schema, content), SOURCE_FILE,
                        SOURCE_LINE, order, pl.lit(is_new).alias(_NEW))


def resolve_bucket(table: Table, new: pl.DataFrame, stored: pl.LazyFrame | None,
                   content: list[str], *, rows: pl.Expr | None = None) -> Decisions:
    """Duplicates and conflicts among the ``new`` rows of one bucket (all rows of some whole
    subjects; an ``ORDER`` column), given the ``stored`` rows of the same bucket (which come
    first). ``rows`` limits the check to some rows (those keyed by a key holding ``subject_id``).

    Works on narrow frames (key, content hash, provenance) so that comparing a big new export
    with a big store does not copy whole rows: the keys first, then the content of the few rows
    whose key repeats.
    """
    if rows is not None:
        new = new.filter(rows)
        stored = stored.filter(rows) if stored is not None else None
    if new.height == 0:
        return no_decisions()
    keys = key_columns(table)
    key_names = [k.meta.output_name() for k in keys]
    earlier = aligned(stored, new.schema) if stored is not None else None
    parts = [earlier.select(keys).collect()] if earlier is not None else []
    parts.append(new.select(keys))
    # Most keys are unique: find the few rows whose key hash repeats (a hash collision only adds
    # rows to this subset; the comparison inside it uses the real key values).
    shared = (pl.concat(parts).select(pl.struct(key_names).hash(seed=0).is_duplicated())
              .to_series())
    n_earlier = parts[0].height if earlier is not None else 0
    del parts
    if not shared.any():
        return no_decisions()
    group = []
    if earlier is not None and shared[:n_earlier].any():
        positions = shared[:n_earlier].arg_true()
        group.append(_narrow(table, earlier.with_row_index("__r")
                             .filter(pl.col("__r").is_in(positions.implode())),
                             new.schema, content, False).collect())
    group.append(_narrow(table, new.filter(shared[n_earlier:]), new.schema, content, True))
    return _decide(table, group, key_names)


def resolve_across(table: Table, new: list[pl.LazyFrame], stored: pl.LazyFrame | None,
                   content: list[str]) -> Decisions:
    """The rows of ``new`` (every bucket's, lazily, e.g. scans of the staged buckets; an
    ``ORDER`` column) whose primary key can be shared by two subjects (``episode_id``), checked
    across buckets: repeated keys are found on the narrow key column of the new and the stored
    rows alone; only the rows holding one of them (usually none) are then compared whole."""
    new = [f.lazy() for f in new]
    schema = dict(new[0].collect_schema())
    present = primary_present(table)
    frames = ([stored] if stored is not None else []) + new
    keys = [pl.col(c).cast(schema[c]) for c in table.key]
    key_hash = pl.struct(keys).hash(seed=0)
    # One 8-byte hash per row, one frame at a time (never every key string at once: 18M episode
    # ids are ~0.5 GB of text and as much again in a hash table). Sorted, equal neighbours are
    # the hashes that repeat; a collision only adds candidates, and the real keys decide below.
    hashes = np.concatenate([np.empty(0, np.uint64)] + [
        f.filter(present).select(key_hash).collect().to_series().to_numpy() for f in frames])
    hashes.sort()
    repeats = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    del hashes
    if repeats.size == 0:
        return no_decisions()
    candidates = pl.Series("__h", repeats).implode()
    repeated = (pl.concat([f.filter(present & key_hash.is_in(candidates)).select(keys)
                           for f in frames])
                .filter(pl.struct(table.key).is_duplicated()).unique().collect())
    if repeated.height == 0:
        return no_decisions()
    key_names = [k.meta.output_name() for k in key_columns(table)]

    def holding(frame):
        return frame.join(repeated.lazy(), on=list(table.key), how="semi")

    group = []
    if stored is not None:
        group.append(_narrow(table, holding(aligned(stored, schema)), schema, content, False)
                     .collect())
    new_rows = pl.concat([_narrow(table, holding(f.lazy()), schema, content, True)
                          for f in new]).collect()
    group.append(new_rows.sort(ORDER))
    return _decide(table, group, key_names)


def _decide(table: Table, group: list[pl.DataFrame], key_names: list[str]) -> Decisions:
    """The decisions for whole key groups: stored rows first, then new rows in ``ORDER``."""
    group = pl.concat(group).with_columns(
        (pl.col(_HASH).n_unique().over(key_names) > 1).alias("__conflict"),
        pl.struct([*key_names, _HASH]).is_first_distinct().alias("__first"),
    )
    new_group = group.filter(pl.col(_NEW))
    dropped = new_group.filter(pl.col("__conflict") | ~pl.col("__first")).get_column(ORDER)
    duplicates = new_group.filter(~pl.col("__conflict") & ~pl.col("__first")).select(
        ORDER, SOURCE_FILE)
    quarantine = _conflict_quarantine(table, group.filter(pl.col("__conflict")), key_names)
    return Decisions(dropped, duplicates, quarantine)


def _conflict_quarantine(table: Table, conflicts: pl.DataFrame,
                         key_names: list[str]) -> pl.DataFrame:
    if conflicts.height == 0:
        return no_decisions().quarantine
    location = pl.format("{} line {}", pl.col(SOURCE_FILE), pl.col(SOURCE_LINE))
    conflicts = conflicts.with_columns(location.alias("__loc")).with_columns(
        pl.col("__loc").min().over(key_names).alias("__lo"),
        pl.col("__loc").max().over(key_names).alias("__hi"),
        pl.len().over(key_names).alias("__n"),
    )
    other = pl.when(pl.col("__loc") == pl.col("__lo")).then(pl.col("__hi")).otherwise(
        pl.col("__lo"))
    uses_fallback = (pl.col(key_names[0]).is_null() if table.fallback_key
                     else pl.lit(False))
    primary = "+".join(table.key)
    fallback = "+".join(table.fallback_key)
    key_text = pl.concat_str([pl.col(k).cast(pl.String) for k in key_names], separator=", ",
                             ignore_nulls=True)
    stored_note = pl.when(pl.col("__stored_in_group")).then(
        pl.lit(" (the stored row is kept)")).otherwise(pl.lit(""))
    conflicts = conflicts.with_columns((~pl.col(_NEW)).any().over(key_names)
                                       .alias("__stored_in_group"))
    return conflicts.filter(pl.col(_NEW)).select(
        pl.lit(table.name).alias("table"),
        pl.col(SOURCE_FILE).alias("source_file"),
        pl.col(SOURCE_LINE).alias("line"),
        pl.when(uses_fallback).then(pl.lit(fallback)).otherwise(pl.lit(primary)).alias("column"),
        key_text.alias("value"),
        pl.lit("conflict").alias("reason"),
        pl.format("{} rows share this key with different content; see also {}{}",
                  pl.col("__n"), other, stored_note).alias("message"),
        pl.col(ORDER),
    )
