"""Where a run's accepted rows go once a bucket is checked, and how they are read back.

The checks of a table end bucket by bucket; each bucket's accepted rows are written at once
(``Sink.write``) so that memory never holds more than a bucket of them:

* ``StoreSink`` (``ingest``): a part of the store (``Store.write_part``), listed by the
  manifest only when the ingest commits (``Store.commit``); if the ingest fails first, the parts
  it wrote are deleted (``discard``), and a kill leaves orphans that the next ingest deletes.
* ``TemporarySink`` (``validate``): Parquet files in a temporary directory that lives as long
  as the result that reads them (``IngestResult.accepted``).
* ``CountingSink`` (``cramp validate``): nothing kept but the counts.

``AcceptedTable.whole`` gives the rows back in input order, as one pass over the table would
have accepted them: within a bucket the rows are in that order already, with the held rows
admitted by this run first (their order is recorded, a few numbers); across buckets the order
of new rows is their file's place in the run, then ``source_line``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline import atomic
from pipeline.store import Store

_GROUP, _KEY = "__group", "__key"


@dataclass(frozen=True)
class WrittenPart:
    """One bucket's accepted rows of one table, as written."""

    bucket: int
    path: Path | None
    rows: int
    #: ``dedupe.ORDER`` of the admitted held rows, which are the part's first rows.
    admitted: pl.Series


@dataclass
class AcceptedTable:
    """A table's rows accepted by one run, bucket by bucket."""

    table: str
    #: The rows' columns and dtypes, as stored.
    schema: dict[str, pl.DataType]
    #: This run's files of the table, in the order they were read (``source_file`` values).
    files: tuple[str, ...]
    parts: list[WrittenPart] = field(default_factory=list)

    @property
    def height(self) -> int:
        return sum(p.rows for p in self.parts)

    def names(self) -> list[str]:
        return [p.path.name for p in self.parts if p.path is not None]

    def whole(self) -> pl.DataFrame:
        """Every accepted row, in input order."""
        if any(p.path is None and p.rows for p in self.parts):
            raise LookupError(f"the accepted rows of {self.table} were counted, not kept")
        index = {name: i for i, name in enumerate(self.files)}
        frames = []
        for part in self.parts:
            if not part.rows:
                continue
            rows = pl.read_parquet(part.path)
            k = part.admitted.len()
            admitted = rows.head(k).with_columns(pl.lit(0, dtype=pl.Int8).alias(_GROUP),
                                                 part.admitted.alias(_KEY))
            new = rows.slice(k).with_columns(
                pl.lit(1, dtype=pl.Int8).alias(_GROUP),
                (pl.col("source_file").replace_strict(index, return_dtype=pl.Int64) * (1 << 32)
                 + pl.col("source_line")).alias(_KEY))
            frames += [admitted, new]
        if not frames:
            return pl.DataFrame(schema=self.schema)
        return pl.concat(frames).sort(_GROUP, _KEY).drop(_GROUP, _KEY)


class AcceptedRows(Mapping):
    """Table -> its accepted rows in input order (``AcceptedTable.whole``, read when asked
    for; nothing is held in memory)."""

    def __init__(self, tables: dict[str, AcceptedTable], keep_alive: object = None):
        self.tables = tables
        self._keep_alive = keep_alive  # the temporary directory the parts are in, if any

    def __getitem__(self, table: str) -> pl.DataFrame:
        return self.tables[table].whole()

    def __iter__(self):
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)


class Sink:
    """Writes one bucket's accepted rows (``ORDER`` dropped) and says where they went."""

    def write(self, table: str, bucket: int, rows: pl.DataFrame, order: str,
              n_admitted_before: int) -> WrittenPart:
        """``rows``: the bucket's accepted rows in ``order``; those numbered below
        ``n_admitted_before`` are held rows admitted now (they come first)."""
        admitted = rows.get_column(order).filter(rows.get_column(order) < n_admitted_before)
        path = self._write(table, bucket, rows.drop(order)) if rows.height else None
        return WrittenPart(bucket, path, rows.height, admitted)

    def _write(self, table: str, bucket: int, rows: pl.DataFrame) -> Path | None:
        raise NotImplementedError

    def discard(self) -> None:
        """Delete what was written (the run failed before it committed)."""


class StoreSink(Sink):
    """Parts of the store, unlisted until ``Store.commit``."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._written: list[Path] = []

    def _write(self, table, bucket, rows):
        path = self.store.part_path(table, self.store.write_part(table, rows, bucket))
        with self._lock:
            self._written.append(path)
        return path

    def discard(self) -> None:
        """Delete the parts written that no manifest lists (if the failure came after the commit,
        the parts are the store's now and stay)."""
        try:
            listed = {p for parts in self.store.manifest.parts.values() for p in parts}
        except Exception:  # an unreadable manifest lists nothing this ingest wrote
            listed = set()
        with self._lock:
            for path in self._written:
                if path.name not in listed:
                    path.unlink(missing_ok=True)
            self._written.clear()


class TemporarySink(Sink):
    """Parquet files in a temporary directory, deleted with the result that reads them."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="cramp-validated-"))
        self.cleanup = weakref.finalize(self, shutil.rmtree, self.path, True)

    def _write(self, table, bucket, rows):
        path = self.path / f"{table}-b{bucket:04d}.parquet"
        with atomic.user_errors_for(self.path):
            rows.write_parquet(path)
        return path

    def discard(self) -> None:
        self.cleanup()


class CountingSink(Sink):
    """Keeps nothing: for a validation whose accepted rows nobody reads."""

    def _write(self, table, bucket, rows):
        return None
