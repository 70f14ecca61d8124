"""What a store holds besides its accepted rows: rows held as ``unknown_subject`` and their later
admission, the stored quarantine, and the store's row accounting.

A diary row whose ``subject_id`` is not (yet) an accepted subject is quarantined with reason
``unknown_subject``, and kept whole in the store (``Store.read_held``), because the subjects export
that names the subject may arrive later. Every ingest re-checks the held rows: those whose subject
is now accepted are resolved together with the new rows, before them (they come from earlier
files), exactly as one fresh ingest of all the files would resolve them. So an incremental store
ends as a fresh full ingest would; each admission is counted and recorded (``store.Admission``).

The quarantine a run writes (``quarantine.csv``) and the store totals in ``summary.json`` are read
back from the store, so a run killed after its commit is described in full by the next run.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl

from pipeline.execution import cores, split_by_bucket
from pipeline.ingest.dedupe import (ORDER, Decisions, combine, crosses_subjects, primary_present,
                                    resolve_across, resolve_bucket)
from pipeline.ingest.validate import QUARANTINE_COLUMNS, empty_quarantine
from pipeline.schema import SOURCE_FILE, SOURCE_LINE, TABLES, Table
from pipeline.store import Admission, Bucketed, Store, now_utc

UNKNOWN_SUBJECT = "unknown_subject"
_UNKNOWN_MESSAGE = "this subject_id does not appear in the subjects table"
_SORT = ["table", "source_file", "line", "column", "reason"]


def unknown_subject_quarantine(table: str, rows: pl.DataFrame) -> pl.DataFrame:
    """The quarantine record of rows whose subject is not an accepted subject."""
    return rows.select(
        pl.lit(table).alias("table"),
        pl.col(SOURCE_FILE).alias("source_file"),
        pl.col(SOURCE_LINE).alias("line"),
        pl.lit("subject_id").alias("column"),
        pl.col("subject_id").alias("value"),
        pl.lit(UNKNOWN_SUBJECT).alias("reason"),
        pl.lit(_UNKNOWN_MESSAGE).alias("message"),
    ).select(QUARANTINE_COLUMNS)


def split_known(rows: pl.DataFrame, known: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(rows of accepted subjects, rows of unknown subjects)``."""
    is_known = pl.col("subject_id").is_in(known.implode())
    return rows.filter(is_known), rows.filter(~is_known)


