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
import unicodedata
from dataclasses import dataclass

import polars as pl

from pipeline.schema import (
    IDENTIFIER_COLUMN_NAMES,
    IDENTIFIER_COLUMN_STEMS,
    IDENTIFIER_NAME_PREFIXES,
    IDENTIFIER_NAME_SUFFIXES,
)


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


#: Characters of an e-mail local part / domain label: anything but space, the separators that
#: delimit a value in CSV, JSON or prose, and ``*`` (so a mask is never matched again).
_EMAIL_CHAR = r"""[^\s@,;:<>()\[\]{}"'`*|/\\]"""
_DOMAIN_CHAR = r"""[^\s@,;:<>()\[\]{}"'`*|/\\.]"""

# The order matters for masking: e-mail first (its local part may hold digits), then the
# national ids, then the looser phone shapes.
IDENTIFIER_PATTERNS: tuple[IdentifierPattern, ...] = (
    IdentifierPattern(
        # Any script (Cyrillic, IDN domains), not only ASCII; the top-level domain is kept.
        "email",
        rf"([^\W_]){_EMAIL_CHAR}*@{_DOMAIN_CHAR}+(?:\.{_DOMAIN_CHAR}+)*\.([^\W\d_]{{2,}})\b",
        "${1}***@***.${2}",
        "an e-mail address",
    ),
    IdentifierPattern(
        # Without a top-level domain (``jane@localhost``, ``jane@nhs``): still an address.
        "email_no_tld",
        rf"([^\W_]){_EMAIL_CHAR}*@{_EMAIL_CHAR}+",
        "${1}***@***",
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


#: Letters from other scripts that look like Latin ones (Cyrillic ``е`` in ``Еmail``), after
#: case-folding; NFKC already folds fullwidth and compatibility forms (``ｅｍａｉｌ``).
_CONFUSABLES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d",
    "һ": "h", "ԛ": "q", "ԝ": "w", "ɑ": "a", "ο": "o", "α": "a", "ε": "e", "ι": "i", "κ": "k",
    "ν": "v", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ı": "i", "ℓ": "l",
})


def normalise_column_name(name: str) -> str:
    """``'E-mail Address'`` -> ``'emailaddress'``: Unicode-folded, letters and digits only.

    NFKC folds fullwidth and compatibility forms, ``casefold`` the case, invisible format
    characters (zero-width space, joiners, soft hyphen: Unicode category Cf) are dropped and
    lookalike letters from other scripts mapped to Latin, so a disguised ``Ｅ​mаil`` is
    still ``email``.
    """
    folded = unicodedata.normalize("NFKC", name).casefold()
    folded = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")
    folded = folded.translate(_CONFUSABLES)
    return "".join(ch for ch in folded if ch.isalnum())


_IDENTIFIER_NAMES = frozenset(IDENTIFIER_COLUMN_NAMES)
_STEMS = tuple(sorted(IDENTIFIER_COLUMN_STEMS, key=len, reverse=True))


def is_identifier_column_name(name: str) -> bool:
    """Whether a column name names a direct identifier (``Email``, ``date_of_birth``, ``NHS No``).

    Exact names (``schema.IDENTIFIER_COLUMN_NAMES``) and, for the stems that only ever name an
    identifier (``schema.IDENTIFIER_COLUMN_STEMS``), variants with a common prefix or suffix:
    ``phone_no``, ``Mobile No.``, ``emails``, ``NHS num``, ``patient_email``.
    """
    normal = normalise_column_name(name)
    if normal in _IDENTIFIER_NAMES:
        return True
    for prefix in ("", *IDENTIFIER_NAME_PREFIXES):
        if not normal.startswith(prefix):
            continue
        rest = normal[len(prefix):]
        for stem in _STEMS:
            if rest.startswith(stem) and rest[len(stem):] in IDENTIFIER_NAME_SUFFIXES:
                return True
        if prefix and rest in _IDENTIFIER_NAMES:
            return True
    return False


