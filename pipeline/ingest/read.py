"""Read one table file as text, keeping the line each row came from.

Every value is read as a string (validation casts later, and compares, to find what failed), and
each row carries:

* ``__line``: the 1-based line where the row starts as an editor shows it (the header is line 1,
  a quoted field spanning lines pushes later rows down, blank lines are skipped but counted);
  for Parquet, the row index;
* ``__malformed``: null, or why the row could not be parsed (wrong number of fields, invalid JSON);
* ``__record``: for malformed rows only, the raw text of the row (masked before it is written).

A ``.csv.gz`` is decompressed in steps under the limits of ``schema`` (size and ratio), and every
reader refuses a file wider than ``MAX_COLUMNS_PER_FILE`` as soon as its header is known.

The format readers live in ``csv_text`` and ``jsonl_text``; Parquet is read here, in row ranges
(``PARQUET_PIECE_ROWS``). Its values are typed already: a column of a type a contract kind
stores as it is (``rows.PASSED_TYPED``: Float64, Int64, Boolean, Date, Datetime in microseconds)
stays typed, for validation to check as it is (casting 36M numbers to text to parse them back
cost a third of a big ingest); every other column is cast to text, so that validation treats it
as any format's text.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import polars as pl

from pipeline.errors import UserError
from pipeline.ingest.csv_text import csv_pieces
from pipeline.ingest.discover import TableFile
from pipeline.ingest.jsonl_text import read_jsonl
from pipeline.ingest.rows import LINE, MALFORMED, PASSED_TYPED, RECORD, as_text, check_width
from pipeline.schema import (
    MAX_DECOMPRESSED_BYTES,
    MAX_DECOMPRESSION_RATIO,
    RATIO_CHECK_FROM_BYTES,
    TABLES,
)

__all__ = ["LINE", "MALFORMED", "RECORD", "RawTable", "estimate_rows", "read_bytes",
           "read_table_chunks", "read_table_file", "read_table_pieces"]

#: A big CSV is read and validated in pieces of about this size (bounds peak memory).
CHUNK_BYTES = 48 << 20
#: A big Parquet file is read and validated in pieces of this many rows (about 150 MB as text
#: for a daily table): its bytes are held once, its rows as text one piece per thread.
PARQUET_PIECE_ROWS = 1 << 20


@dataclass(frozen=True)
class RawTable:
    """One file read as text: a frame of string columns plus the row bookkeeping columns."""

    file: TableFile
    frame: pl.DataFrame
    #: Column names as written in the file, in file order.
    header: tuple[str, ...]
    #: The same names normalised (the frame's column names), in file order.
    columns: tuple[str, ...]


def normalise_header(name: str, position: int) -> str:
    """``' Subject ID '`` -> ``'subject_id'``: trimmed, lower case, spaces and dashes to ``_``.

    A column with an empty name (a trailing comma in the header) becomes ``unnamed_<position>``
    (1-based), an unknown column like any other.
    """
    name = re.sub(r"[\s\-]+", "_", name.strip().lower())
    return name or f"unnamed_{position}"


def read_bytes(file: TableFile) -> bytes:
    """The file's bytes as stored on disk (the sha256 is taken over these)."""
    try:
        return file.path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read file: {error.strerror}", path=file.relative_path) from None


def read_table_file(file: TableFile, data: bytes | None = None) -> RawTable:
    """Read ``file`` (all formats) into one :class:`RawTable` of strings."""
    chunks = list(read_table_chunks(file, data, chunk_bytes=None))
    assert len(chunks) == 1
    return chunks[0]


def read_table_chunks(file: TableFile, data: bytes | None = None,
                      *, chunk_bytes: int | None = CHUNK_BYTES) -> Iterator[RawTable]:
    """Read ``file`` as one or more :class:`RawTable` s, in row order.

    A big CSV is cut at row boundaries into pieces of about ``chunk_bytes`` so that only one
    piece is held as text at a time (peak memory); line numbers are those of the whole file.
    """
    for piece in read_table_pieces(file, data, chunk_bytes=chunk_bytes):
        yield piece()


