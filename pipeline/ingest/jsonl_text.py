"""JSON Lines as text with line numbers: one object per line, each line judged on its own.

A line that is not valid JSON, or not an object, is a malformed row; its neighbours are read.
Whole blocks of lines are decoded at once (polars) and a failing block is bisected to find the
bad lines, so a clean file costs one decode.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from pipeline.ingest.discover import TableFile
from pipeline.ingest.rows import BOM, LINE, MALFORMED, RECORD, RECORD_SCAN_CHARS, as_text



def read_jsonl(data: bytes, file: TableFile) -> tuple[list[str], pl.DataFrame]:
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
        values = values.select(as_text(values, n) for n in names)
    # Malformed rows get all-null values; scatter the decoded rows back into line order.
    full = raw.select(LINE).with_columns(pl.lit(None, dtype=pl.String).alias(n) for n in names)
    good_index = np.flatnonzero(good)
    for n in names:
        full = full.with_columns(full[n].scatter(good_index, values[n]))
    malformed = np.where(bad, "not a JSON object", np.where(invalid, "invalid JSON", ""))
    record = raw["text"].str.slice(0, RECORD_SCAN_CHARS)
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
        pl.when(pl.Series(bad | invalid)).then(raw["text"].str.slice(0, RECORD_SCAN_CHARS))
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


