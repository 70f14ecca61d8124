"""Validate a whole dataset directory and, for ``ingest``, append the accepted rows to a store.

Order matters: ``subjects`` first (the other tables' ``unknown_subject`` check needs the accepted
subjects), then ``daily``, ``injuries`` and ``episodes``. Each table is read file by file,
validated row by row (``validate``), then checked across rows and against the store (``dedupe``).
Nothing is written until every file has been read and accepted as a whole, so a refused file
(identifier column, missing required column) leaves the store exactly as it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from pipeline.errors import UserError
from pipeline import progress as stages
from pipeline.dataset_config import DatasetConfig, load_dataset_config
from pipeline.ingest.discover import TableFile, discover_tables, ignored_files
from pipeline.ingest.identifiers import find_identifier, mask_text
from pipeline.ingest.read import read_bytes, read_table_chunks
from pipeline.ingest.stored import (UNKNOWN_SUBJECT, resolve_with_held, store_totals,
                                    stored_quarantine)
from pipeline.ingest.validate import QUARANTINE_COLUMNS, empty_quarantine, validate_file
from pipeline.schema import CONTRACT_VERSION, PROVENANCE_SCHEMA, REASONS, SOURCE_FILE, TABLES, Column
from pipeline.store import Admission, ManifestFile, Store, now_utc

#: Processing order: subjects first, so the others can be checked against them.
TABLE_ORDER = ("subjects", "daily", "injuries", "episodes")


@dataclass
class IngestResult:
    """What a validate or ingest run found. ``summary`` is what ``summary.json`` holds."""

    summary: dict
    #: ``table, source_file, line, column, value, reason, message``; values already masked.
    quarantine: pl.DataFrame
    #: New accepted rows per table, as stored (or as they would be, for ``validate``).
    accepted: dict[str, pl.DataFrame] = field(default_factory=dict)
    config: DatasetConfig = field(default_factory=DatasetConfig)
    #: Whether the rows were written to a store (False for ``validate_dataset``).
    stored: bool = False
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


def validate_dataset(data_dir: Path, *, progress: bool = False) -> IngestResult:
    """Read and validate every table of ``data_dir``; store nothing."""
    return _run(Path(data_dir), store=None, progress=progress)


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
    result = _run(data_dir, store=store, progress=progress)
    files = [
        ManifestFile(path=f["path"], table=f["table"], format=f["format"], sha256=f["sha256"],
                     rows=f["rows"], accepted=f["accepted"], quarantined=f["quarantined"],
                     duplicates=f["duplicates"], ingested_at=now_utc())
        for f in result.summary["files"] if f["status"] == "ingested"
    ]
    if files or result.admissions:
        custom = {f.column: f.kind for f in result.config.custom_factors}
        with stages.stage("store accepted rows"):
            store.append(result.accepted, files, custom, quarantine=result.new_quarantine,
                         held=result.held, admissions=result.admissions)
    result.stored = True
    result.store_quarantine = stored_quarantine(store)
    result.summary["store_totals"] = store_totals(store, result.store_quarantine)
    result.store_rows = {t: store.read(t).select(pl.len()).collect().item()
                         for t in result.summary["store_totals"]}
    return result


def _run(data_dir: Path, *, store: Store | None, progress: bool) -> IngestResult:
    config = load_dataset_config(data_dir)
    found = discover_tables(data_dir)
    manifest = store.manifest if store is not None else None
    known_hashes = manifest.sha256s if manifest is not None else frozenset()

    file_reports: list[dict] = []
    table_reports: dict[str, dict] = {}
    quarantines: list[pl.DataFrame] = []
    accepted: dict[str, pl.DataFrame] = {}
    to_store_quarantine: list[pl.DataFrame] = []
    held: dict[str, pl.DataFrame] = {}
    admissions: list[Admission] = []
    known_subjects: pl.Series | None = None
    columns_found: dict[str, set[str]] = {}
    with _progress(progress, found) as advance, ThreadPoolExecutor(1) as hasher:
        for name in TABLE_ORDER:
            table = TABLES[name]
            columns = table_columns(name, config)
            valid_parts: list[pl.DataFrame] = []
            table_quarantine: list[pl.DataFrame] = []
            unknown: set[str] = set()
            per_file: list[dict] = []
            for file in found.get(name, []):
                data = read_bytes(file)
                # Hash in a thread (hashlib releases the GIL) while the file is parsed; only a
                # store that already holds files needs the hash first, to skip known files.
                digest = hasher.submit(_sha256, data)
                if known_hashes and digest.result() in known_hashes:
                    previous = manifest.file_for(digest.result())
                    per_file.append({**_entry(file, digest.result()),
                                     "rows": previous.rows if previous else 0,
                                     "status": "skipped_already_ingested"})
                    advance(file)
                    continue
                rows = 0
                for raw in read_table_chunks(file, data):
                    checked = validate_file(raw, table, columns)
                    columns_found.setdefault(name, set()).update(raw.columns)
                    del raw
                    valid_parts.append(checked.valid)
                    table_quarantine.append(checked.quarantine)
                    unknown.update(checked.unknown_columns)
                    rows += checked.rows
                del data
                per_file.append({**_entry(file, digest.result()), "rows": rows,
                                 "status": "ingested"})
                advance(file)
            checking = stages.begin(f"check {name}: duplicates, conflicts"
                                    + (", unknown subjects" if name != "subjects" else ""))
            new = (pl.concat(valid_parts, how="vertical_relaxed") if valid_parts
                   else pl.DataFrame(schema={**{c.name: c.dtype for c in columns},
                                             **PROVENANCE_SCHEMA}))
            subjects = known_subjects if name != "subjects" else None
            outcome = resolve_with_held(table, new, store, subjects, [c.name for c in columns])
            table_quarantine.extend(outcome.quarantine)
            to_store_quarantine.append(outcome.admitted.quarantine)
            admissions.extend(outcome.admitted.admissions)
            if outcome.held is not None:
                held[name] = outcome.held
            resolved, run_duplicates = outcome.resolved, outcome.duplicates
            accepted[name] = resolved.accepted
            run_accepted = resolved.accepted.height - outcome.admitted.accepted
            if name == "subjects":
                parts = [resolved.accepted.get_column("subject_id")]
                if store is not None:
                    parts.insert(0, store.read("subjects").select("subject_id").collect()
                                 .get_column("subject_id"))
                known_subjects = pl.concat(parts).unique()
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
    return IngestResult(summary=summary, quarantine=quarantine, accepted=accepted, config=config,
                        new_quarantine=pl.concat(to_store_quarantine, how="vertical_relaxed"),
                        held=held, admissions=tuple(admissions), columns_found=columns_found)


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


@contextmanager
def _progress(enabled: bool, found: dict[str, list[TableFile]]) -> Iterator:
    """One line per file read and validated, with its size and time, under a bar over the bytes
    of the whole dataset (``pipeline.progress``); nothing unless enabled (on a terminal).
    ``advance(file)`` is called when ``file`` is done; files are read in ``TABLE_ORDER``."""
    from pipeline import progress as stages

    files = [f for name in TABLE_ORDER for f in found.get(name, [])]
    sizes = {f.path: f.path.stat().st_size for f in files}
    with stages.session(enabled), stages.stage("read dataset", total=sum(sizes.values())) as bar:
        pending = iter(files)
        current: list = [None]

        def start_next() -> None:
            file = next(pending, None)
            current[0] = None if file is None else stages.begin(
                f"read and validate {file.relative_path} ({stages.human_bytes(sizes[file.path])})")

        def advance(file: TableFile) -> None:
            if current[0] is not None:
                current[0].end()
            bar.advance(sizes.get(file.path, 0))
            start_next()

        start_next()
        try:
            yield advance
        finally:
            if current[0] is not None:
                current[0].cancel()