def align(frame: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """``frame`` with exactly ``schema``'s columns (a missing custom column is null)."""
    return frame.select((pl.col(c) if c in frame.columns else pl.lit(None)).cast(d).alias(c)
                        for c, d in schema.items())


@dataclass(frozen=True)
class Admitted:
    """Outcome for the held rows that were resolved with a run's new rows."""

    #: One record per earlier file whose held rows were resolved.
    admissions: tuple[Admission, ...]
    #: Quarantine rows (reason ``conflict``) of held rows that conflicted.
    quarantine: pl.DataFrame
    #: Held rows now accepted.
    accepted: int


def admission_outcome(table: str, candidates: pl.DataFrame, duplicate_index: pl.Series,
                      quarantine: pl.DataFrame, quarantine_index: pl.Series) -> Admitted:
    """Count, per earlier file, what became of the held ``candidates`` (rows ``0..n-1`` of the
    frame given to ``dedupe.resolve``; ``*_index`` are its row numbers)."""
    n = candidates.height
    if n == 0:
        return Admitted((), empty_quarantine(), 0)
    outcome = pl.Series(["admitted"] * n)
    duplicate = duplicate_index.filter(duplicate_index < n)
    conflict_mask = quarantine_index < n
    conflict = quarantine_index.filter(conflict_mask)
    outcome = outcome.scatter(duplicate, "duplicate").scatter(conflict, "conflict")
    counts = (candidates.select(SOURCE_FILE).with_columns(outcome.alias("__outcome"))
              .group_by(SOURCE_FILE).agg(
                  (pl.col("__outcome") == kind).sum().alias(kind)
                  for kind in ("admitted", "duplicate", "conflict"))
              .sort(SOURCE_FILE))
    at = now_utc()
    admissions = tuple(Admission(table=table, source_file=f, admitted=a, duplicates=d,
                                 conflicts=c, admitted_at=at)
                       for f, a, d, c in counts.iter_rows())
    return Admitted(admissions, quarantine.filter(conflict_mask.to_list()) if quarantine.height
                    else empty_quarantine(), int((outcome == "admitted").sum()))


@dataclass(frozen=True)
class TableOutcome:
    """One table's new rows resolved against the store, with the held rows now admissible."""

    #: Every row to store (admitted held rows first), by subject bucket, with ``ORDER``.
    accepted: Bucketed
    #: This run's quarantine rows (unknown subjects, conflicts among the new rows).
    quarantine: list[pl.DataFrame]
    #: This run's duplicates as (source_file, count); admitted held rows are not counted here.
    duplicates: pl.DataFrame
    admitted: Admitted
    #: Every row now held (None: unchanged).
    held: pl.DataFrame | None


def resolve_with_held(table: Table, new: list[pl.DataFrame], store: Store | None,
                      known_subjects: list[pl.Series] | None, content: list[str],
                      n_buckets: int, schema: dict[str, pl.DataType]) -> TableOutcome:
    """Split off the rows of unknown subjects (held), add the held rows whose subject is now
    accepted (before the new rows), and resolve duplicates and conflicts against the store.

    Every check on subject keys runs per subject bucket: a bucket's new rows are compared with
    the bucket's accepted subjects (``known_subjects[b]``; None for the subjects table itself)
    and with the bucket's stored rows (``Store.read_bucket``), so the memory a check needs is
    bounded by a bucket. A key two subjects can share (``episode_id``) is checked across buckets
    on the narrow key column (``dedupe.resolve_across``). ``new`` are the validated pieces of the
    table's files, in file order, with ``schema`` (the list is emptied as they are routed). The
    result equals one check of the whole table: a key group never spans two buckets, and
    ``ORDER`` keeps "earlier" as in file order.
    """
    schema = {**schema, ORDER: pl.Int64}
    candidates, still_held, held = pl.DataFrame(schema=schema), None, None
    if known_subjects is not None and store is not None:
        still_held = store.read_held(table.name).collect()
        if still_held.height:
            candidates, still_held = split_known(still_held, pl.concat(known_subjects))
            candidates = align(candidates, schema).with_columns(
                pl.int_range(0, pl.len(), dtype=pl.Int64).alias(ORDER))
    n = candidates.height
    # Number the new rows after the admitted held rows, in file order; route them to buckets.
    by_bucket: list[list[pl.DataFrame]] = [[] for _ in range(n_buckets)]

    def route(rows: pl.DataFrame) -> list[pl.DataFrame]:
        return [rows] if n_buckets == 1 else split_by_bucket(rows, "subject_id", n_buckets)

    def numbered():
        offset = n
        while new:  # consumed piece by piece: a piece is freed once routed
            piece = new.pop(0)
            yield piece.with_columns(
                pl.int_range(offset, offset + pl.len(), dtype=pl.Int64).alias(ORDER))
            offset += piece.height

    crosses = crosses_subjects(table)
    within = ~primary_present(table) if crosses else None

    def check(b: int) -> tuple[pl.DataFrame, pl.DataFrame | None, Decisions | None]:
        """One bucket: (its rows of accepted subjects, its rows of unknown ones, decisions)."""
        rows = pl.concat(by_bucket[b], how="vertical_relaxed") if by_bucket[b] \
            else pl.DataFrame(schema=schema)
        by_bucket[b] = []
        unknown = None
        if known_subjects is not None and rows.height:
            is_known = rows.get_column("subject_id").is_in(known_subjects[b].implode())
            if not is_known.all():
                unknown = rows.filter(~is_known)
                rows = rows.filter(is_known)
        decided = None
        if not crosses or table.fallback_key:
            stored = _stored_bucket(store, table.name, b, n_buckets) if rows.height else None
            decided = resolve_bucket(table, rows, stored, content, rows=within)
        return rows, unknown, decided

    # Buckets on every core (polars releases the GIL); results in bucket order.
    with ThreadPoolExecutor(max(1, min(cores(), n_buckets))) as pool:
        for parts in [route(candidates), *pool.map(route, numbered())]:
            for b, part in enumerate(parts):
                if part.height:
                    by_bucket[b].append(part)
        checked = list(pool.map(check, range(n_buckets)))
    combined = [rows for rows, _, _ in checked]
    unknown = [u for _, u, _ in checked if u is not None]
    decisions = [d for _, _, d in checked if d is not None]
    del checked
    if crosses and any(f.height for f in combined):
        stored = store.read(table.name) if store is not None else None
        decisions.append(resolve_across(table, combined, stored, content))
    decided = combine(decisions)
    dropped = decided.dropped.implode()

    def keep(rows: pl.DataFrame) -> pl.DataFrame:
        if not decided.dropped.len():
            return rows
        mask = rows.get_column(ORDER).is_in(dropped)
        return rows.filter(~mask) if mask.any() else rows

    accepted = Bucketed(n_buckets, tuple(keep(f) for f in combined), order=ORDER)
    del combined
    quarantine = []
    if known_subjects is not None:
        unknown_rows = (pl.concat(unknown).sort(ORDER).drop(ORDER) if unknown
                        else pl.DataFrame(schema=schema).drop(ORDER))
        quarantine.append(unknown_subject_quarantine(table.name, unknown_rows))
        if still_held is not None and (n or unknown_rows.height):
            held = pl.concat([still_held, unknown_rows], how="diagonal_relaxed")
    conflicts = decided.quarantine
    admitted = admission_outcome(table.name, candidates.drop(ORDER), decided.duplicates[ORDER],
                                 conflicts.select(QUARANTINE_COLUMNS), conflicts[ORDER])
    if conflicts.height:
        quarantine.append(conflicts.filter(pl.col(ORDER) >= n).select(QUARANTINE_COLUMNS))
    duplicates = (decided.duplicates.filter(pl.col(ORDER) >= n)
                  .group_by(SOURCE_FILE).len("duplicates"))
    return TableOutcome(accepted, quarantine, duplicates, admitted, held)


def _stored_bucket(store: Store | None, table: str, bucket: int,
                   n_buckets: int) -> pl.LazyFrame | None:
    if store is None or not store.manifest.parts.get(table):
        return None
    return store.read_bucket(table, bucket, n_buckets)


def stored_quarantine(store: Store) -> pl.DataFrame:
    """Every quarantined row of every file the store holds: the committed quarantine, plus the
    rows still held as ``unknown_subject``; sorted like a run's quarantine."""
    parts = [store.read_quarantine().collect()]
    for table in TABLES:
        if table != "subjects":
            parts.append(unknown_subject_quarantine(table, store.read_held(table).collect()))
    return (pl.concat(parts, how="vertical_relaxed").select(QUARANTINE_COLUMNS)
            .sort(_SORT, nulls_last=True))


def store_totals(store: Store, quarantine: pl.DataFrame | None = None) -> dict[str, dict]:
    """Per table, every file the store holds (this run's and earlier ones): files, rows read,
    accepted, quarantined, duplicates, held rows admitted later, and quarantined rows by reason.
    ``summary.tables`` counts only what this run read; with an incremental store (``--store``,
    ``cramp report``) the two differ. Admissions move rows from quarantined to accepted (or to
    duplicates), so ``rows == accepted + quarantined + duplicates`` holds at every commit."""
    manifest = store.manifest
    if quarantine is None:
        quarantine = stored_quarantine(store)
    totals: dict[str, dict] = {}

    def entry(table: str) -> dict:
        return totals.setdefault(table, {"files": 0, "rows": 0, "accepted": 0, "quarantined": 0,
                                         "duplicates": 0, "admitted": 0})

    for f in manifest.files:
        t = entry(f.table)
        t["files"] += 1
        t["rows"] += f.rows
        t["accepted"] += f.accepted
        t["quarantined"] += f.quarantined
        t["duplicates"] += f.duplicates
    for a in manifest.admissions:
        t = entry(a.table)
        t["admitted"] += a.admitted
        t["accepted"] += a.admitted
        t["duplicates"] += a.duplicates
        t["quarantined"] -= a.admitted + a.duplicates
    by_reason = quarantine.group_by("table", "reason").len().sort("table", "reason")
    for table, reason, n in by_reason.iter_rows():
        entry(table).setdefault("quarantined_by_reason", {})[reason] = int(n)
    for t in totals.values():
        t.setdefault("quarantined_by_reason", {})
    return dict(sorted(totals.items()))
