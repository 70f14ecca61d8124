"""The Parquet store of accepted rows, with a manifest of every input file ingested.

Layout::

    STORE/manifest.json              the truth: files ingested (sha256), table parts, custom columns
    STORE/tables/<table>/part-*-bNNNN.parquet   per ingest, one part per table and subject bucket

Subject buckets (``pipeline/execution.py``): every accepted row goes to the part of its subject's
bucket (a stable hash of ``subject_id``), so a bucket of whole subjects can be read alone
(``read_bucket``) by whichever worker processes it. The bucket count is chosen from the size of
the store's first ingest and recorded in the manifest (``n_buckets``); later ingests keep it.

Crash safety: every file is written to a temporary name in its final directory, flushed to disk,
then renamed over (``os.replace`` is atomic on POSIX). Parts are written first and the manifest
last, and readers only look at parts the manifest lists; so a run killed at any moment leaves the
previous manifest and everything it lists intact, and at worst an orphan part that the next
ingest deletes. Ingests take a file lock, so two ingests into one store never interleave.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from filelock import FileLock

from pipeline import atomic
from pipeline.errors import UserError
from pipeline.schema import CONTRACT_VERSION, PROVENANCE_SCHEMA, TABLES

MANIFEST = "manifest.json"
TABLES_DIR = "tables"
LOCK = ".lock"
_STORE_FORMAT = 1
#: Snappy: about twice as fast to write as zstd here; store size is not the constraint.
PARQUET_COMPRESSION = "snappy"
_CUSTOM_DTYPES: dict[str, pl.DataType] = {"numeric": pl.Float64(), "boolean": pl.Boolean()}


@dataclass(frozen=True)
class ManifestFile:
    """One input file that was ingested."""

    path: str
    table: str
    format: str
    sha256: str
    rows: int
    accepted: int
    ingested_at: str


@dataclass(frozen=True)
class Manifest:
    files: tuple[ManifestFile, ...] = ()
    #: Table -> part file names (relative to ``tables/<table>/``), in write order.
    parts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Custom daily columns ever stored: name -> ``numeric`` | ``boolean``.
    custom_columns: dict[str, str] = field(default_factory=dict)
    contract_version: str = CONTRACT_VERSION
    #: Subject buckets of the parts (0: a store written before buckets; one part per ingest).
    n_buckets: int = 0

    @property
    def sha256s(self) -> frozenset[str]:
        return frozenset(f.sha256 for f in self.files)

    def file_for(self, sha256: str) -> ManifestFile | None:
        for f in self.files:
            if f.sha256 == sha256:
                return f
        return None

    def to_json(self) -> dict:
        return {
            "store_format": _STORE_FORMAT,
            "contract_version": self.contract_version,
            "files": [asdict(f) for f in self.files],
            "parts": {t: list(p) for t, p in sorted(self.parts.items())},
            "custom_columns": dict(self.custom_columns),
            "n_buckets": self.n_buckets,
        }

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        return cls(
            files=tuple(ManifestFile(**f) for f in data.get("files", [])),
            parts={t: tuple(p) for t, p in data.get("parts", {}).items()},
            custom_columns=dict(data.get("custom_columns", {})),
            contract_version=data.get("contract_version", CONTRACT_VERSION),
            n_buckets=int(data.get("n_buckets", 0)),
        )


class Store:
    """A directory of Parquet tables plus ``manifest.json``. ``Store(path)`` never writes."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    # --- reading ---------------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        path = self.path / MANIFEST
        if not path.is_file():
            return Manifest()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise UserError(f"the store manifest cannot be read ({error})",
                            path=str(path)) from None
        if data.get("contract_version") != CONTRACT_VERSION:
            raise UserError(f"the store was written for contract version "
                            f"{data.get('contract_version')!r}, not {CONTRACT_VERSION!r}",
                            path=str(path))
        return Manifest.from_json(data)

    def schema(self, table: str, manifest: Manifest | None = None) -> dict[str, pl.DataType]:
        """Stored columns and dtypes of ``table``, provenance columns last."""
        if table not in TABLES:
            raise UserError(f"unknown table {table!r}; tables are {', '.join(TABLES)}")
        manifest = manifest or self.manifest
        columns = dict(TABLES[table].polars_schema())
        if table == "daily":
            columns.update({c: _CUSTOM_DTYPES[k] for c, k in manifest.custom_columns.items()})
        return {**columns, **PROVENANCE_SCHEMA}

    def read(self, table: str) -> pl.LazyFrame:
        """All stored rows of ``table`` with exactly the stored schema (empty if none)."""
        manifest = self.manifest
        schema = self.schema(table, manifest)
        parts = [self._table_dir(table) / p for p in manifest.parts.get(table, ())]
        return self._scan(parts, schema)

    def read_bucket(self, table: str, bucket: int) -> pl.LazyFrame:
        """The stored rows of ``table`` whose subjects fall in ``bucket`` (0..n_buckets-1): all
        rows of those subjects, with ``read``'s schema. ``read`` is the union over buckets."""
        manifest = self.manifest
        schema = self.schema(table, manifest)
        names = manifest.parts.get(table, ())
        tagged = [p for p in names if bucket_of_part(p) == bucket]
        frame = self._scan([self._table_dir(table) / p for p in tagged], schema)
        untagged = [self._table_dir(table) / p for p in names if bucket_of_part(p) is None]
        if untagged and manifest.n_buckets:
            # Parts written without buckets (e.g. a table with no subject column): filter.
            from pipeline.execution import subject_buckets

            rest = self._scan(untagged, schema).collect()
            if "subject_id" in rest.columns:
                rest = rest.filter(subject_buckets(rest["subject_id"], manifest.n_buckets)
                                   == bucket)
            frame = pl.concat([frame, rest.lazy()])
        return frame

    @staticmethod
    def _scan(parts: list[Path], schema: dict[str, pl.DataType]) -> pl.LazyFrame:
        if not parts:
            return pl.LazyFrame(schema=schema)
        frames = [pl.scan_parquet(p) for p in parts]
        frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
        present = frame.collect_schema().names()
        return frame.select(
            (pl.col(c) if c in present else pl.lit(None)).cast(dtype).alias(c)
            for c, dtype in schema.items())

    # --- writing ---------------------------------------------------------------------------

    def remove_if_empty(self) -> None:
        """Delete the store directory if it holds nothing but its lock file."""
        if self.path.is_dir() and {p.name for p in self.path.iterdir()} <= {LOCK}:
            (self.path / LOCK).unlink(missing_ok=True)
            try:
                self.path.rmdir()
            except OSError:
                pass

    def lock(self) -> FileLock:
        self.path.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path / LOCK))

    def append(self, rows: dict[str, pl.DataFrame], files: list[ManifestFile],
               custom_columns: dict[str, str]) -> Manifest:
        """Add one ingest: a part per non-empty table, then the manifest. Call under :meth:`lock`."""
        manifest = self.manifest
        self._remove_orphans(manifest)
        parts = {t: list(p) for t, p in manifest.parts.items()}
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        n_buckets = manifest.n_buckets or store_bucket_count(rows)
        for table, frame in rows.items():
            if frame.height == 0:
                continue
            directory = self._table_dir(table)
            directory.mkdir(parents=True, exist_ok=True)
            for bucket, part in split_into_buckets(frame, n_buckets):
                tag = "" if bucket is None else f"-b{bucket:04d}"
                name = f"part-{stamp}-{uuid.uuid4().hex[:12]}{tag}.parquet"
                atomic.write_with(directory / name, lambda tmp, f=part: f.write_parquet(
                    tmp, compression=PARQUET_COMPRESSION))
                parts.setdefault(table, []).append(name)
        custom = dict(manifest.custom_columns)
        for column, kind in custom_columns.items():
            custom.setdefault(column, kind)
        new = Manifest(files=manifest.files + tuple(files),
                       parts={t: tuple(p) for t, p in parts.items()},
                       custom_columns=custom, n_buckets=n_buckets)
        atomic.write_json(self.path / MANIFEST, new.to_json())
        return new

    def _table_dir(self, table: str) -> Path:
        return self.path / TABLES_DIR / table

    def _remove_orphans(self, manifest: Manifest) -> None:
        """Delete leftovers of a killed ingest: temp files and parts no manifest lists."""
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        root = self.path / TABLES_DIR
        if not root.is_dir():
            return
        for directory in root.iterdir():
            listed = set(manifest.parts.get(directory.name, ()))
            for part in directory.iterdir():
                if part.name not in listed:
                    part.unlink(missing_ok=True)


# --- subject buckets of the store -------------------------------------------------------------

_BUCKET_TAG = re.compile(r"-b(\d{4,})\.parquet$")


def bucket_of_part(name: str) -> int | None:
    """The subject bucket a part file holds (None: a part written without buckets)."""
    m = _BUCKET_TAG.search(name)
    return int(m.group(1)) if m else None


def store_bucket_count(rows: dict[str, pl.DataFrame]) -> int:
    """Buckets for a new store, from the size of its first ingest (the largest table)."""
    from pipeline.execution import bucket_count

    return bucket_count(max((f.height for f in rows.values()), default=0))


def split_into_buckets(frame: pl.DataFrame, n_buckets: int):
    """``(bucket, rows)`` for each non-empty subject bucket of ``frame`` (input order kept within
    a bucket); ``(None, frame)`` for a table without a subject column."""
    if "subject_id" not in frame.columns:
        yield None, frame
        return
    from pipeline.execution import split_by_bucket

    for bucket, part in enumerate(split_by_bucket(frame, "subject_id", n_buckets)):
        if part.height:
            yield bucket, part


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
