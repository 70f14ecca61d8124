"""Validate a whole dataset directory and, for ``ingest``, append the accepted rows to a store.

Order matters: ``subjects`` first (the other tables' ``unknown_subject`` check needs the accepted
subjects), then ``daily``, ``injuries`` and ``episodes``. Every file is read and validated row by
row (``validate``) in pieces, on every core (a piece's rows do not depend on another's); each
validated piece is split by subject bucket and spilled to a staging directory
(``staging.Staging``) at once, so memory holds a few pieces, not the dataset. Then each table is
checked across rows and against the store (``dedupe``, ``stored``) one subject bucket at a time,
and each bucket's accepted rows are written as soon as they are known (``accepted``): peak memory
is bounded by a piece and a bucket. The bucket count must be known before the first piece is
routed: a store keeps its own; a new store's is chosen from the rows the files hold
(``read.estimate_rows``: a Parquet footer's row count, a text file's lines).
Nothing is written to the store until every file has been read and accepted as a whole, so a
refused file (identifier column, missing required column) leaves the store exactly as it was:
the staging directory is not part of the store and is removed whether the ingest succeeds or
fails, and parts written after the reading are listed only by the manifest that commits them
(and deleted if the ingest fails before it).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from pipeline.errors import UserError
from pipeline import progress as stages
from pipeline.dataset_config import DatasetConfig, load_dataset_config
from pipeline.ingest.accepted import (AcceptedRows, CountingSink, Sink, StoreSink,
                                      TemporarySink)
from pipeline.ingest.discover import TableFile, discover_tables, ignored_files
from pipeline.ingest.identifiers import find_identifier, mask_text
from pipeline.ingest.read import estimate_rows, read_bytes, read_table_pieces
from pipeline.ingest.staging import Staging
from pipeline.ingest.stored import (UNKNOWN_SUBJECT, resolve_with_held, store_totals,
                                    stored_quarantine)
from pipeline.ingest.validate import QUARANTINE_COLUMNS, empty_quarantine, validate_file
from pipeline.schema import CONTRACT_VERSION, PROVENANCE_SCHEMA, REASONS, SOURCE_FILE, TABLES, Column
from pipeline.execution import bucket_count, cores
from pipeline.store import Admission, Manifest, ManifestFile, Store, now_utc

#: Processing order: subjects first, so the others can be checked against them.
TABLE_ORDER = ("subjects", "daily", "injuries", "episodes")


@dataclass
class IngestResult:
    """What a validate or ingest run found. ``summary`` is what ``summary.json`` holds."""

    summary: dict
    #: ``table, source_file, line, column, value, reason, message``; values already masked.
    quarantine: pl.DataFrame
    #: New accepted rows per table, as stored (or as they would be, for ``validate``), in input
    #: order: an ``accepted.AcceptedRows``, which reads them from the parts written when asked
    #: (``.tables`` has them by subject bucket).
    accepted: Mapping[str, pl.DataFrame] = field(default_factory=dict)
    config: DatasetConfig = field(default_factory=DatasetConfig)
    #: Whether the rows were written to a store (False for ``validate_dataset``).
    stored: bool = False
    #: The subject buckets the rows were checked and written in (the store's, for an ingest).
    n_buckets: int = 1
    #: What the ingest commits besides ``accepted``: its quarantine (rows held as
    #: ``unknown_subject`` are in ``held`` instead), table -> every row now held, and the
    #: admissions of rows held earlier.
    new_quarantine: pl.DataFrame = field(default_factory=empty_quarantine)
    held: dict[str, pl.DataFrame] = field(default_factory=dict)
    admissions: tuple[Admission, ...] = ()
    #: After an ingest: every quarantined row of the store (what ``quarantine.csv`` holds).
    store_quarantine: pl.DataFrame | None = None
    #: After an ingest: rows stored per table (checked against ``store_totals``).
    store_rows: dict[str, int] = field(default_factory=dict)
    #: Per table, the (normalised) column names found in the files read (not in summary.json).
    columns_found: dict[str, set[str]] = field(default_factory=dict)


def table_columns(table: str, config: DatasetConfig) -> tuple[Column, ...]:
    """The contract columns of ``table``, plus the dataset's custom factors for ``daily``."""
    columns = TABLES[table].columns
    if table == "daily":
        columns = columns + tuple(f.as_column() for f in config.custom_factors)
    return columns


