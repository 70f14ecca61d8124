"""JSON Lines as text with line numbers: one object per line, each line judged on its own.

A line that is not valid JSON, or not an object, is a malformed row; its neighbours are read.
Whole blocks of lines are decoded at once (polars) and a failing block is bisected to find the
bad lines, so a clean file costs one decode. Lines end at LF, CRLF or a lone CR, as an editor
shows them; a line over ``MAX_LINE_BYTES`` is a malformed row, and a file whose objects use more
than ``MAX_COLUMNS_PER_FILE`` distinct keys is refused before it is decoded.
"""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl

from pipeline.ingest.discover import TableFile
from pipeline.ingest.rows import (
    BOM,
    LINE,
    LONG_ROW_MESSAGE,
    MALFORMED,
    RECORD,
    RECORD_SCAN_CHARS,
    as_text,
    check_width,
)
from pipeline.schema import MAX_LINE_BYTES



def read_jsonl(data: bytes, file: TableFile) -> tuple[list[str], pl.DataFrame]:
    if data.startswith(BOM):
        data = data[len(BOM):]
    text = data.decode("utf-8", errors="replace")
    lines = pl.Series("text", split_lines(text), dtype=pl.String)
    raw = pl.DataFrame({"text": lines}).with_row_index(LINE, offset=1).with_columns(
        pl.col(LINE).cast(pl.Int64)).filter(pl.col("text").str.strip_chars() != "")
    stripped = raw["text"].str.strip_chars()
    is_object = stripped.str.starts_with("{")
    too_long = (raw["text"].str.len_bytes() > MAX_LINE_BYTES).to_numpy()
    bad = ~is_object.to_numpy() | too_long
    check_width(_distinct_keys(stripped.filter(pl.Series(~bad))), file,
                hint="each distinct key of the JSON objects is a column")
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
            return _read_jsonl_python(raw, stripped, bad, invalid, too_long)
    header = [f.name for f in decoded.dtype.fields] if decoded is not None else []
    names = [f"__c{i}" for i in range(len(header))]
    if header:
        values = decoded.struct.unnest()
        values.columns = names
        values = values.select(as_text(values, n) for n in names)
    # Malformed rows get all-null values; scatter the decoded rows back into line order.
    full = raw.select(LINE).with_columns(pl.lit(None, dtype=pl.String).alias(n) for n in names)
    good_index = np.flatnonzero(good)
    for n in names:
        full = full.with_columns(full[n].scatter(good_index, values[n]))
    malformed = np.where(too_long, LONG_ROW_MESSAGE,
                         np.where(bad, "not a JSON object", np.where(invalid, "invalid JSON", "")))
    record = raw["text"].str.slice(0, RECORD_SCAN_CHARS)
    frame = full.with_columns(
        pl.Series(MALFORMED, malformed, dtype=pl.String).replace("", None),
        pl.when(pl.Series(~good)).then(record).otherwise(None).alias(RECORD),
    )
    return header, frame


def _read_jsonl_python(raw: pl.DataFrame, stripped: pl.Series, bad: np.ndarray,
                       invalid: np.ndarray, too_long: np.ndarray) -> tuple[list[str], pl.DataFrame]:
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
    malformed = np.where(too_long, LONG_ROW_MESSAGE,
                         np.where(bad, "not a JSON object", np.where(invalid, "invalid JSON", "")))
    frame = raw.select(LINE).with_columns(*columns.values(),
        pl.Series(MALFORMED, malformed, dtype=pl.String).replace("", None),
        pl.when(pl.Series(bad | invalid)).then(raw["text"].str.slice(0, RECORD_SCAN_CHARS))
        .otherwise(None).alias(RECORD),
    )
    return names, frame


def split_lines(text: str) -> list[str]:
    """Lines as an editor shows them: LF, CRLF and a lone CR (old Mac files) all end a line.

    A lone CR cannot be inside a JSON value (a string must escape it), so breaking there never
    cuts a valid object; without it, a CR-only file would be one line holding every record.
    """
    if "\r" not in text:
        return text.split("\n")
    if text.count("\r") == text.count("\r\n"):
        return [line.removesuffix("\r") for line in text.split("\n")]
    return _LINE_BREAK.split(text)


_LINE_BREAK = re.compile(r"\r\n|\r|\n")
#: A JSON object key (or, rarely, a string value followed by ``:``: an over-estimate is harmless).
_KEY = r'"[^"]{0,256}"\s*:'


def _distinct_keys(lines: pl.Series) -> int:
    """How many distinct keys the objects use (an upper bound), found before decoding them.

    Decoding infers one column per distinct key, which for 1000 lines of 100 new keys each takes
    minutes; counting them first with one vectorised pass lets ``check_width`` refuse in time.
    """
    if lines.len() == 0:
        return 0
    return (pl.DataFrame({"s": lines}).lazy()
            .select(pl.col("s").str.extract_all(_KEY).explode().drop_nulls().n_unique())
            .collect().item())


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


