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
from pipeline.ingest.accepted import AcceptedTable, Sink, WrittenPart
from pipeline.ingest.dedupe import (ORDER, Decisions, combine, crosses_subjects, primary_present,
                                    resolve_across, resolve_bucket)
from pipeline.ingest.validate import QUARANTINE_COLUMNS, empty_quarantine
from pipeline.schema import SOURCE_FILE, SOURCE_LINE, TABLES, Table
from pipeline.ingest.staging import Staging
from pipeline.store import Admission, Store, now_utc

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

    #: Every row accepted (admitted held rows first), as written by the sink, by bucket.
    accepted: AcceptedTable
    #: This run's quarantine rows (unknown subjects, conflicts among the new rows).
    quarantine: list[pl.DataFrame]
    #: This run's duplicates as (source_file, count); admitted held rows are not counted here.
    duplicates: pl.DataFrame
    admitted: Admitted
    #: Every row now held (None: unchanged).
    held: pl.DataFrame | None
    #: For the subjects table: the accepted subject ids of each bucket.
    subject_ids: list[pl.Series] | None = None


def resolve_with_held(table: Table, staging: Staging, offsets: dict[int, int], store: Store | None,
                      known_subjects: list[pl.Series] | None, content: list[str],
                      schema: dict[str, pl.DataType], files: tuple[str, ...],
                      sink: Sink) -> TableOutcome:
    """Split off the rows of unknown subjects (held), add the held rows whose subject is now
    accepted (before the new rows), resolve duplicates and conflicts against the store, and
    hand each bucket's accepted rows to ``sink``.

    The new rows are the table's validated pieces in ``staging``, by subject bucket
    (``offsets``: piece -> the number of new rows before it, in file order; ``files``: the
    files they came from, in order). Every check on subject keys runs per subject bucket: a
    bucket's new rows are compared with the bucket's accepted subjects (``known_subjects[b]``;
    None for the subjects table itself) and with the bucket's stored rows
    (``Store.read_bucket``), so the memory a check needs is bounded by a bucket. A key two
    subjects can share (``episode_id``) is checked across buckets on the narrow key column
    (``dedupe.resolve_across``); the table's buckets are then read a second time to write them.
    The result equals one check of the whole table: a key group never spans two buckets, and
    ``ORDER`` keeps "earlier" as in file order.
    """
    n_buckets = staging.n_buckets
    schema = {**schema, ORDER: pl.Int64}
    candidates, still_held, held = pl.DataFrame(schema=schema), None, None
    if known_subjects is not None and store is not None:
        still_held = store.read_held(table.name).collect()
        if still_held.height:
            candidates, still_held = split_known(still_held, pl.concat(known_subjects))
            candidates = align(candidates, schema).with_columns(
                pl.int_range(0, pl.len(), dtype=pl.Int64).alias(ORDER))
    n = candidates.height
    # Number the new rows after the admitted held rows, in file order.
    offsets = {piece: n + offset for piece, offset in offsets.items()}
    admissible = ([candidates] if n_buckets == 1 else
                  split_by_bucket(candidates, "subject_id", n_buckets))
    crosses = crosses_subjects(table)
    within = ~primary_present(table) if crosses else None

    def is_known(b: int) -> pl.Expr:
        return pl.col("subject_id").is_in(known_subjects[b].implode())

    def rows_of(b: int) -> pl.DataFrame:
        new = staging.bucket(table.name, b, offsets, ORDER, schema)
        return pl.concat([admissible[b], new], how="vertical_relaxed") if admissible[b].height \
            else new

    def known_rows(b: int) -> pl.LazyFrame:
        """The bucket's rows of accepted subjects, lazily (for the key column alone)."""
        rows = pl.concat([admissible[b].lazy(),
                          staging.scan(table.name, b, offsets, ORDER, schema)],
                         how="vertical_relaxed")
        return rows.filter(is_known(b)) if known_subjects is not None else rows

    def write(b: int, rows: pl.DataFrame, dropped: pl.Series) -> WrittenPart:
        if dropped.len():
            mask = rows.get_column(ORDER).is_in(dropped.implode())
            if mask.any():
                rows = rows.filter(~mask)
        return sink.write(table.name, b, rows, ORDER, n)

    def check(b: int) -> tuple[pl.DataFrame | None, Decisions | None, WrittenPart | None,
                               pl.Series | None]:
        """One bucket: its rows of unknown subjects, its decisions and (for a table whose keys
        hold ``subject_id``) its accepted rows, written."""
        rows = rows_of(b)
        unknown = None
        if known_subjects is not None and rows.height:
            known = rows.select(is_known(b)).to_series()
            if not known.all():
                unknown = rows.filter(~known)
                rows = rows.filter(known)
        decided = None
        if not crosses or table.fallback_key:
            stored = _stored_bucket(store, table.name, b, n_buckets) if rows.height else None
            decided = resolve_bucket(table, rows, stored, content, rows=within)
        part = ids = None
        if not crosses:
            part = write(b, rows, decided.dropped)
            if known_subjects is None:  # the subjects table: its accepted ids, for the others
                kept = rows.get_column(ORDER).is_in(decided.dropped.implode()).not_()
                ids = rows.get_column("subject_id").filter(kept)
        return unknown, decided, part, ids

    # Buckets on every core (polars releases the GIL); results in bucket order.
    with ThreadPoolExecutor(max(1, min(cores(), n_buckets))) as pool:
        checked = list(pool.map(check, range(n_buckets)))
        unknown = [u for u, _, _, _ in checked if u is not None]
        decisions = [d for _, d, _, _ in checked if d is not None]
        parts = [p for _, _, p, _ in checked if p is not None]
        subject_ids = [i for _, _, _, i in checked] if known_subjects is None else None
        del checked
        if crosses:
            stored = store.read(table.name) if store is not None else None
            decisions.append(resolve_across(table, [known_rows(b) for b in range(n_buckets)],
                                            stored, content))
        decided = combine(decisions)
        if crosses:  # read each bucket again, now that the decisions across buckets are known
            def accept(b: int) -> WrittenPart:
                rows = rows_of(b)
                if known_subjects is not None:
                    rows = rows.filter(is_known(b))
                return write(b, rows, decided.dropped)

            parts = list(pool.map(accept, range(n_buckets)))
    accepted = AcceptedTable(table.name, {c: d for c, d in schema.items() if c != ORDER}, files,
                             [p for p in parts if p.rows])
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
    return TableOutcome(accepted, quarantine, duplicates, admitted, held, subject_ids)


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