def validate_dataset(data_dir: Path, *, progress: bool = False,
                     keep_accepted: bool = True) -> IngestResult:
    """Read and validate every table of ``data_dir``; store nothing.

    The rows are staged in the system's temporary directory while they are checked. With
    ``keep_accepted`` the accepted rows are kept there (as Parquet) for ``result.accepted``
    until the result is dropped; without it (``cramp validate``) only their counts are.
    """
    sink = TemporarySink() if keep_accepted else CountingSink()
    try:
        return _run(Path(data_dir), store=None, progress=progress, sink=sink)
    except BaseException:
        sink.discard()
        raise


def ingest_dataset(data_dir: Path, store_dir: Path, *, progress: bool = False) -> IngestResult:
    """Validate ``data_dir`` and append its accepted rows to the store at ``store_dir``.

    A file whose sha256 is already in the store's manifest is skipped (reported with status
    ``skipped_already_ingested``); a new file's rows are checked for duplicates and conflicts
    against the stored rows as well as against each other.
    """
    store = Store(store_dir)
    # Refuse a missing or incomplete dataset before the store directory is created.
    load_dataset_config(Path(data_dir))
    discover_tables(Path(data_dir))
    check_not_inside(Path(data_dir), store.path, "the store (--store)")
    store.claim()
    created = not store.path.exists()
    try:
        with store.lock():
            store.mark()
            result = _ingest_locked(Path(data_dir), store, progress)
    except BaseException:
        if created:  # leave no empty store behind a refused ingest
            store.remove_if_empty()
        raise
    return result


def check_not_inside(data_dir: Path, directory: Path, what: str) -> None:
    """Refuse a dataset directory that is ``directory`` or lies inside it (``UserError``):
    cramp writes, rebuilds and removes what is there. Symbolic links are resolved first."""
    data, target = Path(data_dir).resolve(), Path(directory).resolve()
    if data == target or data.is_relative_to(target):
        raise UserError(f"the dataset directory lies inside {what}, {directory}, which cramp "
                        "writes and rebuilds; keep the dataset elsewhere", path=str(data_dir))


def _ingest_locked(data_dir: Path, store: Store, progress: bool) -> IngestResult:
    store.remove_orphans()  # what a killed ingest left: before this one writes anything
    sink = StoreSink(store)
    try:
        result = _run(data_dir, store=store, progress=progress, sink=sink)
        files = [
            ManifestFile(path=f["path"], table=f["table"], format=f["format"],
                         sha256=f["sha256"], rows=f["rows"], accepted=f["accepted"],
                         quarantined=f["quarantined"], duplicates=f["duplicates"],
                         ingested_at=now_utc())
            for f in result.summary["files"] if f["status"] == "ingested"
        ]
        if files or result.admissions:
            custom = {f.column: f.kind for f in result.config.custom_factors}
            parts = {t: a.names() for t, a in result.accepted.tables.items() if a.names()}
            with stages.stage("store accepted rows"):
                store.commit(parts, result.n_buckets, files, custom,
                             quarantine=result.new_quarantine, held=result.held,
                             admissions=result.admissions)
    except BaseException:
        sink.discard()
        raise
    result.stored = True
    result.store_quarantine = stored_quarantine(store)
    result.summary["store_totals"] = store_totals(store, result.store_quarantine)
    result.store_rows = {t: store.read(t).select(pl.len()).collect().item()
                         for t in result.summary["store_totals"]}
    return result


@dataclass
class _FileRead:
    """One file read and validated (on a reader thread)."""

    entry: dict
    #: (piece number in the table, valid rows) of each piece, whose rows are in the staging.
    pieces: list[tuple[int, int]] = field(default_factory=list)
    quarantine: list[pl.DataFrame] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)
    columns: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Piece:
    """One piece read and validated; its valid rows are in the staging."""

    number: int
    valid: int
    quarantine: pl.DataFrame
    unknown_columns: tuple[str, ...]
    rows: int
    columns: set[str]


