"""Property tests: random and malformed CSV and JSON Lines never crash ingest, and every row is
counted exactly once (accepted, quarantined or duplicate) at the line a reference parser gives."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest import check_accounting, validate_dataset
from tests.fixtures.ingest.helpers import write_dataset

HEADER = ["subject_id", "date", "sleep_h", "electrolytes", "notes"]
# Example counts come from the profile in conftest (a few in CI; HYPOTHESIS_PROFILE=thorough for
# many).
SETTINGS = settings(deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

values = st.one_of(
    st.sampled_from(["S1", "S2", "S9", "2025-01-01", "2025-01-02", "7", "-1", "7.5", "nan", "yes",
                     "No", "", " ", "x", "a,b", 'say "hi"', "two\nlines", "cr\r\nlf", "j@x.com",
                     "123-45-6789", "P0012345", "é", "\ufeff", "{}", "[1]", '"', "25"]),
    st.text(max_size=8),
)
rows = st.lists(st.lists(values, min_size=3, max_size=7), max_size=12)


def _oracle_rows(text: str) -> list[tuple[int, list[str]]]:
    """(start line, fields) of each non-blank data row, per the standard library's csv module."""
    reader = csv.reader(io.StringIO(text, newline=""))
    out, previous, header_seen = [], 0, False
    for row in reader:
        start, previous = previous + 1, reader.line_num
        if not row:
            continue
        if not header_seen:
            header_seen = True
            continue
        out.append((start, row))
    return out


def _oracle_csv(text: str) -> list[int]:
    return [start for start, _ in _oracle_rows(text)]


def _counted_lines(result, table: str) -> tuple[list[int], int]:
    accepted = result.accepted[table]["source_line"].to_list()
    quarantined = result.quarantine.filter(pl.col("table") == table)["line"].to_list()
    duplicates = result.summary["tables"][table]["duplicates"]
    return sorted(accepted + quarantined), duplicates


def _run(files: dict[str, str | bytes]):
    with tempfile.TemporaryDirectory() as tmp:
        result = validate_dataset(write_dataset(Path(tmp), files))
        check_accounting(result)
        return result


@SETTINGS
@given(rows=rows, crlf=st.booleans(), bom=st.booleans(), quote_all=st.booleans())
def test_random_csv_rows_are_all_accounted_for(rows, crlf, bom, quote_all):
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n" if crlf else "\n",
                        quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
    writer.writerow(HEADER)
    writer.writerows(rows)
    text = buffer.getvalue()
    result = _run({"daily.csv": (b"\xef\xbb\xbf" if bom else b"") + text.encode()})
    daily = result.summary["tables"]["daily"]
    expected_lines = _oracle_csv(text)
    assert daily["read"] == len(expected_lines)
    lines, duplicates = _counted_lines(result, "daily")
    assert len(lines) + duplicates == len(expected_lines)
    assert set(lines) <= set(expected_lines)
    # Rows of the wrong width are malformed; rows of the right width never are.
    malformed = result.quarantine.filter(pl.col("reason") == "malformed_row")["line"].to_list()
    ragged = {line for line, row in _oracle_rows(text) if len(row) != len(HEADER)}
    assert set(malformed) <= ragged


@SETTINGS
@given(body=st.lists(st.sampled_from(['"', ",", "\n", "\r\n", "\r", "S1", "2025-01-01", "7",
                                      " ", "x", '""', "\ufeff", "j@x.com", "\x00"]),
                     max_size=40))
def test_arbitrary_bytes_after_a_valid_header_never_crash(body):
    text = ",".join(HEADER) + "\n" + "".join(body)
    result = _run({"daily.csv": text})
    daily = result.summary["tables"]["daily"]
    assert daily["read"] == daily["accepted"] + daily["quarantined"] + daily["duplicates"]
    try:
        expected = _oracle_csv(text)
    except csv.Error:  # the reference parser itself gives up (e.g. on NUL bytes)
        return
    assert daily["read"] == len(expected)
    lines, duplicates = _counted_lines(result, "daily")
    assert len(lines) + duplicates == len(expected)
    assert set(lines) <= set(expected)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.sampled_from(["S1", "S2", "2025-01-01", "7", "yes", "j@x.com", "", " 7 "]) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=2) | st.dictionaries(st.text(max_size=3), children,
                                                                      max_size=2),
    max_leaves=4,
)
json_lines = st.one_of(
    st.dictionaries(st.sampled_from(HEADER + ["extra", "Sleep_H"]), json_values, max_size=6)
    .map(json.dumps),
    st.sampled_from(["", "   ", "{", "}", "[1, 2]", "42", '"text"', "null", "{'a': 1}",
                     '{"subject_id": "S1"} trailing', '{"subject_id": "S1", "date": "2025-01-01"}']),
)


