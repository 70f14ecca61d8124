"""Render ``docs/data-contract.md`` from the schema module, so the document can never drift from
the validators (a test fails when the committed file is stale)."""

from __future__ import annotations

from pipeline import schema

HEADER = """\
# Data contract, v{version}

<!-- Generated from pipeline/schema.py by `cramp docs`. Do not edit by hand. -->

A dataset is a directory of tables. Each table is `NAME.csv`, `NAME.csv.gz`, `NAME.jsonl` (or
`.ndjson`) or `NAME.parquet`, or a directory `NAME/` of such files (one file per export). Columns may
come in any order; unknown columns are listed in `summary.json` and not stored.

Parsing is forgiving where meaning is clear: booleans as {true} (true) and {false} (false) in any case; enum values in any
case with surrounding spaces; CSV in UTF-8 with or without a byte-order mark, LF or CRLF line endings,
quoted fields. `started_at` is an ISO 8601 local date-time; a UTC offset, if present, is dropped and
the local wall-clock time kept.

Every input row ends as exactly one of: **accepted**, **quarantined** (with table, source file, line,
column, value, reason and message in `quarantine.csv`), or an **exact duplicate** of an accepted row
(counted in `summary.json`). A quarantined row is recorded once, with its first problem.

`line` is where the row starts, 1-based as an editor shows it, counting the header line, blank lines
and newlines inside quoted fields (CSV) or the line of the JSON object (JSON Lines); for Parquet it
is the 0-based row index. Accepted rows keep their `source_file` and `source_line` in the store.
"""


def _kind_text(column: schema.Column) -> str:
    if column.kind == "enum":
        return "one of " + ", ".join(f"`{v}`" for v in column.values)
    if column.kind == "token":
        return f"token (1–{column.max_chars} of A–Z a–z 0–9 _ -)"
    return {
        "int": "integer",
        "float": "number",
        "bool": "boolean",
        "date": "date (YYYY-MM-DD)",
        "datetime": "local date-time (ISO 8601)",
        "string": "text",
    }[column.kind]