def read_table_pieces(file: TableFile, data: bytes | None = None,
                      *, chunk_bytes: int | None = CHUNK_BYTES) -> Iterator[Callable[[], RawTable]]:
    """The pieces of ``file`` in row order, each a callable that reads it into a
    :class:`RawTable`: the file is decompressed and cut here, and the pieces can be parsed on
    any thread (the CSV parse and the validation of one piece do not depend on another's)."""
    if data is None:
        data = read_bytes(file)
    if file.format == "csv.gz":
        data = decompress_gzip(data, file)
    if file.format in ("csv", "csv.gz", "jsonl") and not data.strip() \
            and not TABLES[file.table].required:
        # An empty file of an optional table (a zero-byte injuries.csv) says none were logged:
        # read it as a header-only file, so it counts as "no injuries", not as "not recorded".
        data = ",".join(TABLES[file.table].required_columns).encode() + b"\n"
        pieces = csv_pieces(data, file, chunk_bytes)
    elif file.format in ("csv", "csv.gz"):
        pieces = csv_pieces(data, file, chunk_bytes)
    elif file.format == "jsonl":
        pieces = iter([partial(read_jsonl, data, file)])
    elif file.format == "parquet":
        pieces = _parquet_pieces(data, file, PARQUET_PIECE_ROWS if chunk_bytes else None)
    else:  # pragma: no cover - discover only yields known formats
        raise AssertionError(file.format)
    del data
    for piece in pieces:
        yield partial(_as_raw_table, piece, file)


def _as_raw_table(piece: Callable, file: TableFile) -> RawTable:
    header, frame = piece()
    check_width(len(header), file)
    columns = tuple(normalise_header(h, i) for i, h in enumerate(header, start=1))
    _check_unique(header, columns, file)
    frame = frame.rename(dict(zip(_frame_value_columns(frame), columns)))
    return RawTable(file=file, frame=frame, header=tuple(header), columns=columns)


def decompress_gzip(data: bytes, file: TableFile) -> bytes:
    """Decompress a ``.csv.gz`` in steps, refusing a gzip bomb before it fills memory.

    Refused (``UserError``) when the output passes ``MAX_DECOMPRESSED_BYTES``, or, once past
    ``RATIO_CHECK_FROM_BYTES``, grows more than ``MAX_DECOMPRESSION_RATIO`` times the compressed
    bytes read so far. Concatenated members (``cat a.gz b.gz``) and trailing zero padding are read
    as ``gzip`` reads them.
    """
    return b"".join(_gunzip_steps(data, file))


def _gunzip_steps(data: bytes, file: TableFile) -> Iterator[bytes]:
    """The decompressed bytes of ``data`` in steps, under :func:`decompress_gzip`'s limits."""
    offset, n, produced = 0, len(data), 0
    try:
        while offset < n:
            member = zlib.decompressobj(wbits=31)  # expects the gzip header and trailer
            while not member.eof:
                if offset >= n:
                    raise EOFError("compressed file ended before the end-of-stream marker")
                pending = data[offset: offset + _GZIP_STEP_IN]
                offset += len(pending)
                while pending and not member.eof:
                    out = member.decompress(pending, _GZIP_STEP_OUT)
                    produced += len(out)
                    _check_bomb(produced, offset, file)
                    yield out
                    pending = member.unconsumed_tail
            offset -= len(member.unused_data)
            if offset < n and data[offset] == 0 and data.count(0, offset) == n - offset:
                break  # zero padding after the last member
    except (zlib.error, EOFError) as error:
        raise UserError(f"is not a readable gzip file ({error})",
                        path=file.relative_path) from None


def estimate_rows(file: TableFile) -> int:
    """About how many rows ``file`` holds, before it is read (never fewer): the row count in a
    Parquet file's footer; the lines of a text file (less the header of a CSV). Ingest chooses
    the number of subject buckets from it, since every piece is routed to its bucket as soon as
    it is validated. A file that cannot be read counts 0 here: reading it refuses it, with the
    reason."""
    try:
        if file.format == "parquet":
            return int(pl.scan_parquet(file.path).select(pl.len()).collect().item())
        if file.format == "csv.gz":
            steps = _gunzip_steps(file.path.read_bytes(), file)
        else:
            steps = _file_steps(file.path)
        lines, last = 0, b"\n"
        for step in steps:
            if step:
                lines += step.count(b"\n")
                last = step[-1:]
        lines += last != b"\n"
    except (UserError, OSError, pl.exceptions.PolarsError):
        return 0
    return max(0, lines - 1) if file.format in ("csv", "csv.gz") else lines


