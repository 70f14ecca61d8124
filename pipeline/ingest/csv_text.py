"""CSV as text with editor line numbers: a vectorised record scan beside polars' parser.

Record boundaries and field counts come from one pass over the bytes (numpy) that counts quotes,
so newlines and commas inside quoted fields are not mistaken for row or field breaks; polars
parses the fields. A file the fast path cannot model exactly (an unterminated quote, a quote in
the middle of an unquoted field, a lone CR line ending) is read with the standard library's
``csv`` module instead: slower, but exact and still forgiving. Big files are cut into pieces at
row boundaries so that only one piece is held as text at a time.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.errors import UserError
from pipeline.ingest.discover import TableFile
from pipeline.ingest.rows import (
    BOM,
    LINE,
    LONG_ROW_MESSAGE,
    MALFORMED,
    RECORD,
    RECORD_SCAN_CHARS,
    check_header_line,
    check_width,
)
from pipeline.schema import MAX_LINE_BYTES

#: Bytes scanned per numpy pass: bounds the temporary arrays on big files.
_SCAN_BYTES = 1 << 23

_QUOTE, _COMMA, _LF, _CR = 34, 44, 10, 13


def _piece(data: bytes, file: TableFile, line_offset: int = 0):
    """A piece to parse later (on any thread): ``() -> (header, frame)``."""
    def read() -> tuple[list[str], pl.DataFrame]:
        header, frame = _read_csv(data, file)
        return header, frame.with_columns(pl.col(LINE) + line_offset) if line_offset else frame
    return read


def _plain_csv_pieces(data: bytes, file: TableFile, chunk_bytes: int):
    """Pieces of a CSV without quotes: cut after the first LF past each ``chunk_bytes`` mark."""
    start, line = 0, 1
    while data.startswith(b"\n", start) or data.startswith(b"\r\n", start):
        start = data.index(b"\n", start) + 1
        line += 1
    end = data.find(b"\n", start)
    if end < 0:
        yield _piece(data, file)
        return
    header_bytes = data[start:end].removesuffix(b"\r")
    a, line = end + 1, line + 1
    while a < len(data):
        cut = data.find(b"\n", a + chunk_bytes)
        b = len(data) if cut < 0 else cut + 1
        yield _piece(header_bytes + b"\n" + data[a:b], file, line - 2)
        line += data.count(b"\n", a, b)
        a = b


def csv_pieces(data: bytes, file: TableFile, chunk_bytes: int | None):
    """The pieces of a CSV cut at record boundaries, each a callable that parses it: cutting is
    cheap and runs here, in order; the parsing can run on any thread. Line numbers are those of
    the whole file."""
    if data.startswith(BOM):
        data = data[len(BOM):]
    if chunk_bytes is None or len(data) <= chunk_bytes:
        yield _piece(data, file)
        return
    if b'"' not in data and (b"\r" not in data or data.count(b"\r") == data.count(b"\r\n")):
        # No quoting and no lone CR: every LF ends a row, so cut points need no scan.
        yield from _plain_csv_pieces(data, file, chunk_bytes)
        return
    buf = np.frombuffer(data, dtype=np.uint8)
    records = _scan_records(buf, per_record=False)
    non_blank = (np.flatnonzero(records.stops > records.starts) if records is not None
                 else np.zeros(0, np.int64))
    if records is None or non_blank.size < 2:
        yield _piece(data, file)
        return
    h = int(non_blank[0])
    header_bytes = data[records.starts[h]: records.stops[h]]
    first_line_in_piece = header_bytes.count(b"\n") + 2
    starts = records.starts[h + 1:]
    lines = records.lines[h + 1:]
    cuts = np.unique(np.searchsorted(starts, np.arange(int(starts[0]), buf.size, chunk_bytes)))
    cuts = np.append(cuts[cuts < starts.size], starts.size)
    for i, j in zip(cuts[:-1], cuts[1:]):
        a = int(starts[i])
        b = int(starts[j]) if j < starts.size else buf.size
        yield _piece(header_bytes + b"\n" + data[a:b], file,
                     int(lines[i]) - first_line_in_piece)


@dataclass(frozen=True)
class _Records:
    """Record (row) boundaries of a CSV byte buffer: [start, stop) excluding the line break."""

    starts: np.ndarray
    stops: np.ndarray
    lines: np.ndarray
    #: Separators outside quotes, per record (None unless asked for) and in total.
    commas: np.ndarray | None
    total_commas: int


def _scan_records(buf: np.ndarray, *, per_record: bool) -> _Records | None:
    """Vectorised record scan; None when the quoting is not plain RFC 4180 (use the slow path).

    ``per_record=False`` only totals the separators, which is enough to prove a file regular;
    the per-record counts are computed when a file turns out to have ragged rows.
    """
    n = buf.size
    ends: list[np.ndarray] = []
    end_line_breaks: list[np.ndarray] = []
    comma_counts: list[tuple[int, np.ndarray]] = []
    quotes_before = breaks_before = records_before = total_commas = 0
    for a in range(0, n, _SCAN_BYTES):
        chunk = buf[a: a + _SCAN_BYTES]
        q = np.flatnonzero(chunk == _QUOTE) + a
        if q.size and not _quotes_well_formed(buf, q, quotes_before):
            return None
        cr = np.flatnonzero(chunk == _CR) + a
        if cr.size and bool((buf[np.minimum(cr + 1, n - 1)] != _LF).any() or cr[-1] == n - 1):
            return None  # a lone CR (old Mac line ending): editors break the line there
        nl = np.flatnonzero(chunk == _LF) + a
        if q.size:
            outside = (quotes_before + np.searchsorted(q, nl)) % 2 == 0
            chunk_ends = nl[outside]
            ordinals = np.flatnonzero(outside) + breaks_before
        elif quotes_before % 2 == 0:
            chunk_ends = nl
            ordinals = np.arange(nl.size) + breaks_before
        else:
            chunk_ends = ordinals = nl[:0]
        if q.size or per_record:
            c = np.flatnonzero(chunk == _COMMA) + a
            if q.size:
                c = c[(quotes_before + np.searchsorted(q, c)) % 2 == 0]
            elif quotes_before % 2:
                c = c[:0]
            total_commas += c.size
            if per_record and c.size:
                record_of = records_before + np.searchsorted(chunk_ends, c)
                first = int(record_of[0])
                comma_counts.append((first, np.bincount(record_of - first)))
        elif quotes_before % 2 == 0:
            total_commas += int(np.count_nonzero(chunk == _COMMA))
        ends.append(chunk_ends)
        end_line_breaks.append(ordinals)
        quotes_before += q.size
        breaks_before += nl.size
        records_before += chunk_ends.size
    if quotes_before % 2:
        return None  # an unterminated quoted field
    all_ends = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
    ordinals = np.concatenate(end_line_breaks) if end_line_breaks else np.zeros(0, np.int64)
    starts = np.concatenate([[0], all_ends + 1]).astype(np.int64)
    stops = np.concatenate([all_ends, [n]]).astype(np.int64)
    lines = np.concatenate([[1], ordinals + 2]).astype(np.int64)
    if starts[-1] >= n:  # nothing after the final line break
        starts, stops, lines = starts[:-1], stops[:-1], lines[:-1]
    counts = None
    if per_record:
        counts = np.zeros(starts.size, dtype=np.int64)
        for first, part in comma_counts:
            upto = min(first + part.size, counts.size)
            counts[first:upto] += part[: upto - first]
    # A CR before the LF belongs to the line break, not to the last field.
    has_cr = (stops > starts) & (buf[np.maximum(stops - 1, 0)] == _CR)
    stops = stops - has_cr
    return _Records(starts=starts, stops=stops, lines=lines, commas=counts,
                    total_commas=total_commas)


def _quotes_well_formed(buf: np.ndarray, q: np.ndarray, quotes_before: int) -> bool:
    """Every quote opens a field, closes one, or is half of an escaped ``""`` pair."""
    n = buf.size
    opening = (np.arange(q.size) + quotes_before) % 2 == 0
    o = q[opening]
    prev = buf[np.maximum(o - 1, 0)]
    ok_open = (o == 0) | (prev == _COMMA) | (prev == _LF) | (prev == _QUOTE)
    c = q[~opening]
    nxt = buf[np.minimum(c + 1, n - 1)]
    ok_close = (c == n - 1) | (nxt == _COMMA) | (nxt == _LF) | (nxt == _CR) | (nxt == _QUOTE)
    return bool(ok_open.all() and ok_close.all())


def _polars_csv(data: bytes, *, ragged: bool) -> pl.DataFrame | None:
    # Strict UTF-8 first: about a fifth faster than the lossy decoder, and the same text when
    # the bytes are valid UTF-8 (the lossy one only replaces invalid sequences, by U+FFFD).
    for encoding in ("utf8", "utf8-lossy"):
        try:
            return pl.read_csv(data, has_header=True, infer_schema=False,
                               truncate_ragged_lines=ragged, encoding=encoding,
                               raise_if_empty=False, quote_char='"')
        except pl.exceptions.PolarsError as error:
            if "utf-8" not in str(error).lower():
                return None
    return None


def _read_csv(data: bytes, file: TableFile) -> tuple[list[str], pl.DataFrame]:
    if data.startswith(BOM):
        data = data[len(BOM):]
    buf = np.frombuffer(data, dtype=np.uint8)
    records = _scan_records(buf, per_record=False) if buf.size else None
    if records is None:
        return _read_csv_python(data, file)
    blank = records.stops == records.starts
    non_blank = np.flatnonzero(~blank)
    if non_blank.size == 0:
        raise UserError("is empty (expected a header line naming the columns)",
                        path=file.relative_path)
    h = int(non_blank[0])
    check_header_line(int(records.stops[h] - records.starts[h]), file)
    header_text = data[records.starts[h]: records.stops[h]].decode("utf-8", errors="replace")
    header = next(csv.reader([header_text]))
    check_width(len(header), file)
    width = len(header)
    keep = ~blank[h + 1:]
    long = keep & ((records.stops - records.starts)[h + 1:] > MAX_LINE_BYTES)
    n_after = records.starts.size - h - 1
    # Regular file: polars accepts no row with too many fields, and the separator total says no
    # row has too few. Otherwise count fields per row to find the malformed ones.
    frame = _polars_csv(data, ragged=False)
    expected = (width - 1) * (1 + int(keep.sum()))
    regular = frame is not None and records.total_commas == expected and not long.any()
    if not regular:
        records = _scan_records(buf, per_record=True)
        frame = _polars_csv(data, ragged=True)
    if records is None or frame is None or frame.width != width or frame.height != n_after:
        return _read_csv_python(data, file)
    if regular:
        malformed = pl.lit(None, dtype=pl.String)
        record_text = pl.lit(None, dtype=pl.String)
    else:
        fields = records.commas[h + 1:] + 1
        bad = keep & ((fields != width) | long)
        bad_index = np.flatnonzero(bad)
        malformed = pl.select(
            pl.when(pl.Series(long)).then(pl.lit(LONG_ROW_MESSAGE))
            .when(pl.Series(bad))
            .then(pl.format("expected {} fields, found {}", pl.lit(width), pl.Series(fields)))
            .otherwise(None)
        ).to_series()
        texts = []
        for i in bad_index:  # only the malformed rows
            a, b = records.starts[h + 1 + i], records.stops[h + 1 + i]
            texts.append(data[a: min(b, a + 4 * RECORD_SCAN_CHARS)].decode(
                "utf-8", errors="replace")[:RECORD_SCAN_CHARS])
        record_text = pl.Series([None], dtype=pl.String).extend_constant(None, n_after - 1) \
            if n_after else pl.Series([], dtype=pl.String)
        if bad_index.size:
            record_text = record_text.scatter(bad_index, pl.Series(texts, dtype=pl.String))
    frame = frame.with_columns(
        pl.Series(LINE, records.lines[h + 1:], dtype=pl.Int64),
        malformed.alias(MALFORMED),
        record_text.alias(RECORD),
    )
    if not keep.all():
        frame = frame.filter(pl.Series(keep))
    return header, frame


class _Lines:
    """The lines of ``text`` (endings kept, as ``csv`` wants them), with the offset of the next."""

    def __init__(self, text: str):
        self.text = text
        self.offset = 0

    def __iter__(self):
        for line in io.StringIO(self.text, newline=""):
            yield line
            self.offset += len(line)


def _read_csv_python(data: bytes, file: TableFile) -> tuple[list[str], pl.DataFrame]:
    """Exact, forgiving fallback for quoting the vectorised scan does not model.

    Like the fast path, a row it cannot read (a field over ``MAX_LINE_BYTES``, bytes ``csv``
    rejects) is quarantined, never the whole file; and a quote left open, which makes the rest
    of the file one row, quarantines that row with a message naming the line where it opened.
    """
    text = data.decode("utf-8", errors="replace")
    if csv.field_size_limit() < MAX_LINE_BYTES:
        csv.field_size_limit(MAX_LINE_BYTES)
    source = _Lines(text)
    reader = csv.reader(source)
    header: list[str] | None = None
    rows: list[list[str | None]] = []
    lines: list[int] = []
    malformed: list[str | None] = []
    records: list[str | None] = []
    previous_line = 0
    last_offset = 0
    while True:
        start = previous_line + 1
        offset = source.offset
        try:
            row = next(reader)
            error = None
        except StopIteration:
            break
        except csv.Error as caught:
            row, error = [], caught
        previous_line = reader.line_num
        if error is not None and header is None:
            raise UserError(f"the header cannot be parsed as CSV ({error})",
                            path=file.relative_path, line=start)
        if not row and error is None:
            continue
        if header is None:
            check_header_line(len(",".join(row).encode()), file)
            check_width(len(row), file)
            header = row
            continue
        width = len(header)
        last_offset = offset
        fields = [v if v != "" else None for v in row[:width]] + [None] * (width - len(row))
        rows.append(fields)
        lines.append(start)
        if error is not None:
            malformed.append(LONG_ROW_MESSAGE if "field limit" in str(error)
                             else f"cannot be parsed as CSV ({error})")
            records.append(text[offset: offset + RECORD_SCAN_CHARS])
        elif len(row) != width:
            malformed.append(f"expected {width} fields, found {len(row)}")
            records.append(",".join(row)[:RECORD_SCAN_CHARS])
        else:
            malformed.append(None)
            records.append(None)
    if header is None:
        raise UserError("is empty (expected a header line naming the columns)",
                        path=file.relative_path)
    if rows and _unterminated(text[last_offset:]):
        malformed[-1] = (f"a quoted field opened in this row is never closed, so lines "
                         f"{lines[-1]} to {previous_line} (the end of the file) were read as one "
                         "row; close the quote and export again")
        records[-1] = text[last_offset: last_offset + RECORD_SCAN_CHARS]
    names = [f"__c{i}" for i in range(len(header))]
    columns = list(zip(*rows)) if rows else [[] for _ in names]
    frame = pl.DataFrame({n: pl.Series(n, list(col), dtype=pl.String)
                          for n, col in zip(names, columns)})
    frame = frame.with_columns(
        pl.Series(LINE, lines, dtype=pl.Int64),
        pl.Series(MALFORMED, malformed, dtype=pl.String),
        pl.Series(RECORD, records, dtype=pl.String),
    )
    return header, frame


def _unterminated(last_record: str) -> bool:
    """Whether the file's last record ends inside a quoted field (a quote never closed)."""
    if '"' not in last_record:
        return False
    try:
        for _ in csv.reader(io.StringIO(last_record, newline=""), strict=True):
            pass
    except csv.Error as error:
        return "unexpected end of data" in str(error)
    return False