def _table_section(table: schema.Table) -> str:
    lines = [
        f"## `{table.name}` ({'required' if table.required else 'optional'})",
        "",
        table.description,
        "",
        "Key: " + " + ".join(f"`{k}`" for k in table.key)
        + (
            f" (or " + " + ".join(f"`{k}`" for k in table.fallback_key) + " when it is empty)"
            if table.fallback_key
            else ""
        )
        + ". Two rows with the same key and different content are both quarantined as `conflict`.",
        "",
        "| column | presence | type | range | unit | factor | description |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in table.columns:
        presence = "required" if c.required else "optional"
        presence += ", non-empty" if not c.nullable else ", may be empty"
        factor = schema.FACTORS[c.factor] if c.factor else ""
        description = c.description + (f" *Caveat: {c.caveat}*" if c.caveat else "")
        lines.append(
            f"| `{c.name}` | {presence} | {_kind_text(c)} | {c.range_text()} | {c.unit or ''} "
            f"| {factor} | {description} |"
        )
    return "\n".join(lines) + "\n"


def _reasons_section() -> str:
    lines = ["## Quarantine reason codes", "", "| reason | meaning |", "| --- | --- |"]
    lines += [f"| `{code}` | {text} |" for code, text in schema.REASONS.items()]
    return "\n".join(lines) + "\n"


def _identifier_section() -> str:
    names = ", ".join(f"`{n}`" for n in schema.IDENTIFIER_COLUMN_NAMES)
    return (
        "## Direct identifiers\n\n"
        "A file with a column named like a direct identifier is refused as a whole and nothing of it "
        "is stored. Names are compared after Unicode folding (NFKC, case-folding, invisible "
        "characters dropped, lookalike letters such as Cyrillic `е` read as Latin) and removing "
        f"everything but letters and digits: {names}; also common variants of "
        + ", ".join(f"`{n}`" for n in schema.IDENTIFIER_COLUMN_STEMS)
        + " (`phone_no`, `Mobile No.`, `emails`, `NHS num`, `patient_email`).\n\n"
        "A value anywhere that looks like an e-mail address, phone number or national id number "
        "quarantines its row with reason `identifier`; the quarantine stores the value masked. "
        "The shapes looked for (`pipeline/ingest/identifiers.py`):\n\n"
        + "".join(f"- {p.label}: `{p.name}`, masked as `{p.mask}`\n" for p in _patterns())
        + "\nIn `subject_id` and `episode_id`, a token made only of digits with the length of a "
        "phone, NHS or US social security number (9 digits; 10 digits starting with 0 or passing "
        "the NHS modulus-11 check; 11 to 15 digits) is quarantined as `identifier` too.\n\n"
        "Pseudonymous ids such as `P0012345` or `E070000002`, short numeric ids, plain numbers, "
        "dates and date-times are not identifiers. Values are masked before a long value or the "
        "text of a malformed row is cut to its preview, and error messages are masked too.\n"
    )


def _csv_safety_section() -> str:
    from pipeline import csvsafe

    triggers = ", ".join(f"`{c}`" if c.isprintable() else {"\t": "tab", "\r": "carriage return"}[c]
                         for c in csvsafe.FORMULA_TRIGGERS)
    return (
        "## CSV outputs and spreadsheets\n\n"
        "Every CSV the toolkit writes for people (`quarantine.csv`, the red-flag lists, "
        "`effects.csv`, `dose_response.csv`, `report_tables/`) is safe to open in a spreadsheet: a "
        f"text cell that starts with {triggers} would be evaluated as a formula, so it is written "
        f"with a leading `{csvsafe.NEUTRALISING_PREFIX}` (as OWASP recommends for CSV injection). "
        "Numbers stay numbers: numeric columns, and text cells that are plain numbers such as "
        "`-0.25`, are written unchanged. A program reading these files should drop one leading "
        f"`{csvsafe.NEUTRALISING_PREFIX}` from a text cell that starts with "
        f"`{csvsafe.NEUTRALISING_PREFIX}` followed by one of those characters.\n"
    )


def _limits_section() -> str:
    def size(n: int) -> str:
        for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
            if n >= 1 << shift and n % (1 << shift) == 0:
                return f"{n >> shift} {unit}"
        return f"{n:,} bytes"

    rows = [
        ("dates and date-times", f"from {schema.MIN_DATE.isoformat()} to today + "
         f"{schema.MAX_DATE_DAYS_AHEAD} day; outside: quarantined as `out_of_range`",
         "`MIN_DATE`, `MAX_DATE_DAYS_AHEAD`"),
        ("decompressed size of one `.csv.gz`", size(schema.MAX_DECOMPRESSED_BYTES),
         "`MAX_DECOMPRESSED_BYTES`"),
        ("decompression ratio of one `.csv.gz`",
         f"{schema.MAX_DECOMPRESSION_RATIO}× (checked once past "
         f"{size(schema.RATIO_CHECK_FROM_BYTES)})", "`MAX_DECOMPRESSION_RATIO`"),
        ("columns per file", f"{schema.MAX_COLUMNS_PER_FILE:,}", "`MAX_COLUMNS_PER_FILE`"),
        ("header line", size(schema.MAX_LINE_BYTES), "`MAX_LINE_BYTES`"),
        ("one data row (line)", f"{size(schema.MAX_LINE_BYTES)}; a longer row is quarantined as "
         "`malformed_row`", "`MAX_LINE_BYTES`"),
        ("custom factors per dataset", f"{schema.MAX_CUSTOM_FACTORS}", "`MAX_CUSTOM_FACTORS`"),
        ("size of `dataset.toml`", size(schema.MAX_DATASET_CONFIG_BYTES),
         "`MAX_DATASET_CONFIG_BYTES`"),
    ]
    lines = ["## Limits", "",
             "A file over a limit is refused with a message naming it (exit code 2) before it can "
             "exhaust memory or time; nothing from the run is stored. The limits are named "
             "values in `pipeline/schema.py`.", "",
             "| what | limit | name |", "| --- | --- | --- |"]
    lines += [f"| {what} | {limit} | {name} |" for what, limit, name in rows]
    return "\n".join(lines) + "\n"


def _files_section() -> str:
    return (
        "## Files that are not read\n\n"
        "Every other entry of the dataset directory (a misnamed table, `daily.xlsx`, a nested "
        "directory inside a table directory, a `.json` or `.txt` export) is listed in "
        "`summary.json` under `ignored_files`, with a hint on the command line. A table file or "
        "directory that is a symbolic link leading outside the dataset directory is refused. File "
        "names are masked like values (`daily/j***@***.com.csv`) in every output.\n"
    )


def _patterns():
    from pipeline.ingest.identifiers import IDENTIFIER_PATTERNS

    return IDENTIFIER_PATTERNS


def _custom_factor_section() -> str:
    doc = schema.CustomFactor.__doc__ or ""
    example = doc.split("Example (``dataset.toml``)::", 1)[-1]
    example_lines = [line[4:] if line.startswith("    ") else line for line in example.splitlines()]
    return (
        "## Custom factors (`dataset.toml`)\n\n"
        "A dataset may declare extra daily exposure columns (a medication, an air-quality index) in "
        "`DATA/dataset.toml`. They are validated and stored in `daily` and modelled like the core "
        "factors, with the IRR reported per `scale` units.\n\n"
        "```toml" + "\n".join(example_lines).rstrip() + "\n```\n"
    )


def render_data_contract() -> str:
    """The full data-contract document, as Markdown."""
    parts = [
        HEADER.format(
            version=schema.CONTRACT_VERSION,
            true="/".join(schema.TRUE_SPELLINGS),
            false="/".join(schema.FALSE_SPELLINGS),
        )
    ]
    parts += [_table_section(t) for t in schema.TABLES.values()]
    parts += [_custom_factor_section(), _reasons_section(), _identifier_section(),
              _limits_section(), _files_section(), _csv_safety_section()]
    return "\n".join(parts)
