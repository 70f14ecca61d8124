"""Shared bookkeeping of the text readers: the row columns every reader adds, and values as text."""

from __future__ import annotations

import polars as pl

from pipeline.errors import UserError
from pipeline.schema import MAX_COLUMNS_PER_FILE, MAX_LINE_BYTES

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


#: Parquet column types a reader hands to validation as they are, not as text: each is exactly
#: what a contract kind stores (``validate.TYPED_KINDS``), and its text form parses back to the
#: same value, so validating the typed value decides a row as the text would. Other integer
#: widths, ``Float32`` (whose text is its shortest 32-bit spelling) and time-zone-aware or non-
#: microsecond date-times are read as text.
PASSED_TYPED = frozenset({pl.Float64, pl.Int64, pl.Boolean, pl.Date, pl.Datetime("us")})


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


def check_width(columns: int, file, *, hint: str = "is the separator a comma and the first "
                "line the header?") -> None:
    """Refuse a file with more than ``MAX_COLUMNS_PER_FILE`` columns (``UserError``).

    Called by each reader as soon as the header is known, before the rows are parsed: a header of
    a million commas must be refused in milliseconds, not parsed into a million columns.
    """
    if columns > MAX_COLUMNS_PER_FILE:
        raise UserError(f"has {columns:,} columns, more than the limit of "
                        f"{MAX_COLUMNS_PER_FILE:,} (MAX_COLUMNS_PER_FILE); {hint}",
                        path=file.relative_path)


def check_header_line(length: int, file) -> None:
    """Refuse a header line longer than ``MAX_LINE_BYTES`` (``UserError``)."""
    if length > MAX_LINE_BYTES:
        raise UserError(f"has a header line of {length:,} bytes, more than the limit of "
                        f"{MAX_LINE_BYTES >> 10:,} KiB (MAX_LINE_BYTES); is the first line the "
                        "header?", path=file.relative_path)


#: Why a row over ``MAX_LINE_BYTES`` is quarantined (``malformed_row``).
LONG_ROW_MESSAGE = (f"the row is longer than {MAX_LINE_BYTES >> 10:,} KiB (MAX_LINE_BYTES); "
                    "a quote left open, or a missing line break, usually causes this")