def _file_steps(path, step: int = 16 << 20) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(step):
            yield chunk


_GZIP_STEP_IN = 1 << 16
_GZIP_STEP_OUT = 1 << 22


def _check_bomb(produced: int, consumed: int, file: TableFile) -> None:
    if produced > MAX_DECOMPRESSED_BYTES:
        raise UserError(f"decompresses to more than {MAX_DECOMPRESSED_BYTES >> 20:,} MiB (the "
                        "limit per file, MAX_DECOMPRESSED_BYTES); split the export into several "
                        "files in a directory", path=file.relative_path)
    if produced > RATIO_CHECK_FROM_BYTES and produced > MAX_DECOMPRESSION_RATIO * consumed:
        raise UserError(f"expands more than {MAX_DECOMPRESSION_RATIO} times when decompressed, "
                        "which no diary export does (a damaged file or a zip bomb); the file is "
                        "refused", path=file.relative_path)


def _frame_value_columns(frame: pl.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in (LINE, MALFORMED, RECORD)]


def _check_unique(header, columns, file: TableFile) -> None:
    seen: dict[str, str] = {}
    for raw, name in zip(header, columns):
        if name in seen:
            raise UserError(f"column {raw!r} appears twice (as {seen[name]!r} and {raw!r}); "
                            "each column must appear once", path=file.relative_path)
        seen[name] = raw



def _parquet_pieces(data: bytes, file: TableFile,
                    piece_rows: int | None) -> Iterator[Callable[[], tuple[list[str], pl.DataFrame]]]:
    """The row ranges of a Parquet file, ``piece_rows`` each (None: one), as readers; the
    footer is checked here (width, readability) so that a refused file starts no piece."""
    try:
        check_width(len(pl.read_parquet_schema(io.BytesIO(data))), file,
                    hint="store one column per contract column")
        rows = int(pl.scan_parquet(data).select(pl.len()).collect().item())
    except (pl.exceptions.PolarsError, OSError) as error:
        raise UserError(f"is not a readable Parquet file ({error})",
                        path=file.relative_path) from None
    step = max(rows, 1) if piece_rows is None else piece_rows
    for offset in range(0, max(rows, 1), step):
        yield partial(_read_parquet, data, file, offset, step)


def _read_parquet(data: bytes, file: TableFile, offset: int = 0,
                  length: int | None = None) -> tuple[list[str], pl.DataFrame]:
    """Rows ``offset .. offset + length`` of a Parquet file, every value as text (``LINE``: the
    row index in the file). Polars reads only the row groups that hold them."""
    try:
        frame = pl.scan_parquet(data).slice(offset, length).collect()
    except (pl.exceptions.PolarsError, OSError) as error:
        raise UserError(f"is not a readable Parquet file ({error})",
                        path=file.relative_path) from None
    header = list(frame.columns)
    names = [f"__c{i}" for i in range(len(header))]
    frame.columns = names
    try:
        # Numbers, booleans, dates and date-times that the contract may hold as they are stay
        # typed (``validate.TYPED_KINDS``: validation casts them to text only for the rows that
        # fail, or when the column's kind wants text); every other column becomes text here.
        frame = frame.select(pl.col(n) if frame.schema[n] in PASSED_TYPED else as_text(frame, n)
                             for n in names)
    except pl.exceptions.PolarsError:
        unreadable = [h for h, n in zip(header, names) if not _castable(frame, n)]
        raise UserError(f"column(s) {', '.join(map(repr, unreadable))} have a Parquet type that "
                        "cannot be read as text (e.g. a duration); store them as text or numbers",
                        path=file.relative_path) from None
    frame = frame.with_columns(
        pl.int_range(offset, offset + pl.len(), dtype=pl.Int64).alias(LINE),
        pl.lit(None, dtype=pl.String).alias(MALFORMED),
        pl.lit(None, dtype=pl.String).alias(RECORD),
    )
    return header, frame


def _castable(frame: pl.DataFrame, name: str) -> bool:
    try:
        frame.head(1).select(as_text(frame, name))
        return True
    except pl.exceptions.PolarsError:
        return False
