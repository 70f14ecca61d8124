"""Small ASCII episode tables for the red-flag spec tests (and a check of the helper itself).

``episodes(text)`` turns a table such as::

    | episode_id | subject_id | started_at       | pain |
    |------------|------------|------------------|------|
    | e1         | S1         | 2024-01-01 08:00 | 7    |

into the stored episodes LazyFrame (``Store.read("episodes")``): the schema's columns and dtypes
plus provenance. A column left out of the table gets a recorded value that fires no default rule
(pain 0, every yes/no false, numbness none, 1 minute, calf), so each spec shows only what it is
about. An empty cell is null ("not recorded").
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from pipeline import schema

EPISODE_SCHEMA: dict[str, pl.DataType] = {
    **schema.EPISODES.polars_schema(),
    **schema.PROVENANCE_SCHEMA,
}

#: Recorded values that fire no default rule.
QUIET: dict[str, object] = {
    "episode_id": None,
    "duration_min": 1.0,
    "muscle_group": "calf",
    "pain": 0,
    "pain_uncontrolled": False,
    "swelling": False,
    "skin_changes": False,
    "sleep_loss": False,
    "er_visit": False,
    "numbness": "none",
}


def parse_table(text: str) -> list[dict[str, str | None]]:
    """Rows of an ASCII table as dicts of raw cell text (``None`` for an empty cell)."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    lines = [ln for ln in lines if ln and not set(ln) <= set("|-+: ")]
    rows = [[cell.strip() for cell in ln.strip("|").split("|")] for ln in lines]
    header, body = rows[0], rows[1:]
    return [{h: (r[i] or None) for i, h in enumerate(header)} for r in body]


def _value(text: str | None, dtype: pl.DataType):
    if text is None:
        return None
    if dtype == pl.Boolean():
        return {"true": True, "false": False}[text]
    if dtype == pl.Int64():
        return int(text)
    if dtype == pl.Float64():
        return float(text)
    if dtype == pl.Datetime("us"):
        return dt.datetime.fromisoformat(text)
    if dtype == pl.Date():
        return dt.date.fromisoformat(text)
    return text


def episodes(text: str) -> pl.LazyFrame:
    """The stored episodes table described by ``text`` (see the module docstring)."""
    rows = []
    for line, raw in enumerate(parse_table(text), start=2):
        row = {}
        for col, dtype in schema.EPISODES.polars_schema().items():
            row[col] = _value(raw[col], dtype) if col in raw else QUIET.get(col)
        row[schema.SOURCE_FILE] = "episodes.csv"
        row[schema.SOURCE_LINE] = line
        rows.append(row)
    return pl.LazyFrame(rows, schema=EPISODE_SCHEMA)


def table(text: str, dtypes: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
    """An expected-output table; every column is text unless ``dtypes`` says otherwise."""
    raw = parse_table(text)
    header = [c.strip() for c in text.strip().splitlines()[0].strip().strip("|").split("|")]
    dtypes = dtypes or {}
    out_schema = {h: dtypes.get(h, pl.String()) for h in header}
    return pl.DataFrame(
        {h: [_value(r[h], out_schema[h]) for r in raw] for h in header}, schema=out_schema
    )


def test_helper_fills_unlisted_columns_with_quiet_values_and_empty_cells_with_null():
    lf = episodes("""
        | episode_id | subject_id | started_at       | pain |
        |------------|------------|------------------|------|
        | e1         | S1         | 2024-01-01 08:00 | 7    |
        | e2         | S1         | 2024-01-02 08:00 |      |
    """)
    df = lf.collect()
    assert df.schema == pl.Schema(EPISODE_SCHEMA)
    assert df["pain"].to_list() == [7, None]
    assert df["swelling"].to_list() == [False, False]
    assert df["source_line"].to_list() == [2, 3]


def test_expected_table_keeps_empty_cells_null():
    t = table("""
        | a | n |
        |---|---|
        | x |   |
    """, {"n": pl.Int64()})
    assert t.to_dicts() == [{"a": "x", "n": None}]
