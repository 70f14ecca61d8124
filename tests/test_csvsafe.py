"""Spreadsheet formula injection (issue 8, item 3): text cells that a spreadsheet would evaluate
get a leading ``'``; numbers, and text that is a plain number, are written unchanged."""

from __future__ import annotations

import csv

import polars as pl
import pytest

from pipeline.csvsafe import neutralise, safe_frame, write_csv
from tests.fixtures.ingest.helpers import spec_table

# ``\t`` and ``\r`` are written as escapes in the table and turned into the characters below.
CELLS = r"""
| value                    | written                   | why                              |
| =1+2                     | '=1+2                     | formula                          |
| =HYPERLINK("http://x")   | '=HYPERLINK("http://x")   | formula                          |
| +SUM(A1)                 | '+SUM(A1)                 | + starts a formula               |
| -2+3                     | '-2+3                     | - starts a formula               |
| @SUM(A1)                 | '@SUM(A1)                 | @ starts a formula               |
| \t=1                     | '\t=1                     | tab                              |
| \r=1                     | '\r=1                     | carriage return                  |
| -                        | '-                        | not a number                     |
| -0.25                    | -0.25                     | a number stays a number          |
| +3                       | +3                        | a number stays a number          |
| 1e-05                    | 1e-05                     | a number stays a number          |
| -1.5E+07                 | -1.5E+07                  | a number stays a number          |
| -inf                     | -inf                      | the models' infinite bound       |
| plain text               | plain text                | harmless                         |
| a=b                      | a=b                       | = not at the start               |
| 'already                 | 'already                  | harmless                         |
"""


def _unescape(text: str) -> str:
    return text.replace(r"\t", "\t").replace(r"\r", "\r")


@pytest.mark.parametrize("row", spec_table(CELLS), ids=lambda r: r["why"] + ":" + r["value"])
def test_cells(row):
    value = _unescape(row["value"])
    assert pl.select(neutralise(pl.lit(value))).item() == _unescape(row["written"])


def test_numeric_columns_and_nulls_are_untouched():
    import datetime as dt

    frame = pl.DataFrame({"n": [-1, 2], "x": [-0.5, None], "s": [None, "=x"],
                          "when": [dt.date(2025, 1, 1), None]})
    safe = safe_frame(frame)
    assert safe.schema == frame.schema
    assert safe["n"].to_list() == [-1, 2] and safe["x"].to_list() == [-0.5, None]
    assert safe["s"].to_list() == [None, "'=x"]


def test_written_file_opens_as_text_in_a_spreadsheet(tmp_path):
    path = write_csv(tmp_path / "q.csv", pl.DataFrame({"value": ["=cmd|' /C calc'!A0", "-3"],
                                                       "line": [2, 3]}))
    rows = list(csv.reader(open(path, encoding="utf-8", newline="")))
    assert rows == [["value", "line"], ["'=cmd|' /C calc'!A0", "2"], ["-3", "3"]]


def test_every_csv_writer_goes_through_csvsafe():
    """A new output written with ``DataFrame.write_csv`` directly would skip the neutralising:
    only ``csvsafe`` itself (and the synthetic *input* writer) may call it."""
    import re
    from pathlib import Path

    import pipeline

    root = Path(pipeline.__file__).parent
    allowed = {"csvsafe.py", "synth/write.py"}
    direct = [str(p.relative_to(root)) for p in root.rglob("*.py")
              if str(p.relative_to(root)) not in allowed
              and re.search(r"\.write_csv\(", p.read_text(encoding="utf-8"))
              and re.search(r"(?<!atomic)(?<!csvsafe)\.write_csv\(", p.read_text(encoding="utf-8"))]
    assert direct == []


def test_atomic_write_csv_is_formula_safe(tmp_path):
    from pipeline import atomic

    path = atomic.write_csv(tmp_path / "x.csv", pl.DataFrame({"label": ["=1+1"]}))
    assert path.read_text(encoding="utf-8") == "label\n'=1+1\n"
