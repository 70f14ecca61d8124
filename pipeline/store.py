"""The Parquet store of accepted rows, with a manifest of every input file ingested.

Layout::

    STORE/.cramp-store               marker: this directory was made by cramp (see below)
    STORE/manifest.json              the truth: files ingested (sha256), table parts, custom columns
    STORE/tables/<table>/part-*-bNNNN.parquet   per ingest, one part per table and subject bucket
    STORE/quarantine/part-*.parquet  quarantined rows, committed with the rows of the same ingest
    STORE/held/<table>/part-*.parquet     rows held as ``unknown_subject`` until their subject
                                          is accepted (the whole pending set, rewritten on change)

Subject buckets (``pipeline/execution.py``): every accepted row goes to the part of its subject's
bucket (a stable hash of ``subject_id``), so a bucket of whole subjects can be read alone
(``read_bucket``) by whichever worker processes it. The bucket count is chosen from the size of
the store's first ingest and recorded in the manifest (``n_buckets``); later ingests keep it.

Ownership: cramp writes into, rebuilds or removes only directories it made itself, which carry
the marker file ``.cramp-store`` (:meth:`Store.claim`, :func:`remove_store`); a directory without
it (a dataset, someone's files) is refused with a clear message, never deleted.

Crash safety: every file is written to a temporary name in its final directory, flushed to disk,
then renamed over (``os.replace`` is atomic on POSIX). Parts are written first and the manifest
last, and readers only look at parts the manifest lists; so a run killed at any moment leaves the
previous manifest and everything it lists intact, and at worst an orphan part that the next
ingest deletes. Ingests take a file lock, so two ingests into one store never interleave.
The quarantine and the held rows of an ingest are parts like any other, listed by the same
manifest commit: a kill can never keep a file's rows but lose its quarantine record.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
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
QUARANTINE_DIR = "quarantine"
HELD_DIR = "held"
#: Prefix of an ingest's staging directory (``pipeline.ingest.staging``): not part of the store.
STAGING_PREFIX = ".staging-"
#: Marker file of a directory made by cramp (the only kind cramp will rebuild or remove).
MARKER = ".cramp-store"
_MARKER_TEXT = ("This directory is a cramp store: cramp may append to, rebuild or remove it.\n"
                "Do not keep other files here.\n")
#: 2: the store keeps the quarantine and the rows held as unknown_subject (format 1 did not).
_STORE_FORMAT = 2
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
    #: Rows quarantined (including rows held as unknown_subject) and exact duplicates, at ingest;
    #: ``rows == accepted + quarantined + duplicates``. Later admissions are :class:`Admission`s.
    quarantined: int = 0
    duplicates: int = 0


@dataclass(frozen=True)
class Admission:
    """Rows of one earlier file, held as ``unknown_subject``, resolved by a later ingest that
    accepted their subject: ``admitted`` are now stored, ``duplicates`` were exact copies of an
    earlier row, ``conflicts`` are quarantined again with reason ``conflict``."""

    table: str
    source_file: str
    admitted: int
    duplicates: int
    conflicts: int
    admitted_at: str


@dataclass(frozen=True)
class Manifest:
    files: tuple[ManifestFile, ...] = ()
    #: Table -> part file names (relative to ``tables/<table>/``), in write order.
    parts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Custom daily columns ever stored: name -> ``numeric`` | ``boolean``.
    custom_columns: dict[str, str] = field(default_factory=dict)
    contract_version: str = CONTRACT_VERSION
    #: Quarantine part file names (relative to ``quarantine/``), in write order.
    quarantine_parts: tuple[str, ...] = ()
    #: Table -> held part file names (relative to ``held/<table>/``).
    held_parts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    admissions: tuple[Admission, ...] = ()
    #: Subject buckets of the table parts (0: a store written before buckets).
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
            "quarantine_parts": list(self.quarantine_parts),
            "held_parts": {t: list(p) for t, p in sorted(self.held_parts.items())},
            "admissions": [asdict(a) for a in self.admissions],
            "n_buckets": self.n_buckets,
        }

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        return cls(
            files=tuple(ManifestFile(**f) for f in data.get("files", [])),
            parts={t: tuple(p) for t, p in data.get("parts", {}).items()},
            custom_columns=dict(data.get("custom_columns", {})),
            contract_version=data.get("contract_version", CONTRACT_VERSION),
            quarantine_parts=tuple(data.get("quarantine_parts", ())),
            held_parts={t: tuple(p) for t, p in data.get("held_parts", {}).items()},
            admissions=tuple(Admission(**a) for a in data.get("admissions", [])),
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
        if data.get("store_format") != _STORE_FORMAT:
            raise UserError(
                f"the store was written by an earlier cramp (store format "
                f"{data.get('store_format')!r}, this cramp writes {_STORE_FORMAT}) that did not "
                "keep quarantined rows; move the store aside and ingest the dataset again into "
                "a new store", path=str(self.path))
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
        return _scan_parts(parts, schema)

    def read_bucket(self, table: str, bucket: int, n_buckets: int | None = None) -> pl.LazyFrame:
        """The stored rows of ``table`` whose subjects fall in ``bucket`` (0..n_buckets-1): all
        rows of those subjects, with ``read``'s schema. ``read`` is the union over buckets.
        ``n_buckets`` other than the store's own (ingest into a store written before buckets)
        filters every part by its rows' subjects."""
        manifest = self.manifest
        schema = self.schema(table, manifest)
        names = manifest.parts.get(table, ())
        if n_buckets is not None and n_buckets != manifest.n_buckets:
            tagged, untagged = [], list(names)
        else:
            n_buckets = manifest.n_buckets
            tagged = [p for p in names if bucket_of_part(p) == bucket]
            untagged = [p for p in names if bucket_of_part(p) is None]
        frame = _scan_parts([self._table_dir(table) / p for p in tagged], schema)
        if untagged and n_buckets:
            # Parts written before buckets (or of a table without subjects): filter them.
            from pipeline.execution import subject_buckets

            rest = _scan_parts([self._table_dir(table) / p for p in untagged], schema).collect()
            if "subject_id" in rest.columns:
                rest = rest.filter(subject_buckets(rest["subject_id"], n_buckets) == bucket)
            frame = pl.concat([frame, rest.lazy()])
        return frame

    def read_held(self, table: str) -> pl.LazyFrame:
        """Rows of ``table`` held as ``unknown_subject``: stored schema, not yet accepted."""
        manifest = self.manifest
        schema = self.schema(table, manifest)
        parts = [self.path / HELD_DIR / table / p for p in manifest.held_parts.get(table, ())]
        return _scan_parts(parts, schema)

    def read_quarantine(self) -> pl.LazyFrame:
        """Quarantined rows committed with their ingests (``validate.QUARANTINE_SCHEMA``).
        Rows held as ``unknown_subject`` are not here but in :meth:`read_held`;
        ``pipeline.ingest.stored.stored_quarantine`` gives both."""
        from pipeline.ingest.validate import QUARANTINE_SCHEMA

        parts = [self.path / QUARANTINE_DIR / p for p in self.manifest.quarantine_parts]
        return _scan_parts(parts, QUARANTINE_SCHEMA)

    # --- writing ---------------------------------------------------------------------------

    def remove_if_empty(self) -> None:
        """Delete the store directory if it holds nothing but its lock and marker files."""
        if self.path.is_dir() and {p.name for p in self.path.iterdir()} <= {LOCK, MARKER}:
            (self.path / MARKER).unlink(missing_ok=True)
            (self.path / LOCK).unlink(missing_ok=True)
            try:
                self.path.rmdir()
            except OSError:
                pass

    def lock(self) -> FileLock:
        self.path.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path / LOCK))

    def claim(self) -> None:
        """Make sure cramp may write here: refuse (``UserError``) a directory cramp did not make;
        an empty or missing directory becomes a store (marker written). Call before :meth:`lock`,
        so that a refused directory is left without even a lock file."""
        check_store_path(self.path)
        if is_cramp_store(self.path):
            self.manifest  # a store of an older format is refused with what to do
            return
        if self.path.is_dir():
            if holds_foreign_files(self.path, MARKER, {LOCK}):
                raise UserError(
                    "this directory is not empty and was not made by cramp (no "
                    f"{MARKER} marker file), so cramp will not write its store here; give "
                    "--store a new or empty directory", path=str(self.path))

    def mark(self) -> None:
        """Write the marker file (under :meth:`lock`, after :meth:`claim`)."""
        if not (self.path / MARKER).is_file():
            atomic.write_text(self.path / MARKER, _MARKER_TEXT)

    def append(self, rows: dict[str, pl.DataFrame | Bucketed], files: list[ManifestFile],
               custom_columns: dict[str, str], *, quarantine: pl.DataFrame | None = None,
               held: dict[str, pl.DataFrame] | None = None,
               admissions: tuple[Admission, ...] = ()) -> Manifest:
        """Add one ingest: a part per non-empty table, its quarantine part and the new held sets
        (``held``: table -> every row now held, replacing the old set), then the manifest, which
        commits all of them at once. Call under :meth:`lock`."""
        manifest = self.manifest
        self.remove_orphans(manifest)
        from pipeline.execution import cores

        n_buckets = manifest.n_buckets or store_bucket_count(rows)
        writes = [(table, bucket, part) for table, frame in rows.items()
                  for bucket, part in split_into_buckets(frame, n_buckets)]
        # Parquet encoding and compression release the GIL: write the parts on every core,
        # listed in the manifest in the order of ``writes`` whichever finishes first.
        with ThreadPoolExecutor(min(len(writes), cores()) or 1) as pool:
            names = list(pool.map(lambda w: self.write_part(w[0], w[2], w[1]), writes))
        parts: dict[str, list[str]] = {}
        for (table, _, _), name in zip(writes, names):
            parts.setdefault(table, []).append(name)
        return self.commit(parts, n_buckets, files, custom_columns, quarantine=quarantine,
                           held=held, admissions=admissions)

    def write_part(self, table: str, frame: pl.DataFrame, bucket: int | None = None) -> str:
        """Write one part of ``table`` (not yet listed: :meth:`commit` lists it); its name.
        The part is made contiguous first, so its row groups (and bytes) do not depend on how
        the rows arrived (a bucket gathers pieces of several files)."""
        return self._write_part(self._table_dir(table), frame.rechunk(), bucket)

    def part_path(self, table: str, name: str) -> Path:
        return self._table_dir(table) / name

    def commit(self, parts: dict[str, list[str]], n_buckets: int, files: list[ManifestFile],
               custom_columns: dict[str, str], *, quarantine: pl.DataFrame | None = None,
               held: dict[str, pl.DataFrame] | None = None,
               admissions: tuple[Admission, ...] = ()) -> Manifest:
        """List the parts written by :meth:`write_part` (table -> names, in bucket order) with
        this ingest's quarantine part and held sets, in a new manifest: the one write that
        commits the ingest. ``n_buckets``: the buckets the parts were routed to (a store that
        has a count keeps it). Call under :meth:`lock`."""
        manifest = self.manifest
        assert not manifest.n_buckets or n_buckets == manifest.n_buckets
        listed = {t: list(p) for t, p in manifest.parts.items()}
        for table, names in parts.items():
            listed.setdefault(table, []).extend(names)
        quarantine_parts = list(manifest.quarantine_parts)
        if quarantine is not None and quarantine.height:
            quarantine_parts.append(self._write_part(self.path / QUARANTINE_DIR, quarantine))
        held_parts = dict(manifest.held_parts)
        for table, frame in (held or {}).items():
            held_parts[table] = ((self._write_part(self.path / HELD_DIR / table, frame),)
                                 if frame.height else ())
        custom = dict(manifest.custom_columns)
        for column, kind in custom_columns.items():
            custom.setdefault(column, kind)
        new = Manifest(files=manifest.files + tuple(files),
                       parts={t: tuple(p) for t, p in listed.items()},
                       custom_columns=custom,
                       quarantine_parts=tuple(quarantine_parts),
                       held_parts={t: p for t, p in held_parts.items() if p},
                       admissions=manifest.admissions + tuple(admissions),
                       n_buckets=manifest.n_buckets or n_buckets)
        atomic.write_json(self.path / MANIFEST, new.to_json())
        return new

    def _write_part(self, directory: Path, frame: pl.DataFrame, bucket: int | None = None) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        tag = "" if bucket is None else f"-b{bucket:04d}"
        name = f"part-{stamp}-{uuid.uuid4().hex[:12]}{tag}.parquet"
        directory.mkdir(parents=True, exist_ok=True)
        atomic.write_with(directory / name,
                          lambda tmp: frame.write_parquet(tmp, compression=PARQUET_COMPRESSION))
        return name

    def _table_dir(self, table: str) -> Path:
        return self.path / TABLES_DIR / table

    def remove_orphans(self, manifest: Manifest | None = None) -> None:
        """Delete leftovers of a killed ingest: temp files, staging directories and parts no
        manifest lists. Call under :meth:`lock`, before an ingest writes anything."""
        manifest = manifest or self.manifest
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for staging in self.path.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(staging, ignore_errors=True)
        _remove_unlisted(self.path / QUARANTINE_DIR, set(manifest.quarantine_parts))
        for root, listing in ((self.path / TABLES_DIR, manifest.parts),
                              (self.path / HELD_DIR, manifest.held_parts)):
            if root.is_dir():
                for directory in root.iterdir():
                    _remove_unlisted(directory, set(listing.get(directory.name, ())))


