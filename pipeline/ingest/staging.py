"""Where ingest keeps validated rows between reading them and checking them: on disk, by subject
bucket, so that memory holds one piece or one bucket at a time, never the dataset.

Each validated piece of a file (``read.read_table_pieces``) is split by subject bucket
(``execution.split_by_bucket``) and each part written as an Arrow IPC file, ``<table>/
p<piece>-b<bucket>.arrow``: names made of counters, never of a value or a file name (a data file
can be named after a person). The first ``MEMORY_BYTES`` of rows stay in memory instead (writing
a small dataset out and reading it back would only cost time). The cross-row checks then read one bucket of one table at a time
(:meth:`Staging.bucket`), and the cross-bucket ``episode_id`` check scans the key column of
every bucket (:meth:`Staging.scan`).

A piece's rows carry their place in the piece (``PIECE_ROW``); once every piece of a table has
been validated its pieces' sizes give each row its place in the table (``dedupe.ORDER``), so
"earlier" means what it means in one pass over the whole table.

For ``ingest`` the staging directory lies inside the store (``.staging-<random>``, so it is on
the file system the parts go to) and is not part of it: readers look only at what the manifest
lists, the directory is removed when the ingest ends, and a directory left by a killed ingest is
removed by the next one (``Store.remove_orphans``). For ``validate`` it is a temporary directory.
A write that fails because of the environment (disk full, permissions) is one ``UserError``
naming the directory (``atomic.user_errors_for``).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from pathlib import Path

import polars as pl

from pipeline import atomic
from pipeline.execution import split_by_bucket
from pipeline.store import STAGING_PREFIX

#: Staged rows are kept in memory up to about this many bytes, and written to files beyond it:
#: a dataset this small (3M subject-days) is checked as fast as if it had never been staged,
#: and a big one costs this much memory more than its pieces and buckets, whatever its size.
MEMORY_BYTES = 512 << 20
#: A row's place in its validated piece (the table order is added when a bucket is read).
PIECE_ROW = "__piece_row"
#: Uncompressed: written and read at memory speed; staging is deleted within the same run (lz4
#: would make the files about 5 times smaller and cost about twice the CPU time).
STAGING_COMPRESSION = "uncompressed"


class Staging:
    """Validated rows of every table, by subject bucket, in files under ``path``.

    ``put`` may be called from several threads (one per piece); ``bucket`` and ``scan`` are
    called once every piece of the table is in.
    """

    def __init__(self, path: Path, n_buckets: int):
        """``path``: a new, empty directory (see :meth:`inside`, :meth:`temporary`)."""
        self.path = Path(path)
        self.n_buckets = n_buckets
        self._lock = threading.Lock()
        #: table -> bucket -> [(piece, file or rows kept in memory)]
        self._files: dict[str, list[list[tuple[int, Path | pl.DataFrame]]]] = {}
        #: table -> bytes of its rows kept in memory; the memory allowed (``MEMORY_BYTES``)
        self._in_memory: dict[str, int] = {}
        self._memory_bytes = MEMORY_BYTES

    @classmethod
    def inside(cls, directory: Path, n_buckets: int) -> Staging:
        """A new staging directory inside ``directory`` (a store)."""
        path = Path(directory) / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        with atomic.user_errors_for(path):
            path.mkdir()
        return cls(path, n_buckets)

    @classmethod
    def temporary(cls, n_buckets: int) -> Staging:
        """A new staging directory under the system's temporary directory (``$TMPDIR``)."""
        with atomic.user_errors_for(tempfile.gettempdir()):
            return cls(Path(tempfile.mkdtemp(prefix="cramp-staging-")), n_buckets)

    def put(self, table: str, piece: int, rows: pl.DataFrame) -> None:
        """Route one validated piece (``piece``: its number in the table, in file order) to its
        buckets and write them."""
        rows = rows.with_row_index(PIECE_ROW)
        parts = [rows] if self.n_buckets == 1 else split_by_bucket(rows, "subject_id",
                                                                   self.n_buckets)
        size = rows.estimated_size()
        del rows
        with self._lock:
            keep = sum(self._in_memory.values()) + size <= self._memory_bytes
            if keep:
                self._in_memory[table] = self._in_memory.get(table, 0) + size
        staged = []
        if keep:
            staged = [(b, part) for b, part in enumerate(parts) if part.height]
        else:
            directory = self.path / table
            with atomic.user_errors_for(self.path):
                directory.mkdir(parents=True, exist_ok=True)
                for b, part in enumerate(parts):
                    if part.height:
                        name = directory / f"p{piece:06d}-b{b:04d}.arrow"
                        part.write_ipc(name, compression=STAGING_COMPRESSION)
                        staged.append((b, name))
        with self._lock:
            files = self._files.setdefault(table, [[] for _ in range(self.n_buckets)])
            for b, where in staged:
                files[b].append((piece, where))

    def bucket(self, table: str, b: int, offsets: dict[int, int], order: str,
               schema: dict[str, pl.DataType]) -> pl.DataFrame:
        """The staged rows of bucket ``b`` in table order, each numbered ``order`` =
        ``offsets[piece]`` + its place in the piece; ``schema`` when there are none."""
        return self.scan(table, b, offsets, order, schema).collect()

    def scan(self, table: str, b: int, offsets: dict[int, int], order: str,
             schema: dict[str, pl.DataType]) -> pl.LazyFrame:
        """:meth:`bucket` as a lazy frame (to read a few columns of it)."""
        files = sorted(self._files.get(table, [[]] * self.n_buckets)[b], key=lambda f: f[0])
        if not files:
            return pl.LazyFrame(schema=schema)
        frames = [(pl.scan_ipc(where) if isinstance(where, Path) else where.lazy()).with_columns(
            (pl.col(PIECE_ROW).cast(pl.Int64) + offsets[piece]).alias(order)).drop(PIECE_ROW)
            for piece, where in files]
        return pl.concat(frames, how="vertical_relaxed").select(list(schema))

    def drop(self, table: str) -> None:
        """Delete a table's staged rows (its checks are done)."""
        with self._lock:
            self._files.pop(table, None)
            self._in_memory.pop(table, None)
        shutil.rmtree(self.path / table, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
