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

from dataclasses import dataclass

import polars as pl

from pipeline.ingest.dedupe import Resolved, resolve
from pipeline.ingest.validate import QUARANTINE_COLUMNS, empty_quarantine
from pipeline.schema import SOURCE_FILE, SOURCE_LINE, TABLES, Table
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

    #: ``accepted`` is every row to store (admitted held rows first).
    resolved: Resolved
    #: This run's quarantine rows (unknown subjects, conflicts among the new rows).
    quarantine: list[pl.DataFrame]
    #: This run's duplicates as (source_file, count); admitted held rows are not counted here.
    duplicates: pl.DataFrame
    admitted: Admitted
    #: Every row now held (None: unchanged).
    held: pl.DataFrame | None


def resolve_with_held(table: Table, new: pl.DataFrame, store: Store | None,
                      known_subjects: pl.Series | None, content: list[str]) -> TableOutcome:
    """Split off the rows of unknown subjects (held), add the held rows whose subject is now
    accepted (before the new rows), and resolve duplicates and conflicts against the store.
    ``known_subjects`` is None for the subjects table itself."""
    candidates, held, quarantine = new.clear(), None, []
    if known_subjects is not None:
        new, unknown_rows = split_known(new, known_subjects)
        quarantine.append(unknown_subject_quarantine(table.name, unknown_rows))
        if store is not None:
            candidates, still_held = split_known(store.read_held(table.name).collect(),
                                                 known_subjects)
            candidates = align(candidates, new.schema)
            if candidates.height or unknown_rows.height:
                held = pl.concat([still_held, unknown_rows], how="diagonal_relaxed")
    combined = pl.concat([candidates, new]) if candidates.height else new
    stored = store.read(table.name) if store is not None and combined.height else None
    resolved = resolve(table, combined, stored, content)
    n = candidates.height
    admitted = admission_outcome(table.name, candidates, resolved.duplicate_index,
                                 resolved.quarantine, resolved.quarantine_index)
    if resolved.quarantine.height:
        quarantine.append(resolved.quarantine.filter((resolved.quarantine_index >= n).to_list()))
    duplicates = (combined.select(SOURCE_FILE)[resolved.duplicate_index.filter(
        resolved.duplicate_index >= n)].group_by(SOURCE_FILE).len("duplicates"))
    return TableOutcome(resolved, quarantine, duplicates, admitted, held)


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