def _run(data_dir: Path, *, store: Store | None, progress: bool, sink: Sink) -> IngestResult:
    with stages.session(progress):
        config = load_dataset_config(data_dir)
        found = discover_tables(data_dir)
        manifest = store.manifest if store is not None else None
        files = [f for name in TABLE_ORDER for f in found.get(name, [])]
        n_buckets = (manifest.n_buckets if manifest is not None and manifest.n_buckets else
                     bucket_count(_largest_table(files)))
        staging = (Staging.inside(store.path, n_buckets) if store is not None
                   else Staging.temporary(n_buckets))
        with staging:
            reads = _read_files(files, config, manifest, staging)
            result = _run_checks(reads, config, data_dir, store, staging, sink)
        result.n_buckets = n_buckets
        return result


def _largest_table(files: list[TableFile]) -> int:
    """The rows of the largest table, about (``read.estimate_rows``): what the bucket count of a
    new store is chosen from."""
    rows: dict[str, int] = {}
    for f in files:
        rows[f.table] = rows.get(f.table, 0) + estimate_rows(f)
    return max(rows.values(), default=0)


def _run_checks(reads: dict[str, list[_FileRead]], config: DatasetConfig, data_dir: Path,
                store: Store | None, staging: Staging, sink: Sink) -> IngestResult:

    file_reports: list[dict] = []
    table_reports: dict[str, dict] = {}
    quarantines: list[pl.DataFrame] = []
    accepted: dict = {}
    to_store_quarantine: list[pl.DataFrame] = []
    held: dict[str, pl.DataFrame] = {}
    admissions: list[Admission] = []
    known_subjects: list[pl.Series] | None = None
    columns_found: dict[str, set[str]] = {}
    n_buckets = staging.n_buckets
    for name in TABLE_ORDER:
        table = TABLES[name]
        columns = table_columns(name, config)
        pieces = sorted(p for r in reads[name] for p in r.pieces)
        offsets, before = {}, 0
        for piece, rows in pieces:
            offsets[piece] = before
            before += rows
        table_quarantine = [q for r in reads[name] for q in r.quarantine]
        unknown = set().union(*(r.unknown for r in reads[name]))
        per_file = [r.entry for r in reads[name]]
        read_files = tuple(r.entry["path"] for r in reads[name]
                           if r.entry["status"] == "ingested")
        for r in reads[name]:
            if r.entry["status"] == "ingested":
                columns_found.setdefault(name, set()).update(r.columns)
        del reads[name]
        checking = stages.begin(f"check {name}: duplicates, conflicts"
                                + (", unknown subjects" if name != "subjects" else ""))
        schema = {**{c.name: c.dtype for c in columns}, **PROVENANCE_SCHEMA}
        subjects = known_subjects if name != "subjects" else None
        outcome = resolve_with_held(table, staging, offsets, store, subjects,
                                    [c.name for c in columns], schema, read_files, sink)
        staging.drop(name)
        table_quarantine.extend(outcome.quarantine)
        to_store_quarantine.append(outcome.admitted.quarantine)
        admissions.extend(outcome.admitted.admissions)
        if outcome.held is not None:
            held[name] = outcome.held
        run_duplicates = outcome.duplicates
        accepted[name] = outcome.accepted
        run_accepted = outcome.accepted.height - outcome.admitted.accepted
        if name == "subjects":
            known_subjects = [_known_in_bucket(store, ids, b, n_buckets)
                              for b, ids in enumerate(outcome.subject_ids)]
        quarantine = pl.concat([empty_quarantine(), *table_quarantine],
                               how="vertical_relaxed")
        quarantines.append(quarantine)
        to_store_quarantine.append(quarantine.filter(pl.col("reason") != UNKNOWN_SUBJECT))
        table_reports[name] = _table_report(per_file, quarantine, run_accepted,
                                            run_duplicates, unknown)
        _add_file_counts(per_file, quarantine, run_duplicates)
        checking.end()
        file_reports.extend(per_file)

    quarantine = (pl.concat(quarantines, how="vertical_relaxed")
                  .select(QUARANTINE_COLUMNS)
                  .sort(["table", "source_file", "line", "column", "reason"], nulls_last=True))
    summary = {
        "contract_version": CONTRACT_VERSION,
        "tables": table_reports,
        "files": file_reports,
        "custom_factors": [f.column for f in config.custom_factors],
        "ignored_files": [mask_text(n) if find_identifier(n) else n
                          for n in ignored_files(data_dir)],
        "reasons": dict(REASONS),
        # Rows held as unknown_subject by earlier ingests, resolved now that their subject is
        # accepted (counted in store_totals, not in this run's tables).
        "admissions": [asdict(a) for a in admissions],
    }
    return IngestResult(summary=summary, quarantine=quarantine,
                        accepted=AcceptedRows(accepted, keep_alive=sink), config=config,
                        new_quarantine=pl.concat(to_store_quarantine, how="vertical_relaxed"),
                        held=held, admissions=tuple(admissions), columns_found=columns_found)


