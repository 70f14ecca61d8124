"""Is anything usable left after ingest? Say so where the cause is, not three stages later.

When every row of a table is quarantined (say a garbage ``started_at`` in every episode), the later
stages only see an empty table and would report a consequence ("no episodes fall on logged days").
:func:`check_usable` runs right after ingest and names the cause instead: the table, how many rows
were read, the top quarantine reasons with the columns they hit, and ``quarantine.csv``. It also
refuses a custom factor declared in ``dataset.toml`` whose column no ``daily`` file has (a typo
would otherwise silently drop the factor from the models).

The counts that matter are the store's (with ``--store`` or ``cramp report`` this run may add
nothing new and still have a usable store).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.errors import UserError

#: Tables the job cannot do without (``injuries`` is optional: an empty one means none logged).
REQUIRED = ("subjects", "daily", "episodes")
#: How many (column, reason) pairs a message names.
TOP_REASONS = 3


def _stored_accepted(store) -> dict[str, int]:
    totals: dict[str, int] = {}
    for f in store.manifest.files:
        totals[f.table] = totals.get(f.table, 0) + f.accepted
    return totals


def top_reasons(quarantine: pl.DataFrame, table: str, n: int = TOP_REASONS) -> str:
    """``started_at: type 3,110; pain: out_of_range 12`` for one table's quarantined rows."""
    from pipeline.schema import REASONS

    rows = (quarantine.filter(pl.col("table") == table)
            .group_by("column", "reason").len()
            .sort(["len", "column", "reason"], descending=[True, False, False], nulls_last=True)
            .head(n).iter_rows())
    parts = []
    for column, reason, count in rows:
        meaning = REASONS.get(reason, "").rstrip(".").lower()
        where = f"{column}: " if column else ""
        parts.append(f"{where}{reason} ({meaning}) {count:,}" if meaning else
                     f"{where}{reason} {count:,}")
    return "; ".join(parts)


def check_usable(result, store, out_dir: Path) -> None:
    """Raise a ``UserError`` naming the cause when a required table has no accepted row in the
    store, or a declared custom factor's column is in no daily file."""
    accepted = _stored_accepted(store)
    quarantine_csv = Path(out_dir) / "quarantine.csv"
    for table in REQUIRED:
        if accepted.get(table, 0):
            continue
        counts = result.summary["tables"].get(table, {})
        read = counts.get("read", 0)
        what = "subjects" if table == "subjects" else f"{table} rows"
        if read == 0:
            raise UserError(f"no {what} accepted: the {table} table has no data rows (only a "
                            "header, or no file); nothing to analyse")
        reasons = top_reasons(result.quarantine, table)
        duplicates = counts.get("duplicates", 0)
        raise UserError(
            f"no {what} accepted: all {read:,} {table} row(s) read were quarantined"
            + (f" or duplicates ({duplicates:,})" if duplicates else "")
            + (f". Top reasons: {reasons}" if reasons else "")
            + f". Every row, with its file, line and reason, is in {quarantine_csv}")
    _check_custom_columns(result, store)


def _check_custom_columns(result, store) -> None:
    factors = result.config.custom_factors
    if not factors:
        return
    found = result.columns_found.get("daily", set())
    daily = store.read("daily")
    for factor in factors:
        if factor.column in found:
            continue
        stored = daily.select(pl.col(factor.column).is_not_null().sum()).collect().item()
        if stored:
            continue  # in files ingested by earlier runs (an incremental store)
        columns = ", ".join(sorted(found)) or "none (no daily file was read in this run)"
        raise UserError(f"custom factor column {factor.column!r} (factor {factor.factor!r}) is in "
                        f"no daily file; columns found: {columns}",
                        path="dataset.toml", column=factor.column)
