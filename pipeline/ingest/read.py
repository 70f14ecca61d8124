"""Read one table file as text, keeping the line each row came from.

Every value is read as a string (validation casts later, and compares, to find what failed), and
each row carries:

* ``__line``: the 1-based line where the row starts as an editor shows it (the header is line 1,
  a quoted field spanning lines pushes later rows down, blank lines are skipped but counted);
  for Parquet, the row index;
* ``__malformed``: null, or why the row could not be parsed (wrong number of fields, invalid JSON);
* ``__record``: for malformed rows only, the raw text of the row (masked before it is written).

CSV goes through polars' parser; record boundaries and field counts come from one vectorised
pass over the bytes (numpy), which counts quotes so that newlines and commas inside quoted fields
are not mistaken for row or field breaks. A file the fast path cannot model exactly (an
unterminated quote, a quote in the middle of an unquoted field, a lone CR line ending) is read
with the standard library's ``csv`` module instead: slower, but exact and still forgiving.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.errors import UserError
from pipeline.ingest.discover import TableFile

LINE = "__line"
MALFORMED = "__malformed"
RECORD = "__record"
BOM = b"\xef\xbb\xbf"
#: The raw text of a malformed row is cut to this many characters in the quarantine.
RECORD_PREVIEW_CHARS = 200
#: A big CSV is read and validated in pieces of about this size (bounds peak memory).
CHUNK_BYTES = 48 << 20
#: Bytes scanned per numpy pass: bounds the temporary arrays on big files.
_CHUNK_BYTES = 1 << 23

_QUOTE, _COMMA, _LF, _CR = 34, 44, 10, 13


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
    if data is None:
        data = read_bytes(file)
    if file.format == "csv.gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise UserError(f"is not a readable gzip file ({error})",
                            path=file.relative_path) from None
    if file.format in ("csv", "csv.gz"):
        pieces = _read_csv_chunks(data, file, chunk_bytes)
    elif file.format == "jsonl":
        pieces = iter([_read_jsonl(data, file)])
    elif file.format == "parquet":
        pieces = iter([_read_parquet(data, file)])
    else:  # pragma: no cover - discover only yields known formats
        raise AssertionError(file.format)
    del data
    for header, frame in pieces:
        columns = tuple(normalise_header(h, i) for i, h in enumerate(header, start=1))
        _check_unique(header, columns, file)
        frame = frame.rename(dict(zip(_frame_value_columns(frame), columns)))
        yield RawTable(file=file, frame=frame, header=tuple(header), columns=columns)


def _read_plain_csv_chunks(data: bytes, file: TableFile, chunk_bytes: int):
    """Pieces of a CSV without quotes: cut after the first LF past each ``chunk_bytes`` mark."""
    start, line = 0, 1
    while data.startswith(b"\n", start) or data.startswith(b"\r\n", start):
        start = data.index(b"\n", start) + 1
        line += 1
    end = data.find(b"\n", start)
    if end < 0:
        yield _read_csv(data, file)
        return
    header_bytes = data[start:end].removesuffix(b"\r")
    a, line = end + 1, line + 1
    while a < len(data):
        cut = data.find(b"\n", a + chunk_bytes)
        b = len(data) if cut < 0 else cut + 1
        header, frame = _read_csv(header_bytes + b"\n" + data[a:b], file)
        yield header, frame.with_columns(pl.col(LINE) + (line - 2))
        line += data.count(b"\n", a, b)
        a = b


def _read_csv_chunks(data: bytes, file: TableFile, chunk_bytes: int | None):
    """Yield (header, frame) per piece of a CSV cut at record boundaries."""
    if data.startswith(BOM):
        data = data[len(BOM):]
    if chunk_bytes is None or len(data) <= chunk_bytes:
        yield _read_csv(data, file)
        return
    if b'"' not in data and (b"\r" not in data or data.count(b"\r") == data.count(b"\r\n")):
        # No quoting and no lone CR: every LF ends a row, so cut points need no scan.
        yield from _read_plain_csv_chunks(data, file, chunk_bytes)
        return
    buf = np.frombuffer(data, dtype=np.uint8)
    records = _scan_records(buf, per_record=False)
    non_blank = (np.flatnonzero(records.stops > records.starts) if records is not None
                 else np.zeros(0, np.int64))
    if records is None or non_blank.size < 2:
        yield _read_csv(data, file)
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
        header, frame = _read_csv(header_bytes + b"\n" + data[a:b], file)
        offset = int(lines[i]) - first_line_in_piece
        yield header, frame.with_columns(pl.col(LINE) + offset)


def _frame_value_columns(frame: pl.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in (LINE, MALFORMED, RECORD)]


def _check_unique(header, columns, file: TableFile) -> None:
    seen: dict[str, str] = {}
    for raw, name in zip(header, columns):
        if name in seen:
            raise UserError(f"column {raw!r} appears twice (as {seen[name]!r} and {raw!r}); "
                            "each column must appear once", path=file.relative_path)
        seen[name] = raw


# --- CSV -----------------------------------------------------------------------------------------


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
    for a in range(0, n, _CHUNK_BYTES):
        chunk = buf[a: a + _CHUNK_BYTES]
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
    try:
        return pl.read_csv(data, has_header=True, infer_schema=False,
                           truncate_ragged_lines=ragged, encoding="utf8-lossy",
                           raise_if_empty=False, quote_char='"')
    except pl.exceptions.PolarsError:
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
    header_text = data[records.starts[h]: records.stops[h]].decode("utf-8", errors="replace")
    header = next(csv.reader([header_text]))
    width = len(header)
    keep = ~blank[h + 1:]
    n_after = records.starts.size - h - 1
    # Regular file: polars accepts no row with too many fields, and the separator total says no
    # row has too few. Otherwise count fields per row to find the malformed ones.
    frame = _polars_csv(data, ragged=False)
    expected = (width - 1) * (1 + int(keep.sum()))
    regular = frame is not None and records.total_commas == expected
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
        bad = keep & (fields != width)
        bad_index = np.flatnonzero(bad)
        malformed = pl.select(
            pl.when(pl.Series(bad))
            .then(pl.format("expected {} fields, found {}", pl.lit(width), pl.Series(fields)))
            .otherwise(None)
        ).to_series()
        texts = []
        for i in bad_index:  # only the malformed rows
            a, b = records.starts[h + 1 + i], records.stops[h + 1 + i]
            texts.append(data[a: min(b, a + 4 * RECORD_PREVIEW_CHARS)].decode(
                "utf-8", errors="replace")[:RECORD_PREVIEW_CHARS])
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


def _read_csv_python(data: bytes, file: TableFile) -> tuple[list[str], pl.DataFrame]:
    """Exact, forgiving fallback for quoting the vectorised scan does not model."""
    text = data.decode("utf-8", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[list[str | None]] = []
    lines: list[int] = []
    malformed: list[str | None] = []
    records: list[str | None] = []
    previous_line = 0
    try:
        for row in reader:
            start = previous_line + 1
            previous_line = reader.line_num
            if not row:
                continue
            if header is None:
                header = row
                continue
            width = len(header)
            fields = [v if v != "" else None for v in row[:width]] + [None] * (width - len(row))
            rows.append(fields)
            lines.append(start)
            if len(row) != width:
                malformed.append(f"expected {width} fields, found {len(row)}")
                records.append(",".join(row)[:RECORD_PREVIEW_CHARS])
            else:
                malformed.append(None)
                records.append(None)
    except csv.Error as error:  # pragma: no cover - csv only raises on NUL bytes etc.
        raise UserError(f"cannot be parsed as CSV ({error})", path=file.relative_path,
                        line=previous_line + 1) from None
    if header is None:
        raise UserError("is empty (expected a header line naming the columns)",
                        path=file.relative_path)
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


# --- JSON Lines ----------------------------------------------------------------------------------


def _read_jsonl(data: bytes, file: TableFile) -> tuple[list[str], pl.DataFrame]:
    if data.startswith(BOM):
        data = data[len(BOM):]
    text = data.decode("utf-8", errors="replace")
    lines = pl.Series("text", text.split("\n"), dtype=pl.String).str.strip_suffix("\r")
    raw = pl.DataFrame({"text": lines}).with_row_index(LINE, offset=1).with_columns(
        pl.col(LINE).cast(pl.Int64)).filter(pl.col("text").str.strip_chars() != "")
    stripped = raw["text"].str.strip_chars()
    is_object = stripped.str.starts_with("{")
    bad = ~is_object.to_numpy()
    candidates = np.flatnonzero(~bad)
    bad_json = _undecodable(stripped.gather(candidates)) if candidates.size else np.zeros(0, bool)
    invalid = np.zeros(raw.height, dtype=bool)
    invalid[candidates[bad_json]] = True
    good = ~(bad | invalid)
    decoded = None
    if good.any():
        try:
            decoded = stripped.filter(pl.Series(good)).str.json_decode(infer_schema_length=None)
        except pl.exceptions.PolarsError:
            # Every line is valid JSON, but a field mixes objects with scalars across lines.
            return _read_jsonl_python(raw, stripped, bad, invalid)
    header = [f.name for f in decoded.dtype.fields] if decoded is not None else []
    names = [f"__c{i}" for i in range(len(header))]
    if header:
        values = decoded.struct.unnest()
        values.columns = names
        values = values.select(_as_text(values, n) for n in names)
    # Malformed rows get all-null values; scatter the decoded rows back into line order.
    full = raw.select(LINE).with_columns(pl.lit(None, dtype=pl.String).alias(n) for n in names)
    good_index = np.flatnonzero(good)
    for n in names:
        full = full.with_columns(full[n].scatter(good_index, values[n]))
    malformed = np.where(bad, "not a JSON object", np.where(invalid, "invalid JSON", ""))
    record = raw["text"].str.slice(0, RECORD_PREVIEW_CHARS)
    frame = full.with_columns(
        pl.Series(MALFORMED, malformed, dtype=pl.String).replace("", None),
        pl.when(pl.Series(~good)).then(record).otherwise(None).alias(RECORD),
    )
    return header, frame


def _read_jsonl_python(raw: pl.DataFrame, stripped: pl.Series, bad: np.ndarray,
                       invalid: np.ndarray) -> tuple[list[str], pl.DataFrame]:
    """Exact fallback for files whose fields mix nested and scalar values across lines."""
    records: list[dict] = []
    header: dict[str, None] = {}
    for text, is_bad in zip(stripped.to_list(), (bad | invalid).tolist()):
        record = {} if is_bad else json.loads(text)
        header.update(dict.fromkeys(record))
        records.append(record)
    names = list(header)

    def as_text(value):
        if value is None or isinstance(value, str):
            return value
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    columns = {f"__c{i}": pl.Series(f"__c{i}", [as_text(r.get(n)) for r in records],
                                    dtype=pl.String)
               for i, n in enumerate(names)}
    malformed = np.where(bad, "not a JSON object", np.where(invalid, "invalid JSON", ""))
    frame = raw.select(LINE).with_columns(*columns.values(),
        pl.Series(MALFORMED, malformed, dtype=pl.String).replace("", None),
        pl.when(pl.Series(bad | invalid)).then(raw["text"].str.slice(0, RECORD_PREVIEW_CHARS))
        .otherwise(None).alias(RECORD),
    )
    return names, frame


def _undecodable(lines: pl.Series) -> np.ndarray:
    """Which lines are not valid JSON: decode whole blocks, bisect only where a block fails."""
    bad = np.zeros(lines.len(), dtype=bool)
    stack = [(0, lines.len())]
    while stack:
        a, b = stack.pop()
        try:
            lines.slice(a, b - a).str.json_decode(infer_schema_length=None)
        except pl.exceptions.PolarsError:
            if b - a == 1:
                bad[a] = True
            else:
                mid = (a + b) // 2
                stack.extend([(a, mid), (mid, b)])
    return bad


def _as_text(frame: pl.DataFrame, name: str) -> pl.Expr:
    """A decoded JSON field as text: scalars via cast, nested values as their JSON."""
    dtype = frame.schema[name]
    if isinstance(dtype, (pl.Struct, pl.List, pl.Array)):
        prefix = len(f'{{"{name}":')
        encoded = pl.struct(pl.col(name)).struct.json_encode()
        return (pl.when(pl.col(name).is_not_null())
                .then(encoded.str.slice(prefix).str.strip_suffix("}"))
                .otherwise(None).alias(name))
    return pl.col(name).cast(pl.String).alias(name)


def _castable(frame: pl.DataFrame, name: str) -> bool:
    try:
        frame.head(1).select(_as_text(frame, name))
        return True
    except pl.exceptions.PolarsError:
        return False


# --- Parquet -------------------------------------------------------------------------------------


def _read_parquet(data: bytes, file: TableFile) -> tuple[list[str], pl.DataFrame]:
    try:
        frame = pl.read_parquet(io.BytesIO(data))
    except (pl.exceptions.PolarsError, OSError) as error:
        raise UserError(f"is not a readable Parquet file ({error})",
                        path=file.relative_path) from None
    header = list(frame.columns)
    names = [f"__c{i}" for i in range(len(header))]
    frame.columns = names
    try:
        frame = frame.select(_as_text(frame, n) for n in names)
    except pl.exceptions.PolarsError:
        unreadable = [h for h, n in zip(header, names) if not _castable(frame, n)]
        raise UserError(f"column(s) {', '.join(map(repr, unreadable))} have a Parquet type that "
                        "cannot be read as text (e.g. a duration); store them as text or numbers",
                        path=file.relative_path) from None
    frame = frame.with_columns(
        pl.int_range(0, pl.len(), dtype=pl.Int64).alias(LINE),
        pl.lit(None, dtype=pl.String).alias(MALFORMED),
        pl.lit(None, dtype=pl.String).alias(RECORD),
    )
    return header, frame