def _known_in_bucket(store: Store | None, accepted: pl.Series, bucket: int,
                     n_buckets: int) -> pl.Series:
    """The accepted subjects of one bucket: stored and new."""
    parts = [accepted]
    if store is not None:
        parts.insert(0, store.read_bucket("subjects", bucket, n_buckets).select("subject_id")
                     .collect().get_column("subject_id"))
    return pl.concat(parts).unique()


def _read_files(files: list[TableFile], config: DatasetConfig, manifest: Manifest | None,
                staging: Staging) -> dict[str, list[_FileRead]]:
    """Read and validate every file, piece by piece (``read.read_table_pieces``), the pieces on
    as many threads as there are cores: polars parses and casts without the GIL, so the pieces
    of a big daily file and the episodes file keep both cores busy. Each piece's valid rows go
    to ``staging`` on the thread that validated them; only its quarantine stays in memory.

    This thread reads each file's bytes and cuts them, in ``TABLE_ORDER``, and hands a piece to
    the pool only when a thread is free, so no more pieces are held as text than there are
    threads. A file whose sha256 the store already holds is skipped. When a piece is refused
    (``UserError``), no later piece is started and the error of the first refused piece in
    order is raised, as if the files had been read one after the other.
    """
    known_hashes = manifest.sha256s if manifest is not None else frozenset()
    sizes = {f.path: f.path.stat().st_size for f in files}
    reads: dict[str, list[_FileRead]] = {name: [] for name in TABLE_ORDER}
    workers = max(1, cores())
    slots = threading.Semaphore(workers)
    failed = threading.Event()

    lock = threading.Lock()

    class _Progress:
        """A file's line: from its first piece's start to its last piece's end (on whichever
        thread), so the time shown is the file's own, not its wait for a free thread."""

        def __init__(self, file: TableFile):
            self.file, self.remaining, self.cut, self.timer = file, 0, False, None

        def start(self) -> None:
            with lock:
                if self.timer is None:
                    self.timer = stages.begin(f"read and validate {self.file.relative_path} "
                                              f"({stages.human_bytes(sizes[self.file.path])})")

        def piece_done(self, by: int = 1, cut: bool = False) -> None:
            with lock:
                self.remaining -= by
                self.cut = self.cut or cut
                done = self.cut and self.remaining == 0
            if done:
                self.start()
                self.timer.end()
                bar.advance(sizes[self.file.path])

        def cancel(self) -> None:
            if self.timer is not None and not (self.cut and self.remaining == 0):
                self.timer.cancel()

    def validate_piece(piece, table, columns, number: int, shown: _Progress) -> _Piece:
        try:
            shown.start()
            raw = piece()
            found = set(raw.columns)
            checked = validate_file(raw, table, columns)
            del raw
            staging.put(table.name, number, checked.valid)
            out = _Piece(number, checked.valid.height, checked.quarantine,
                         checked.unknown_columns, checked.rows, found)
            shown.piece_done()
            return out
        except BaseException:
            failed.set()
            raise
        finally:
            slots.release()

    pending: list[tuple[_FileRead, TableFile, list, object, _Progress]] = []
    numbers: dict[str, int] = {}  # the last piece number given, per table

    def finish(upto: int) -> None:
        """Collect the files before ``upto`` (of ``pending``), in order."""
        while len(pending) > upto:
            out, file, futures, hashing, timer = pending[0]
            rows = 0
            for future in futures:
                piece = future.result()
                out.columns.update(piece.columns)
                out.pieces.append((piece.number, piece.valid))
                out.quarantine.append(piece.quarantine)
                out.unknown.update(piece.unknown_columns)
                rows += piece.rows
            out.entry = {**_entry(file, hashing.result()), "rows": rows, "status": "ingested"}
            pending.pop(0)

    with stages.stage("read dataset", total=sum(sizes.values())) as bar, \
            ThreadPoolExecutor(1) as hasher, ThreadPoolExecutor(workers) as pool:
        try:
            for file in files:
                if failed.is_set():
                    break
                shown = _Progress(file)
                data = read_bytes(file)
                # Hash in a thread (hashlib releases the GIL) while the file is parsed; only a
                # store that already holds files needs the hash first, to skip known files.
                hashing = hasher.submit(_sha256, data)
                if known_hashes and hashing.result() in known_hashes:
                    shown.start()
                    previous = manifest.file_for(hashing.result())
                    reads[file.table].append(_FileRead({
                        **_entry(file, hashing.result()),
                        "rows": previous.rows if previous else 0,
                        "status": "skipped_already_ingested"}))
                    shown.piece_done(0, cut=True)
                    continue
                out = _FileRead({})
                reads[file.table].append(out)
                table, columns = TABLES[file.table], table_columns(file.table, config)
                futures: list = []
                pending.append((out, file, futures, hashing, shown))
                pieces = read_table_pieces(file, data)
                del data
                for piece in pieces:
                    slots.acquire()
                    if failed.is_set():
                        slots.release()
                        break
                    with lock:
                        shown.remaining += 1
                    number = numbers[file.table] = numbers.get(file.table, -1) + 1
                    futures.append(pool.submit(validate_piece, piece, table, columns, number,
                                               shown))
                    del piece
                shown.piece_done(0, cut=True)
                finish(upto=1)
            finish(upto=0)
        except BaseException:
            failed.set()
            for _, _, futures, _, shown in pending:
                for future in futures:
                    future.cancel()
                shown.cancel()
            # An earlier piece's refusal comes first, as in a read one file after the other.
            for _, _, futures, _, _ in pending:
                for future in futures:
                    if not future.cancelled() and future.exception() is not None:
                        raise future.exception() from None
            raise
    return reads


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(file: TableFile, sha256: str) -> dict:
    return {"path": file.relative_path, "table": file.table, "format": file.format,
            "sha256": sha256}


