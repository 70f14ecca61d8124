"""The shortcuts that make ingest fast decide exactly what the long way decides.

* The quick validation pass reads a date-time of the canonical shape ``YYYY-MM-DDTHH:MM:SS`` in
  one step; every value it reads must get the same value from the forgiving pass (which reads
  the canonical shape and many more), and a value it cannot read goes to the forgiving pass.
* Identifier patterns and masks run once per distinct value (``map_distinct``) and are mapped
  back to the rows: the same as running them row by row.
* Files are read on several threads, but a dataset with two refused files reports the first in
  table order, as a one-after-the-other read would.
"""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.errors import UserError
from pipeline.ingest import validate_dataset
from pipeline.ingest.identifiers import looks_like_identifier, map_distinct, mask_identifiers
from pipeline.ingest.validate import parse
from pipeline.schema import TABLES
from tests.fixtures.ingest.helpers import write_dataset

STARTED_AT = next(c for c in TABLES["episodes"].columns if c.name == "started_at")

DATE_TIMES = [
    "2026-01-15T03:45:27", "2024-02-29T23:59:59", "2023-02-29T10:00:00", "2026-13-01T00:00:00",
    "2026-01-15T24:00:00", "2026-01-15T23:59:60", "2026-01-15T23:60:00", "0000-01-01T00:00:00",
    "9999-12-31T23:59:59", "2026-01-15t03:45:27", "2026-01-15 03:45:27", "2026-1-15T03:45:27",
    "+026-01-15T03:45:27", "2026-01-15T03:45:2 ", "2026-01-15T3:45:27", "2026-01-00T03:45:27",
    "2026-00-15T03:45:27", "1900-01-01T00:00:00", "2026-01-15T03:45:27Z", "2026-01-15T03:45",
    "2026-01-15T03:45:27.5", "２０２６-01-15T03:45:27", " 2026-01-15T03:45:27", "", None,
]


def test_the_quick_date_time_parse_agrees_with_the_forgiving_one():
    frame = pl.DataFrame({"t": DATE_TIMES}, schema={"t": pl.String}).with_columns(
        parse(STARTED_AT, pl.col("t"), forgiving=False).alias("quick"),
        parse(STARTED_AT, pl.col("t"), forgiving=True).alias("forgiving"))
    read = frame.filter(pl.col("quick").is_not_null())
    assert {"2026-01-15T03:45:27", "2024-02-29T23:59:59", "1900-01-01T00:00:00"} \
        <= set(read["t"]) <= {t for t in DATE_TIMES if t and len(t) == 19 and t[10] == "T"}
    assert (read["quick"] == read["forgiving"]).all()


VALUES = ["jane@example.com", "call +44 7700 900123", "943 476 5919", "2026-01-05", "7.5", None,
          "AB 12 34 56 C", "S00001", "jane@example.com", None, "07700 900123", "x" * 300, ""]


@pytest.mark.parametrize("fn", [
    mask_identifiers,
    lambda v: looks_like_identifier(v).fill_null(False),
    lambda v: mask_identifiers(v).str.slice(0, 20),
], ids=["mask", "shape", "mask-then-cut"])
def test_a_pattern_per_distinct_value_equals_the_pattern_per_row(fn):
    values = pl.Series("value", VALUES * 3, dtype=pl.String)
    assert map_distinct(values, fn).equals(pl.select(fn(pl.lit(values))).to_series()
                                           .alias("value"))


def test_the_first_refused_file_in_table_order_is_reported(tmp_path):
    data = write_dataset(tmp_path, {
        "daily.csv": "subject_id,date,email\nS1,2025-01-01,x\n",  # refused: identifier
        "episodes.csv": "subject_id,muscle_group\nS1,calf\n",  # refused: no started_at
    })
    for _ in range(3):  # the threads may finish in either order
        with pytest.raises(UserError) as caught:
            validate_dataset(data)
        assert "daily.csv" in str(caught.value) and "email" in str(caught.value)