def _remove_unlisted(directory: Path, listed: set[str]) -> None:
    if directory.is_dir():
        for part in directory.iterdir():
            if part.name not in listed:
                part.unlink(missing_ok=True)


def _scan_parts(parts: list[Path], schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    """The parts as one frame with exactly ``schema`` (a column a part lacks is null)."""
    if not parts:
        return pl.LazyFrame(schema=schema)
    frames = [pl.scan_parquet(p) for p in parts]
    frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
    present = frame.collect_schema().names()
    return frame.select(
        (pl.col(c) if c in present else pl.lit(None)).cast(dtype).alias(c)
        for c, dtype in schema.items())


# --- subject buckets of the store -------------------------------------------------------------

_BUCKET_TAG = re.compile(r"-b(\d{4,})\.parquet$")


def bucket_of_part(name: str) -> int | None:
    """The subject bucket a table part holds (None: a part written without buckets)."""
    m = _BUCKET_TAG.search(name)
    return int(m.group(1)) if m else None


def store_bucket_count(rows: dict[str, pl.DataFrame | Bucketed]) -> int:
    """Buckets for a new store, from the size of its first ingest (the largest table)."""
    from pipeline.execution import bucket_count

    return bucket_count(max((f.height for f in rows.values()), default=0))


@dataclass(frozen=True)
class Bucketed:
    """A table's rows already routed to subject buckets (``parts[b]``: the rows of bucket ``b``,
    in input order), as ingest's per-bucket checks leave them; ``order`` names the column that
    numbers the rows in input order (dropped when stored)."""

    n_buckets: int
    parts: tuple[pl.DataFrame, ...]
    order: str

    @property
    def height(self) -> int:
        return sum(p.height for p in self.parts)

    def whole(self) -> pl.DataFrame:
        """Every row, in input order."""
        return pl.concat(self.parts).sort(self.order).drop(self.order)


def split_into_buckets(frame: pl.DataFrame | Bucketed, n_buckets: int):
    """``(bucket, rows)`` for each non-empty subject bucket of ``frame`` (input order kept within
    a bucket); ``(None, frame)`` for a non-empty table without a subject column."""
    if isinstance(frame, Bucketed):
        if frame.n_buckets == n_buckets:
            for bucket, part in enumerate(frame.parts):
                if part.height:
                    yield bucket, part.drop(frame.order)
            return
        frame = frame.whole()
    if frame.height == 0:
        return
    if "subject_id" not in frame.columns:
        yield None, frame
        return
    from pipeline.execution import split_by_bucket

    for bucket, part in enumerate(split_by_bucket(frame, "subject_id", n_buckets)):
        if part.height:
            yield bucket, part


def check_store_path(path: Path) -> None:
    """Refuse a store path that is a symbolic link or not a directory (``UserError``)."""
    path = Path(path)
    if path.is_symlink():
        raise UserError("the store path is a symbolic link; cramp does not write through links "
                        "into a store. Remove the link or point --store at the real directory",
                        path=str(path))
    if path.exists() and not path.is_dir():
        raise UserError("the store path exists and is not a directory; choose another path",
                        path=str(path))


def holds_foreign_files(directory: Path, marker: str, allowed: set[str]) -> bool:
    """Whether ``directory`` holds anything but ``allowed`` names and a temporary file of
    ``marker`` (what a run killed while creating the directory leaves)."""
    leftover = f".{marker}."
    return any(p.name not in allowed and not (p.name.startswith(leftover)
                                              and p.name.endswith(".tmp"))
               for p in directory.iterdir())


def is_cramp_store(path: Path) -> bool:
    """Whether cramp made ``path``: the marker file, or (stores from before the marker) a
    manifest that cramp wrote."""
    path = Path(path)
    if (path / MARKER).is_file():
        return True
    try:
        return "store_format" in json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def remove_store(path: Path) -> None:
    """Delete a store cramp made (``rmtree``); refuse anything else with a ``UserError``."""
    path = Path(path)
    check_store_path(path)
    if not path.exists():
        return
    if not is_cramp_store(path) and holds_foreign_files(path, MARKER, {LOCK}):
        raise UserError(
            f"cramp rebuilds this store on every run, but this directory was not made by cramp "
            f"(no {MARKER} marker file), so it was not deleted. Move it elsewhere, or choose "
            "another --out", path=str(path))
    shutil.rmtree(path)


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