def _table_report(per_file: list[dict], quarantine: pl.DataFrame, accepted: int,
                  duplicates: pl.DataFrame, unknown: set[str]) -> dict:
    read = sum(f["rows"] for f in per_file if f["status"] == "ingested")
    by_reason = dict(quarantine.group_by("reason").len().sort("reason").iter_rows())
    # A column name is output too: never let an identifier-shaped header through.
    unknown_names = sorted(mask_text(u) if find_identifier(u) else u for u in unknown)
    return {
        "read": read,
        "accepted": accepted,
        "quarantined": quarantine.height,
        "duplicates": int(duplicates.get_column("duplicates").sum() or 0),
        "quarantined_by_reason": {k: int(v) for k, v in by_reason.items()},
        "unknown_columns": unknown_names,
        "files": len(per_file),
        "files_skipped": sum(f["status"] != "ingested" for f in per_file),
    }


def _add_file_counts(per_file: list[dict], quarantine: pl.DataFrame,
                     duplicates: pl.DataFrame) -> None:
    """Per-file counts; accepted is what remains, so each file's rows add up by construction."""
    qua = dict(quarantine.group_by("source_file").len().iter_rows())
    dup = dict(duplicates.iter_rows())
    for entry in per_file:
        ingested = entry["status"] == "ingested"
        entry["quarantined"] = int(qua.get(entry["path"], 0)) if ingested else 0
        entry["duplicates"] = int(dup.get(entry["path"], 0)) if ingested else 0
        entry["accepted"] = (entry["rows"] - entry["quarantined"] - entry["duplicates"]
                             if ingested else 0)
