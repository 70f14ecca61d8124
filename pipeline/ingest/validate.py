"""Validate one file's rows against the contract, all derived from ``schema.Column`` declarations.

Every value arrives as text. Each column is cleaned (surrounding spaces trimmed, empty -> null),
parsed with ``strict=False`` (a failed parse gives null), and the parsed value is compared with
the text to find what failed. Each row gets the *first* problem it has, by reason priority and
then column order, so every row is counted once: accepted, or quarantined with one reason.

Reason priority: ``identifier`` (a direct identifier must be masked, whatever else is wrong),
``malformed_row``, ``missing_required``, ``invalid_token``, ``type``, ``invalid_value``,
``out_of_range`` (for dates and date-times: outside ``schema.MIN_DATE`` .. ``schema.max_date()``,
so a year 0 or 9999 never reaches the calendar arithmetic of later stages). A token column that is
only digits of phone, NHS or SSN length counts as ``identifier``. Cross-row reasons (``unknown_subject``, ``conflict``) live in ``dedupe``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from pipeline.errors import UserError
from pipeline.ingest.identifiers import (
    ANY_IDENTIFIER_PATTERN,
    FULL_MASK,
    NUMERIC_IDENTIFIER_LABEL,
    looks_like_numeric_identifier,
    identifier_label,
    is_identifier_column_name,
    looks_like_identifier,
    map_distinct,
    mask_identifiers,
    mask_text,
)
from pipeline.ingest.read import LINE, MALFORMED, RECORD, RawTable
from pipeline.ingest.rows import RECORD_PREVIEW_CHARS, as_text
from pipeline.schema import (
    FALSE_SPELLINGS,
    MIN_DATE,
    SOURCE_FILE,
    SOURCE_LINE,
    TOKEN_PATTERN,
    TRUE_SPELLINGS,
    Column,
    Table,
    max_date,
)

#: Columns of the quarantine, in order (part of the output contract).
QUARANTINE_COLUMNS = ("table", "source_file", "line", "column", "value", "reason", "message")
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "table": pl.String(), "source_file": pl.String(), "line": pl.Int64(), "column": pl.String(),
    "value": pl.String(), "reason": pl.String(), "message": pl.String(),
}

_CHECK = "__check"
#: Whole numbers are read through Float64, exact up to 2**53; larger ones are not whole numbers.
_MAX_EXACT_INT = 2**53
_DATE_SHAPE = r"^\d{4}-\d{1,2}-\d{1,2}$"
# ISO 8601 local date-time: 'T' or space, optional seconds and fraction, optional UTC offset
# (dropped: the contract keeps the local wall-clock time).
_DATETIME_SHAPE = (r"^(\d{4}-\d{1,2}-\d{1,2})[Tt ](\d{1,2}:\d{2})(:\d{2}(?:[.,]\d{1,9})?)?"
                   r"\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?$")
#: The quick pass's date-time: ``2025-03-01T14:30:05`` exactly (a subset of _DATETIME_SHAPE).
_CANONICAL_DATETIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$"

_TYPE_MESSAGES = {
    "float": "expected a number",
    "int": "expected a whole number",
    "bool": "expected a yes/no value (true/false, yes/no, 1/0)",
    "date": "expected a date as YYYY-MM-DD",
    "datetime": "expected an ISO 8601 date-time such as 2025-03-01T14:30",
}


@dataclass(frozen=True)
class ValidatedFile:
    """One file after row-level validation."""

    #: Rows that passed, typed as stored, with ``source_file`` and ``source_line``.
    valid: pl.DataFrame
    #: One row per quarantined input row (``QUARANTINE_COLUMNS``), values already masked.
    quarantine: pl.DataFrame
    rows: int
    unknown_columns: tuple[str, ...]


def check_header(raw: RawTable, table: Table, columns: tuple[Column, ...]) -> tuple[str, ...]:
    """Refuse the file (``UserError``) for identifier-named or missing required columns.

    Returns the unknown columns (present in the file, not in the contract).
    """
    where = raw.file.relative_path
    for original in raw.header:
        if is_identifier_column_name(original):
            raise UserError(
                f"column {original!r} is named like a direct identifier; the file is refused and "
                "nothing from it is stored. Remove the column (the data must be pseudonymised) "
                "and try again", path=where)
    known = {c.name for c in columns}
    missing = [c.name for c in columns if c.required and c.name not in raw.columns]
    if raw.file.format == "jsonl" and not raw.columns:
        # No line decoded to an object with keys: the rows (if any) are quarantined one by one.
        missing = []
    if missing:
        found = ", ".join(mask_text(h) for h in raw.header) if raw.header else "none"
        raise UserError(f"required column(s) missing from the {table.name} table: "
                        f"{', '.join(missing)} (columns found: {found})", path=where)
    return tuple(c for c in raw.columns if c not in known)


def clean(expr: pl.Expr) -> pl.Expr:
    """Trim surrounding spaces; an empty or blank value is null."""
    trimmed = expr.str.strip_chars()
    return pl.when(trimmed == "").then(None).otherwise(trimmed)


def _enum_key(expr: pl.Expr) -> pl.Expr:
    return expr.str.to_lowercase().str.replace_all(r"[\s\-]+", "_")


def _enum_key_py(value: str) -> str:
    return re.sub(r"[\s\-]+", "_", value.strip().lower())


#: Contract kinds a Parquet column may hold typed, and the type (``rows.PASSED_TYPED``): the
#: quick pass checks such a value as it is; a row that fails is cast to text and re-checked by
#: the forgiving pass, as if it had been text all along.
TYPED_KINDS: dict[str, pl.DataType] = {"float": pl.Float64(), "int": pl.Int64(),
                                       "bool": pl.Boolean(), "date": pl.Date(),
                                       "datetime": pl.Datetime("us")}


def parse(column: Column, text: pl.Expr, *, forgiving: bool = True,
          typed: bool = False) -> pl.Expr:
    """Parse cleaned text into the column's dtype; null where it cannot be read.

    ``forgiving=False`` is the quick first pass: enums and booleans must be spelled exactly
    as declared (or in lower/upper/title case); anything else is left to the forgiving pass,
    which accepts the same values and more, so the two passes never disagree on a value.
    ``typed``: ``text`` is a value of ``TYPED_KINDS[column.kind]`` already (quick pass only);
    it is what the text of it would parse to, and a whole number is held to the same limit.
    """
    kind = column.kind
    if typed:
        assert not forgiving
        return pl.when(text.abs() <= _MAX_EXACT_INT).then(text) if kind == "int" else text
    if kind in ("token", "string"):
        return text
    if kind == "enum" and not forgiving:
        return pl.when(text.is_in(list(column.values))).then(text)
    if kind == "bool" and not forgiving:
        def spellings(words):
            return sorted({v for w in words for v in (w, w.upper(), w.title())})
        return (pl.when(text.is_in(spellings(TRUE_SPELLINGS))).then(True)
                .when(text.is_in(spellings(FALSE_SPELLINGS))).then(False)
                .otherwise(None).cast(pl.Boolean))
    if kind == "enum":
        mapping = {_enum_key_py(v): v for v in column.values}
        assert len(mapping) == len(column.values), f"{column.name}: ambiguous enum spellings"
        return _enum_key(text).replace_strict(mapping, default=None, return_dtype=pl.String)
    if kind == "float":
        # NaN and infinities parse as floats; the type check rejects them (see _checks).
        return text.cast(pl.Float64, strict=False)
    if kind == "int":
        number = text.cast(pl.Float64, strict=False)
        whole = number.is_finite() & (number == number.floor()) & (number.abs() <= _MAX_EXACT_INT)
        return pl.when(whole).then(number).otherwise(None).cast(pl.Int64, strict=False)
    if kind == "bool":
        mapping = {**{s: True for s in TRUE_SPELLINGS}, **{s: False for s in FALSE_SPELLINGS}}
        return text.str.to_lowercase().replace_strict(mapping, default=None,
                                                      return_dtype=pl.Boolean)
    if kind == "date":
        return (pl.when(text.str.contains(_DATE_SHAPE))
                .then(text.str.to_date("%Y-%m-%d", strict=False)).otherwise(None))
    if kind == "datetime" and not forgiving:
        # The shape nearly every export writes, parsed in one step (three regex extractions and
        # a concatenation cost ~1.5 us a value); any other spelling goes to the forgiving pass,
        # which reads this shape to the same value.
        return (pl.when(text.str.contains(_CANONICAL_DATETIME))
                .then(text.str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False))
                .otherwise(None))
    if kind == "datetime":
        date = text.str.extract(_DATETIME_SHAPE, 1)
        hm = text.str.extract(_DATETIME_SHAPE, 2)
        sec = text.str.extract(_DATETIME_SHAPE, 3).fill_null(":00").str.replace(",", ".")
        joined = pl.concat_str([date, pl.lit(" "), hm, sec])
        return joined.str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S%.f", strict=False)
    raise AssertionError(kind)  # pragma: no cover


def _out_of_range(column: Column, value: pl.Expr) -> pl.Expr | None:
    if column.kind in ("date", "datetime"):
        # Compared on the calendar date, so a date-time late on the last plausible day passes.
        day = value if column.kind == "date" else value.dt.date()
        return (day < pl.lit(MIN_DATE)) | (day > pl.lit(max_date()))
    conditions = []
    if column.minimum is not None:
        conditions.append(value < column.minimum if column.minimum_inclusive
                          else value <= column.minimum)
    if column.maximum is not None:
        conditions.append(value > column.maximum)
    if not conditions:
        return None
    return pl.any_horizontal(conditions)


def _range_message(column: Column) -> str:
    if column.kind in ("date", "datetime"):
        return (f"expected a date from {MIN_DATE.isoformat()} to {max_date().isoformat()} "
                "(today + 1 day)")
    unit = f" ({column.unit})" if column.unit else ""
    return f"expected {column.range_text()}{unit}"


@dataclass(frozen=True)
class _Check:
    reason: str
    column: str
    message: str
    condition: pl.Expr


_PRIORITY = ("identifier", "malformed_row", "missing_required", "invalid_token", "type",
             "invalid_value", "out_of_range")


def validate_file(raw: RawTable, table: Table, columns: tuple[Column, ...]) -> ValidatedFile:
    """Row-level validation of one file (the header has already passed :func:`check_header`).

    Two passes keep big files fast: the first parses the values as they are and only flags rows
    with any problem; the second re-parses just those rows forgivingly (trimmed spaces, empty as
    null) and finds each one's first problem. Both passes use the same parsers and checks.
    """
    unknown = check_header(raw, table, columns)
    frame = raw.frame
    present = [c for c in columns if c.name in raw.columns]
    # A typed (Parquet) column is checked as it is when its kind stores that type; otherwise,
    # and for unknown columns, as text.
    kinds = {c.name: TYPED_KINDS.get(c.kind) for c in present}
    to_text = [n for n, dtype in frame.schema.items()
               if n not in (LINE, MALFORMED, RECORD) and dtype != pl.String
               and kinds.get(n) != dtype]
    if to_text:
        frame = frame.with_columns(as_text(frame, n) for n in to_text)
    typed_columns = [c.name for c in present if frame.schema[c.name] != pl.String]
    absent_required = [c for c in columns if c.name not in raw.columns and c.required]
    # Text columns can hold an identifier even when they parse: test them on every row (once per
    # distinct value). Other columns are tested in _quarantine_rows, on failing rows only.
    text_columns = [c.name for c in present if c.kind in ("token", "string")] + list(unknown)
    identifier_values = {}
    token_columns = tuple(c.name for c in present if c.kind == "token")
    for name in text_columns:
        distinct = frame.get_column(name).drop_nulls().unique()
        shaped = distinct.str.contains(ANY_IDENTIFIER_PATTERN)
        if name in token_columns:
            # Only digit-only values can be numeric identifiers: test just those (usually none).
            digits = distinct.filter(distinct.str.contains(r"^\s*\+?\d{9,15}\s*$"))
            if digits.len():
                numeric = digits.filter(
                    pl.select(looks_like_numeric_identifier(pl.lit(digits))).to_series())
                shaped = shaped | distinct.is_in(numeric.implode())
        hits = distinct.filter(shaped)
        if hits.len():
            identifier_values[name] = hits
    bad_tokens = {}
    for c in present:
        if c.kind == "token":
            distinct = frame.get_column(c.name).drop_nulls().unique()
            bad_tokens[c.name] = distinct.filter(~distinct.str.contains(TOKEN_PATTERN))

    def evaluate(rows: pl.DataFrame, forgiving: bool) -> tuple[pl.DataFrame, list[_Check]]:
        text = {c.name: clean(pl.col(c.name)) if forgiving else pl.col(c.name) for c in present}
        typed = () if forgiving else typed_columns
        rows = rows.with_columns(parse(c, text[c.name], forgiving=forgiving,
                                       typed=c.name in typed).alias(_parsed(c.name))
                                 for c in present)
        checks = _checks(present, text, identifier_values, bad_tokens, forgiving)
        checks += [_Check("missing_required", c.name, "a value is required here", pl.lit(True))
                   for c in absent_required]
        checks.sort(key=lambda k: _PRIORITY.index(k.reason))
        return rows, checks

    fast, checks = evaluate(frame, forgiving=False)
    any_failure = fast.select(pl.any_horizontal([k.condition for k in checks])).to_series()
    retry = frame.filter(any_failure)
    if typed_columns:
        retry = retry.with_columns(as_text(retry, n) for n in typed_columns)
    retry, checks = evaluate(retry, forgiving=True)
    if retry.height:
        first_failure = pl.min_horizontal(
            [pl.when(k.condition).then(pl.lit(i, dtype=pl.Int32)) for i, k in enumerate(checks)])
        retry = retry.with_columns(first_failure.alias(_CHECK))
    else:
        retry = retry.with_columns(pl.lit(None, dtype=pl.Int32).alias(_CHECK))
    source = raw.file.relative_path

    def typed(rows: pl.DataFrame) -> pl.DataFrame:
        return rows.select(
            *[_stored(c, pl.col(_parsed(c.name)) if c.name in raw.columns else pl.lit(None))
              for c in columns],
            pl.lit(source, dtype=pl.String).alias(SOURCE_FILE),
            pl.col(LINE).alias(SOURCE_LINE),
        )

    passed = typed(fast)
    del fast
    if retry.height:
        passed = passed.filter(~any_failure)
    mended = typed(retry.filter(pl.col(_CHECK).is_null()))
    valid = pl.concat([passed, mended])
    if mended.height:  # keep file order
        valid = valid.sort(SOURCE_LINE)
    failed = retry.filter(pl.col(_CHECK).is_not_null())
    quarantine = _quarantine_rows(failed, checks, raw, table.name, token_columns)
    return ValidatedFile(valid=valid, quarantine=quarantine, rows=frame.height,
                         unknown_columns=unknown)


def _stored(column: Column, value: pl.Expr) -> pl.Expr:
    return value.cast(column.dtype).alias(column.name)


def _parsed(name: str) -> str:
    return f"__parsed_{name}"


def _checks(present: list[Column], text: dict[str, pl.Expr], identifier_values: dict,
            bad_tokens: dict, forgiving: bool) -> list[_Check]:
    """Every row-level check, in priority order (identifier first, then reason, then column)."""
    checks: list[_Check] = []
    for name, hits in identifier_values.items():
        checks.append(_Check("identifier", name, "", pl.col(name).is_in(hits.implode())))
    checks.append(_Check("malformed_row", "", "", pl.col(MALFORMED).is_not_null()))
    for c in present:
        value = pl.col(_parsed(c.name))
        t = text[c.name]
        if c.required or not c.nullable:
            checks.append(_Check("missing_required", c.name, "a value is required here",
                                 t.is_null()))
        if c.kind == "token":
            # Decided once per distinct raw value; the forgiving pass trims first.
            bad = (t.is_not_null() & ~t.str.contains(TOKEN_PATTERN) if forgiving
                   else pl.col(c.name).is_in(bad_tokens[c.name].implode()))
            checks.append(_Check("invalid_token", c.name, "expected a pseudonymous id: 1 to "
                                 f"{c.max_chars or 64} characters from A-Z a-z 0-9 _ -", bad))
        elif c.kind == "enum":
            checks.append(_Check("invalid_value", c.name,
                                 f"expected one of: {', '.join(c.values)}",
                                 t.is_not_null() & value.is_null()))
        elif c.kind == "float":
            checks.append(_Check("type", c.name, _TYPE_MESSAGES[c.kind],
                                 t.is_not_null() & (value.is_null() | ~value.is_finite())))
        elif c.kind != "string":
            checks.append(_Check("type", c.name, _TYPE_MESSAGES[c.kind],
                                 t.is_not_null() & value.is_null()))
        out_of_range = _out_of_range(c, value)
        if out_of_range is not None:
            checks.append(_Check("out_of_range", c.name, _range_message(c),
                                 value.is_not_null() & out_of_range))
    checks.sort(key=lambda k: _PRIORITY.index(k.reason))  # stable: column order kept
    # A null condition (is_in on a null value) would make a row vanish from both filters.
    return [_Check(k.reason, k.column, k.message, k.condition.fill_null(False)) for k in checks]


def _quarantine_rows(failed: pl.DataFrame, checks: list[_Check], raw: RawTable, table: str,
                     token_columns: tuple[str, ...]) -> pl.DataFrame:
    """Reason, column, value and message of each failed row (a small frame, usually).

    Values are masked *before* the raw text of a malformed row is cut to its preview length, so
    a cut can never fall between an identifier and the part that makes it recognisable.
    """
    if failed.height == 0:
        return empty_quarantine()
    lookup = pl.DataFrame({
        _CHECK: pl.Series(range(len(checks)), dtype=pl.Int32),
        "reason": [k.reason for k in checks],
        "column": [k.column for k in checks],
        "message": [k.message for k in checks],
    })
    failed = failed.join(lookup, on=_CHECK, how="left")
    value_columns = list(raw.columns)
    value = pl.coalesce(
        [pl.when(pl.col("column") == name).then(pl.col(name)) for name in value_columns]
        + [pl.when(pl.col("reason") == "malformed_row").then(pl.col(RECORD))]
    )
    # A row that fails for any reason is checked for identifiers in *every* value (and in the
    # raw text of a malformed row): the identifier reason wins and the value is masked. A token
    # column is also checked for digit-only phone/NHS/SSN numbers, masked whole.
    # Whether a value is identifier-shaped depends on the value alone, so the patterns run over
    # each column's distinct failed values (a few hundred dates and numbers, usually, however
    # many rows failed), and only columns with a hit take part in the row expressions below.

    def numeric(n: str) -> pl.Expr:
        return (looks_like_numeric_identifier(pl.col(n)).fill_null(False) if n in token_columns
                else pl.lit(False))

    hits: dict[str, pl.Series] = {}
    for n in [*value_columns, RECORD]:
        distinct = failed.get_column(n).drop_nulls().unique().to_frame(n)
        found = distinct.filter(looks_like_identifier(pl.col(n)).fill_null(False) | numeric(n))
        if found.height:
            hits[n] = found.get_column(n)

    def shaped(n: str) -> pl.Expr:
        return pl.col(n).is_in(hits[n].implode()).fill_null(False)

    def first_hit(exprs: list[pl.Expr]) -> pl.Expr:
        return pl.coalesce(exprs) if exprs else pl.lit(None, dtype=pl.String)

    ident_column = first_hit(
        [pl.when(shaped(n)).then(pl.lit("" if n == RECORD else n)) for n in hits])
    ident_value = first_hit(
        [pl.when(shaped(n)).then(pl.when(numeric(n)).then(pl.lit(FULL_MASK))
                                 .otherwise(pl.col(n))) for n in hits])
    ident_label = first_hit(
        [pl.when(shaped(n)).then(pl.when(numeric(n)).then(pl.lit(NUMERIC_IDENTIFIER_LABEL))
                                 .otherwise(identifier_label(pl.col(n)))) for n in hits])
    failed = failed.with_columns(value.alias("value"), ident_column.alias("__ident_column"),
                                 ident_value.alias("__ident_value"),
                                 ident_label.alias("__ident_label"))
    is_ident = pl.col("__ident_column").is_not_null()
    malformed_message = pl.col(MALFORMED)
    out = failed.select(
        pl.lit(table, dtype=pl.String).alias("table"),
        pl.lit(raw.file.relative_path, dtype=pl.String).alias("source_file"),
        pl.col(LINE).alias("line"),
        pl.when(is_ident).then(pl.col("__ident_column")).otherwise(pl.col("column"))
        .alias("column"),
        pl.when(is_ident).then(pl.col("__ident_value")).otherwise(pl.col("value")).alias("value"),
        pl.when(is_ident).then(pl.lit("identifier")).otherwise(pl.col("reason")).alias("reason"),
        pl.when(is_ident)
        .then(pl.format("looks like {}; the value is masked here and the row is not stored",
                        pl.col("__ident_label")))
        .when(pl.col("reason") == "malformed_row").then(malformed_message)
        .otherwise(pl.col("message")).alias("message"),
    )
    # Column names are output too (an unknown column could be named after a person's address).
    # Mask first, then cut the preview (once per distinct value: masking is a function of it).
    return out.with_columns(
        map_distinct(out.get_column("value"),
                     lambda v: mask_identifiers(v).str.slice(0, RECORD_PREVIEW_CHARS)),
        map_distinct(out.get_column("column"), mask_identifiers))


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)
