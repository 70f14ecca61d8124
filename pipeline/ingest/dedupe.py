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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from pipeline.ingest.validate import QUARANTINE_COLUMNS, empty_quarantine
from pipeline.schema import SOURCE_FILE, SOURCE_LINE, Table

_NEW = "__new"
_HASH = "__content_hash"
_KEY = "__key"


@dataclass(frozen=True)
class Resolved:
    accepted: pl.DataFrame
    quarantine: pl.DataFrame
    #: New rows that were exact duplicates, as (source_file, count) pairs.
    duplicates: pl.DataFrame
    #: Row numbers in ``new`` of the duplicates, and of each ``quarantine`` row (same order):
    #: a caller that put rows of two origins into ``new`` tells their outcomes apart by these.
    duplicate_index: pl.Series = field(default_factory=lambda: pl.Series([], dtype=pl.UInt32))
    quarantine_index: pl.Series = field(default_factory=lambda: pl.Series([], dtype=pl.UInt32))


def key_columns(table: Table) -> list[pl.Expr]:
    """Expressions giving each row's key; rows with a null primary key use the fallback key."""
    if not table.fallback_key:
        return [pl.col(c) for c in table.key]
    primary_null = pl.any_horizontal([pl.col(c).is_null() for c in table.key])
    exprs = [pl.when(~primary_null).then(pl.col(c)).alias(f"__k_{c}") for c in table.key]
    exprs += [pl.when(primary_null).then(pl.col(c)).alias(f"__kf_{c}")
              for c in table.fallback_key]
    return exprs


def resolve(table: Table, new: pl.DataFrame, stored: pl.LazyFrame | None,
            content: list[str]) -> Resolved:
    """Find duplicates and conflicts among ``new`` rows, given the ``stored`` rows.

    Works on narrow frames (key, content hash, provenance) so that comparing a big new export
    with a big store does not copy whole rows.
    """
    if new.height == 0:
        return Resolved(new, empty_quarantine(), _no_duplicates())
    keys = key_columns(table)
    key_names = [k.meta.output_name() for k in keys]
    earlier = None
    if stored is not None:
        # A custom column declared since the stored rows were written is null in them.
        present = stored.collect_schema().names()
        earlier = stored.select((pl.col(c) if c in present else pl.lit(None)).cast(dtype).alias(c)
                                for c, dtype in new.schema.items())
    parts = [earlier.select(keys).collect()] if earlier is not None else []
    parts.append(new.select(keys))
    # Most keys are unique: find the few rows whose key hash repeats (a hash collision only adds
    # rows to this subset; the comparison inside it uses the real key values).
    shared = (pl.concat(parts).select(pl.struct(key_names).hash(seed=0).is_duplicated())
              .to_series())
    n_earlier = parts[0].height if earlier is not None else 0
    del parts
    if not shared.any():
        return Resolved(new, empty_quarantine(), _no_duplicates())
    # -0.0 and 0.0 are the same value; so are 'yes' and '1' (already parsed to True).
    content_hash = pl.struct([pl.col(c) + 0.0 if new.schema[c] == pl.Float64 else pl.col(c)
                              for c in content]).hash(seed=0).alias(_HASH)

    def narrow(frame: pl.LazyFrame, is_new: bool) -> pl.LazyFrame:
        return frame.with_row_index("__i").select(
            *keys, content_hash, SOURCE_FILE, SOURCE_LINE, "__i", pl.lit(is_new).alias(_NEW))

    group_parts = []
    if earlier is not None:
        group_parts.append(narrow(earlier, False).collect().filter(shared[:n_earlier]))
    group_parts.append(narrow(new.lazy(), True).collect().filter(shared[n_earlier:]))
    group = pl.concat(group_parts).with_columns(
        (pl.col(_HASH).n_unique().over(key_names) > 1).alias("__conflict"),
        pl.struct([*key_names, _HASH]).is_first_distinct().alias("__first"),
    )
    new_group = group.filter(pl.col(_NEW))
    dropped = new_group.filter(pl.col("__conflict") | ~pl.col("__first"))["__i"]
    keep = pl.Series([True]).extend_constant(True, new.height - 1).scatter(dropped, False)
    accepted = new.filter(keep)
    duplicate_rows = new_group.filter(~pl.col("__conflict") & ~pl.col("__first"))
    duplicates = duplicate_rows.group_by(SOURCE_FILE).len("duplicates")
    conflicts = group.filter(pl.col("__conflict"))
    quarantine = _conflict_quarantine(table, conflicts, key_names)
    return Resolved(accepted, quarantine.select(QUARANTINE_COLUMNS), duplicates,
                    duplicate_rows["__i"], quarantine["__i"] if quarantine.height
                    else pl.Series([], dtype=pl.UInt32))


def _conflict_quarantine(table: Table, conflicts: pl.DataFrame,
                         key_names: list[str]) -> pl.DataFrame:
    if conflicts.height == 0:
        return empty_quarantine()
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
        pl.col("__i"),
    )


def _no_duplicates() -> pl.DataFrame:
    return pl.DataFrame(schema={SOURCE_FILE: pl.String, "duplicates": pl.UInt32})