def looks_like_numeric_identifier(expr: pl.Expr) -> pl.Expr:
    """Boolean expression: an id made only of digits with the length of a phone, NHS or SSN number.

    Used on token columns (``subject_id``, ``episode_id``), where a bare ``07700900123`` would
    otherwise pass as a pseudonymous token. Caught: 9 digits (US SSN), 10 digits that start with
    0 (UK phone without the trunk split) or pass the NHS modulus-11 check (``9434765919``), and 11
    to 15 digits (phone numbers, E.164 without ``+``). Shorter numeric ids (``12345``), 10-digit
    numbers failing the check digit, and ids with letters (``P0012345``) pass.
    """
    text = expr.str.strip_chars().str.strip_prefix("+")
    n = text.str.len_chars()
    digits_only = text.str.contains(r"^\d+$")
    weighted = pl.sum_horizontal(
        [text.str.slice(i, 1).cast(pl.Int64, strict=False) * (10 - i) for i in range(9)])
    check = (11 - weighted % 11) % 11  # 11 -> 0; 10 means no valid NHS number
    last = text.str.slice(9, 1).cast(pl.Int64, strict=False)
    nhs = (n == 10) & (check != 10) & (check == last)
    phone = ((n == 10) & text.str.starts_with("0")) | ((n >= 11) & (n <= 15))
    return digits_only & ((n == 9) | nhs | phone)


#: Plain words for the digit-only token shapes of :func:`looks_like_numeric_identifier`.
NUMERIC_IDENTIFIER_LABEL = "a phone, NHS or national id number written as digits only"


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


def map_distinct(values: pl.Series, fn) -> pl.Series:
    """``fn`` (an expression of one column) evaluated once per distinct value of ``values`` and
    mapped back to every row, in order.

    Exact for any ``fn`` that is a function of the value alone (the identifier patterns, masks
    and cuts are): the quarantine of a big file repeats a few hundred dates and numbers over
    tens of thousands of rows, and each regex then runs over the few hundred.
    """
    name = values.name or "__value"
    distinct = values.unique().to_frame(name)
    lookup = distinct.with_columns(fn(pl.col(name)).alias("__mapped"))
    return (values.to_frame(name)
            .join(lookup, on=name, how="left", nulls_equal=True, maintain_order="left")
            .get_column("__mapped").alias(values.name))


def _py_mask(mask: str) -> str:
    return re.sub(r"\$\{(\d+)\}", r"\\g<\1>", mask)


_PY_MASKS = tuple(_py_mask(p.mask) for p in IDENTIFIER_PATTERNS)


def find_identifier(text: str) -> str | None:
    """Pure-Python twin of :func:`identifier_label` for single strings (headers, file names)."""
    for p, rx in zip(IDENTIFIER_PATTERNS, _PY_PATTERNS):
        if rx.search(text):
            return p.label
    return None


def mask_text(text: str) -> str:
    """Mask one string (column names, file names, error messages): pure Python, no polars.

    The same patterns and masks as :func:`mask_identifiers`, with the same last resort.
    """
    masked = text
    for rx, mask in zip(_PY_PATTERNS, _PY_MASKS):
        masked = rx.sub(mask, masked)
    return FULL_MASK if find_identifier(masked) else masked


def mask_path(relative_path: str) -> str:
    """Mask identifiers in a relative file path, part by part (``daily/j***@***.com.csv``).

    The table-format suffix (``.csv.gz``), or another file's last suffix (``.xlsx``), is kept
    outside the masking, so a name that is an e-mail address keeps its real extension, and the
    result is still a readable file name.
    """
    from pipeline.ingest.discover import split_format

    parts = []
    for part in relative_path.split("/"):
        split = split_format(part)
        if split is not None:
            stem = split[0]
        else:  # another export (``.tsv``, ``.xlsx``): keep its last suffix
            found = re.search(r"\.[A-Za-z0-9]{1,8}$", part)
            stem = part[: found.start()] if found and found.start() > 0 else part
        parts.append(mask_text(stem) + part[len(stem):])
    return "/".join(parts)