@SETTINGS
@given(lines=st.lists(json_lines, max_size=12), crlf=st.booleans())
def test_random_json_lines_are_all_accounted_for(lines, crlf):
    text = ("\r\n" if crlf else "\n").join(lines)
    try:
        result = _run({"daily.csv": None, "daily.jsonl": text})
    except Exception as error:  # a refused file is a UserError naming it, never a crash
        from pipeline.errors import UserError

        assert isinstance(error, UserError), error
        assert "daily.jsonl" in str(error) or "required table" in str(error)
        return
    expected = [i for i, line in enumerate(lines, start=1) if line.strip()]
    daily = result.summary["tables"]["daily"]
    assert daily["read"] == len(expected)
    counted, duplicates = _counted_lines(result, "daily")
    assert len(counted) + duplicates == len(expected)
    assert set(counted) <= set(expected)


@SETTINGS
@given(values=st.lists(st.one_of(values, st.sampled_from(
    ["TRUE", "True", "tRuE", " yes", "Y", "calf", "Calf", " CALF ", "lower back", "none",
     "2025-1-5", " 2025-01-05", "2025-01-05T10:00", "2025-01-05 10:00:00+01:00", "3", " 3 ",
     "3.0", "1e1", "inf", "-0"])), min_size=1, max_size=20))
def test_quick_parse_never_disagrees_with_forgiving_parse(values):
    from pipeline.ingest.validate import clean, parse
    from pipeline.schema import TABLES, TOKEN_PATTERN

    frame = pl.DataFrame({"v": pl.Series(values, dtype=pl.String)})
    for column in (*TABLES["daily"].columns, *TABLES["episodes"].columns):
        quick = frame.select(parse(column, pl.col("v"), forgiving=False)).to_series()
        forgiving = frame.select(parse(column, clean(pl.col("v")), forgiving=True)).to_series()
        accepted_quickly = pl.col("q").is_not_null()
        if column.kind == "token":  # the quick pass accepts only exact tokens
            accepted_quickly = accepted_quickly & pl.col("q").str.contains(TOKEN_PATTERN)
        if column.kind == "float":  # NaN and infinities are rejected by the type check
            accepted_quickly = accepted_quickly & pl.col("q").is_finite()
        both = pl.DataFrame({"q": quick, "f": forgiving}).filter(accepted_quickly)
        assert both["q"].to_list() == both["f"].to_list(), column.name


weird = st.sampled_from([
    "1E100", "-1e400", "9" * 30, "-0", "0x1F", "1_000", "½", "٣", "3,5", "NaN", "-inf", "+7",
    "0000-00-00", "9999-12-31", "2025-02-29", "2024-02-29", "2025-01-01T24:00",
    "2025-01-01T23:59:59.999999999+14:00", "2025-01-01t10:00z", "2025-01-01 10:00:00,5",
    "1970-01-01T00:00", "E1", "", " ", "calf", "OTHER", "both legs", "80+", "x" * 70,
    "S1", "S2", "S1 ", "j@x.com", "+44 20 7946 0958", "yes", "N", "2", "10", "11",
])


@SETTINGS
@given(rows=st.lists(st.lists(weird, min_size=12, max_size=12), max_size=8))
def test_random_values_in_every_episode_column_never_crash(rows):
    header = [c.name for c in __import__("pipeline.schema", fromlist=["x"]).EPISODES.columns]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    result = _run({"episodes.csv": buffer.getvalue()})
    episodes = result.summary["tables"]["episodes"]
    assert episodes["read"] == len(rows)
    stored = result.accepted["episodes"]
    assert stored["subject_id"].is_in(["S1", "S2"]).all()
    assert (stored["pain"].is_null() | stored["pain"].is_between(0, 10)).all()
