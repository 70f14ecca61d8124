"""Keep direct identifiers out: refuse identifier-named columns, detect and mask identifier values.

Two lines of defence (issue 2, item 4):

* a column *named* like a direct identifier (``schema.IDENTIFIER_COLUMN_NAMES``, compared after
  lower-casing and dropping everything but letters and digits) makes the whole file refused;
* a *value* that looks like an e-mail address, a phone number or a national id number (US SSN,
  UK National Insurance number, NHS number) quarantines its row with reason ``identifier``, and
  every value written to the quarantine goes through :func:`mask_identifiers` first.

The patterns are deliberately about *formatted* identifiers: pseudonymous ids such as ``P0012345``,
``E070000002`` or ``S-000123``, plain numbers, ISO dates and date-times must not match. An
unformatted 10- or 11-digit run (``9434765919``) is indistinguishable from a plain number and is
not flagged; that gap is documented in the data contract rather than guessed at.

Everything here is a polars expression, so detection runs vectorised over whole columns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from pipeline.schema import IDENTIFIER_COLUMN_NAMES


@dataclass(frozen=True)
class IdentifierPattern:
    """One kind of direct identifier: how to find it, how to mask it, how to name it."""

    name: str
    #: Rust-regex (polars) pattern; searched anywhere in the value, not anchored.
    pattern: str
    #: Replacement for the match (``${n}`` refers to a capture group of ``pattern``).
    mask: str
    #: Plain words for the quarantine message.
    label: str


# The order matters for masking: e-mail first (its local part may hold digits), then the
# national ids, then the looser phone shapes.
IDENTIFIER_PATTERNS: tuple[IdentifierPattern, ...] = (
    IdentifierPattern(
        "email",
        r"([A-Za-z0-9])[A-Za-z0-9._%+\-]*@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.([A-Za-z]{2,})\b",
        "${1}***@***.${2}",
        "an e-mail address",
    ),
    IdentifierPattern(
        "us_ssn",
        r"\b\d{3}(?:-\d{2}-|\x20\d{2}\x20)(\d{4})\b",
        "***-**-${1}",
        "a national id number (US SSN)",
    ),
    IdentifierPattern(
        "uk_nino",
        r"(?i)\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]\x20?\d{2}\x20?\d{2}\x20?\d{2}\x20?[A-D]\b",
        "*********",
        "a national id number (UK National Insurance)",
    ),
    IdentifierPattern(
        "phone_international",
        r"\+\d{1,3}[\x20.\-]?(?:\(\d{1,5}\)|\d{1,5})(?:[\x20.\-]?\d{2,5}){1,4}\b",
        "+** *** *** ****",
        "a phone number",
    ),
    IdentifierPattern(
        "phone_area_code",
        r"\(\d{2,5}\)[\x20.\-]?\d{3,4}[\x20.\-]?\d{3,4}\b",
        "(***) ***-****",
        "a phone number",
    ),
    IdentifierPattern(
        # 3-3-4 digit groups: NHS numbers (943 476 5919) and North American phone numbers.
        "nhs_or_phone_3_3_4",
        r"\b\d{3}[\x20.\-]\d{3}[\x20.\-]\d{4}\b",
        "*** *** ****",
        "an NHS or phone number",
    ),
    IdentifierPattern(
        # UK national format: a leading 0, then space- or dash-separated groups (07700 900123).
        "phone_uk",
        r"\b0\d{2,4}[\x20\-]\d{3,4}[\x20\-]?\d{3,4}\b",
        "0**** ******",
        "a phone number",
    ),
)

#: One alternation of every pattern: a single pass decides "looks like an identifier".
_ANY_IDENTIFIER = "|".join(f"(?:{p.pattern})" for p in IDENTIFIER_PATTERNS)
# Inline flags such as (?i) must not leak into the other alternatives.
_ANY_IDENTIFIER = _ANY_IDENTIFIER.replace("(?:(?i)", "(?i:")
ANY_IDENTIFIER_PATTERN = _ANY_IDENTIFIER

FULL_MASK = "***"

_PY_PATTERNS = tuple(
    re.compile(p.pattern.replace("(?i)", "(?i:") + ")" if "(?i)" in p.pattern else p.pattern)
    for p in IDENTIFIER_PATTERNS
)


def normalise_column_name(name: str) -> str:
    """``'E-mail Address'`` -> ``'emailaddress'``: lower case, letters and digits only."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


_IDENTIFIER_NAMES = frozenset(IDENTIFIER_COLUMN_NAMES)


def is_identifier_column_name(name: str) -> bool:
    """Whether a column name names a direct identifier (``Email``, ``date_of_birth``, ``NHS No``)."""
    return normalise_column_name(name) in _IDENTIFIER_NAMES


def looks_like_identifier(expr: pl.Expr) -> pl.Expr:
    """Boolean expression: the text value contains something shaped like a direct identifier.

    Null stays null; combine with ``fill_null(False)`` where a plain boolean is needed.
    """
    return expr.str.contains(_ANY_IDENTIFIER)


def identifier_label(expr: pl.Expr) -> pl.Expr:
    """The plain-words kind of the first identifier pattern that matches (null when none)."""
    out = pl.lit(None, dtype=pl.String)
    for p in reversed(IDENTIFIER_PATTERNS):
        out = pl.when(expr.str.contains(p.pattern)).then(pl.lit(p.label)).otherwise(out)
    return out


def mask_identifiers(expr: pl.Expr) -> pl.Expr:
    """Replace every identifier-shaped part of the text with its mask (``j***@***.com``).

    Belt and braces: if anything identifier-shaped survives the replacements, the whole value
    becomes ``***``. The raw value can therefore never reach an output through this function.
    """
    masked = expr
    for p in IDENTIFIER_PATTERNS:
        masked = masked.str.replace_all(p.pattern, p.mask)
    return pl.when(looks_like_identifier(masked)).then(pl.lit(FULL_MASK)).otherwise(masked)


def find_identifier(text: str) -> str | None:
    """Pure-Python twin of :func:`identifier_label` for single strings (headers, file names)."""
    for p, rx in zip(IDENTIFIER_PATTERNS, _PY_PATTERNS):
        if rx.search(text):
            return p.label
    return None


def mask_text(text: str) -> str:
    """Mask one string (used for column names that are themselves identifier-shaped)."""
    return pl.select(mask_identifiers(pl.lit(text, dtype=pl.String))).item()
