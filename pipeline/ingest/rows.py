"""Shared bookkeeping of the text readers: the row columns every reader adds, and values as text."""

from __future__ import annotations

import polars as pl

LINE = "__line"
MALFORMED = "__malformed"
RECORD = "__record"
BOM = b"\xef\xbb\xbf"
#: The raw text of a malformed row is cut to this many characters in the quarantine, *after*
#: masking (a cut before masking could split an e-mail address before its ``@``).
RECORD_PREVIEW_CHARS = 200
#: Readers keep this much of a malformed row for masking: the preview plus room for the longest
#: e-mail address (64 + 1 + 255 characters) that could start inside the preview.
RECORD_SCAN_CHARS = RECORD_PREVIEW_CHARS + 400


def as_text(frame: pl.DataFrame, name: str) -> pl.Expr:
    """A decoded JSON field or Parquet column as text: scalars via cast, nested values as JSON."""
    dtype = frame.schema[name]
    if isinstance(dtype, (pl.Struct, pl.List, pl.Array)):
        prefix = len(f'{{"{name}":')
        encoded = pl.struct(pl.col(name)).struct.json_encode()
        return (pl.when(pl.col(name).is_not_null())
                .then(encoded.str.slice(prefix).str.strip_suffix("}"))
                .otherwise(None).alias(name))
    return pl.col(name).cast(pl.String).alias(name)
