"""Every input format and encoding detail reads to the same rows, at the right lines."""

from __future__ import annotations

import gzip
import io
import json

import polars as pl
import pytest

from pipeline.errors import UserError
from pipeline.ingest import validate_dataset
from tests.fixtures.ingest.helpers import quarantine_rows, spec_table, write_dataset

DAILY_CSV = "subject_id,date,sleep_h\nS1,2025-01-01,7\nS1,2025-01-02,abc\nS1,2025-01-03,6.5\n"
EXPECTED_ROWS = [(2, 7.0), (4, 6.5)]


def _daily(result):
    return result.accepted["daily"].sort("source_line").select("source_line", "sleep_h").rows()


def _bad_lines(result, table="daily"):
    return result.quarantine.filter(pl.col("table") == table)["line"].to_list()


@pytest.mark.parametrize("variant", ["lf", "crlf", "bom", "bom_crlf", "no_final_newline"])
def test_csv_variants(tmp_path, variant):
    text = DAILY_CSV
    if "crlf" in variant:
        text = text.replace("\n", "\r\n")
    if variant == "no_final_newline":
        text = text.rstrip("\n")
    raw = text.encode()
    if "bom" in variant:
        raw = b"\xef\xbb\xbf" + raw
    result = validate_dataset(write_dataset(tmp_path, {"daily.csv": raw}))
    assert _daily(result) == EXPECTED_ROWS
    assert _bad_lines(result) == [3]
    assert result.summary["tables"]["daily"]["unknown_columns"] == []


def test_csv_gz(tmp_path):
    data = write_dataset(tmp_path, {"daily.csv": None,
                                    "daily.csv.gz": gzip.compress(DAILY_CSV.encode())})
    result = validate_dataset(data)
    assert _daily(result) == EXPECTED_ROWS
    assert result.summary["files"][1]["format"] == "csv.gz"
    assert result.quarantine.filter(pl.col("table") == "daily")["source_file"].to_list() == [
        "daily.csv.gz"]


@pytest.mark.parametrize("suffix", ["jsonl", "ndjson"])
def test_jsonl(tmp_path, suffix):
    lines = ['{"subject_id": "S1", "date": "2025-01-01", "sleep_h": 7}',
             '{"subject_id": "S1", "date": "2025-01-02", "sleep_h": "abc"}',
             '',
             '{"subject_id": "S1", "date": "2025-01-03", "sleep_h": 6.5, "mood": "ok"}',
             '{"subject_id": "S1", "date": "2025-01-04", "sleep_h": 8',
             '["S1", "2025-01-05"]',
             '{"subject_id": "S1", "date": "2025-01-06", "sleep_h": null}']
    data = write_dataset(tmp_path, {"daily.csv": None, f"daily.{suffix}": "\n".join(lines)})
    result = validate_dataset(data)
    assert quarantine_rows(result.quarantine.filter(pl.col("table") == "daily"),
                           ("line", "column", "value", "reason", "message")) == spec_table("""
        | line | column  | value                                                | reason        | message           |
        |------|---------|------------------------------------------------------|---------------|-------------------|
        | 2    | sleep_h | abc                                                  | type          | expected a number |
        | 5    |         | {"subject_id": "S1", "date": "2025-01-04", "sleep_h": 8 | malformed_row | invalid JSON      |
        | 6    |         | ["S1", "2025-01-05"]                                 | malformed_row | not a JSON object |
    """)
    assert _daily(result) == [(1, 7.0), (4, 6.5), (7, None)]
    assert result.summary["tables"]["daily"]["unknown_columns"] == ["mood"]


def test_parquet_rows_are_numbered_by_index(tmp_path):
    frame = pl.DataFrame({
        "subject_id": ["S1", "S1", "S1"],
        "date": pl.Series(["2025-01-01", None, "2025-01-03"]).str.to_date(),
        "electrolytes": [True, False, None],
        "sleep_h": [7, 8, 30],
    })
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    data = write_dataset(tmp_path, {"daily.csv": None, "daily.parquet": buffer.getvalue()})
    result = validate_dataset(data)
    assert quarantine_rows(result.quarantine.filter(pl.col("table") == "daily"),
                           ("line", "column", "reason")) == spec_table("""
        | line | column  | reason           |
        |------|---------|------------------|
        | 1    | date    | missing_required |
        | 2    | sleep_h | out_of_range     |
    """)
    accepted = result.accepted["daily"]
    assert accepted.select("source_line", "electrolytes", "sleep_h").rows() == [(0, True, 7.0)]


def test_parquet_datetimes_and_episodes(tmp_path):
    frame = pl.DataFrame({
        "subject_id": ["S1"], "muscle_group": ["CALF"],
        "started_at": pl.Series(["2025-01-01 10:00:00"]).str.to_datetime(time_unit="ms"),
        "pain": [3]})
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    data = write_dataset(tmp_path, {"episodes.csv": None, "episodes.parquet": buffer.getvalue()})
    result = validate_dataset(data)
    assert result.quarantine.height == 0
    episodes = result.accepted["episodes"]
    assert episodes.select("started_at", "muscle_group", "pain").rows() == [
        (pl.select(pl.datetime(2025, 1, 1, 10)).item(), "calf", 3)]
    assert episodes.schema["started_at"] == pl.Datetime("us")


def test_directory_of_exports_in_mixed_formats(tmp_path):
    data = write_dataset(tmp_path, {
        "daily.csv": None,
        "daily/2025-01.csv": "subject_id,date\nS1,2025-01-01\nS1,2025-01-02\n",
        "daily/2025-02.jsonl": '{"subject_id": "S1", "date": "2025-02-01"}\n',
        "daily/2025-03.csv.gz": gzip.compress(b"date,subject_id\n2025-03-01,S1\n2025-13-01,S1\n"),
        "daily/README.txt": "not a table",
        "episode.csv": "subject_id,started_at,muscle_group\n",
    })
    result = validate_dataset(data)
    assert result.summary["ignored_files"] == ["daily/README.txt", "episode.csv"]
    daily = result.accepted["daily"]
    assert daily.select("source_file", "source_line").rows() == [
        ("daily/2025-01.csv", 2), ("daily/2025-01.csv", 3), ("daily/2025-02.jsonl", 1),
        ("daily/2025-03.csv.gz", 2)]
    assert result.quarantine.select("source_file", "line", "reason").rows() == [
        ("daily/2025-03.csv.gz", 3, "type")]
    assert [f["path"] for f in result.summary["files"] if f["table"] == "daily"] == [
        "daily/2025-01.csv", "daily/2025-02.jsonl", "daily/2025-03.csv.gz"]


def test_quoted_fields_blank_lines_and_ragged_rows_keep_editor_lines(tmp_path):
    text = (
        'subject_id,date,notes\n'            # 1
        'S1,2025-01-01,"two\nlines"\n'       # 2-3
        '\n'                                  # 4 (blank: not a row)
        'S1,2025-01-02,"a ""quoted"", b"\n'  # 5
        'S1,2025-01-03\n'                     # 6 too few fields
        'S1,2025-01-04,x,y\n'                 # 7 too many
        '"S1","2025-01-05","multi\r\nline\r\nnote"\n'  # 8-10
        'S1,2025-01-06,ok\n'                  # 11
    )
    result = validate_dataset(write_dataset(tmp_path, {"daily.csv": text}))
    assert result.accepted["daily"]["source_line"].to_list() == [2, 5, 8, 11]
    assert quarantine_rows(result.quarantine, ("line", "value", "reason", "message")) == spec_table("""
        | line | value             | reason        | message                    |
        |------|-------------------|---------------|----------------------------|
        | 6    | S1,2025-01-03     | malformed_row | expected 3 fields, found 2 |
        | 7    | S1,2025-01-04,x,y | malformed_row | expected 3 fields, found 4 |
    """)
    assert result.summary["tables"]["daily"]["read"] == 6


def test_stray_quote_falls_back_to_exact_reader(tmp_path):
    text = 'subject_id,date,notes\nS1,2025-01-01,5" tall\nS1,2025-01-02,"ok"\nS1,2025-01-03,"open\n'
    result = validate_dataset(write_dataset(tmp_path, {"daily.csv": text}))
    assert result.accepted["daily"]["source_line"].to_list() == [2, 3]
    assert result.summary["tables"]["daily"]["read"] == 3
    # The quote opened on line 4 is never closed: that row is quarantined, with its line (issue 8).
    (line, reason, message), = result.quarantine.select("line", "reason", "message").rows()
    assert (line, reason) == (4, "malformed_row")
    assert "never closed" in message


def test_columns_in_any_order_and_header_spelling(tmp_path):
    text = "Sleep_H , DATE,Subject ID\n7,2025-01-01,S1\n"
    result = validate_dataset(write_dataset(tmp_path, {"daily.csv": text}))
    assert result.accepted["daily"].select("subject_id", "date", "sleep_h").rows()[0][2] == 7.0


def test_duplicate_column_and_empty_file_are_refused(tmp_path):
    data = write_dataset(tmp_path, {"daily.csv": "subject_id,date,Date\nS1,2025-01-01,x\n"})
    with pytest.raises(UserError, match=r"daily\.csv.*'Date' appears twice"):
        validate_dataset(data)
    data = write_dataset(tmp_path, {"daily.csv": "\n\n"})
    with pytest.raises(UserError, match=r"daily\.csv.*empty"):
        validate_dataset(data)


def test_header_only_file_reads_zero_rows(tmp_path):
    result = validate_dataset(write_dataset(tmp_path, {"daily.csv": "subject_id,date\n"}))
    assert result.summary["tables"]["daily"]["read"] == 0
    assert result.accepted["daily"].height == 0


def test_json_numbers_booleans_and_nested_values(tmp_path):
    lines = [json.dumps({"subject_id": "S1", "started_at": "2025-01-01T10:00", "muscle_group":
                         "calf", "pain": 3.0, "swelling": True, "sleep_loss": 0}),
             json.dumps({"subject_id": "S1", "started_at": "2025-01-01T11:00", "muscle_group":
                         "calf", "pain": {"worst": 3}})]
    data = write_dataset(tmp_path, {"episodes.csv": None, "episodes.jsonl": "\n".join(lines)})
    result = validate_dataset(data)
    assert result.accepted["episodes"].select("pain", "swelling", "sleep_loss").rows() == [
        (3, True, False)]
    assert result.quarantine.select("line", "column", "value", "reason").rows() == [
        (2, "pain", '{"worst":3}', "type")]


@pytest.mark.parametrize("chunk_bytes", [1, 7, 40, 10_000])
def test_big_csv_read_in_pieces_gives_the_same_rows_and_lines(tmp_path, chunk_bytes):
    from pipeline.ingest.discover import discover_tables
    from pipeline.ingest.read import read_table_chunks, read_table_file

    text = ('subject_id,date,"notes\nacross lines"\r\n'
            'S1,2025-01-01,"two\r\nlines"\r\n\r\n'
            'S1,2025-01-02,x,extra\r\n'
            'S1,2025-01-03\r\n' + "".join(f"S2,2025-02-{d:02d},n{d}\r\n" for d in range(1, 20)))
    data = write_dataset(tmp_path, {"daily.csv": text})
    file = discover_tables(data)["daily"][0]
    whole = read_table_file(file).frame
    pieces = list(read_table_chunks(file, chunk_bytes=chunk_bytes))
    assert len(pieces) > 1 or chunk_bytes > len(text)
    assert_equal = pl.concat([p.frame for p in pieces])
    assert assert_equal.equals(whole)
    assert whole["__line"].to_list()[:4] == [3, 6, 7, 8]


def test_jsonl_without_any_keys_quarantines_rows_instead_of_refusing(tmp_path):
    data = write_dataset(tmp_path, {"daily.csv": None, "daily.jsonl": "{}\nnot json\n\n"})
    result = validate_dataset(data)
    assert result.quarantine.select("line", "column", "reason").rows() == [
        (1, "subject_id", "missing_required"), (2, "", "malformed_row")]
    empty = write_dataset(tmp_path / "empty", {"daily.csv": None, "daily.jsonl": "\n"})
    assert validate_dataset(empty).summary["tables"]["daily"]["read"] == 0


def test_parquet_column_of_an_unreadable_type_is_refused(tmp_path):
    import datetime as dt

    frame = pl.DataFrame({"subject_id": ["S1"], "date": ["2025-01-01"],
                          "pause": [dt.timedelta(minutes=5)]})
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    data = write_dataset(tmp_path, {"daily.csv": None, "daily.parquet": buffer.getvalue()})
    with pytest.raises(UserError, match=r"daily\.parquet.*'pause'"):
        validate_dataset(data)


@pytest.mark.parametrize("chunk_bytes", [1, 9, 50, 10_000])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_unquoted_csv_read_in_pieces_gives_the_same_rows_and_lines(tmp_path, chunk_bytes, newline):
    from pipeline.ingest.discover import discover_tables
    from pipeline.ingest.read import read_table_chunks, read_table_file

    lines = ["", "subject_id,date,sleep_h", "S1,2025-01-01,7", "", "S1,2025-01-02", "S1,x,y,z"]
    lines += [f"S2,2025-02-{d:02d},{d % 9}" for d in range(1, 20)] + ["", ""]
    data = write_dataset(tmp_path, {"daily.csv": newline.join(lines)})
    file = discover_tables(data)["daily"][0]
    whole = read_table_file(file).frame
    pieces = [p.frame for p in read_table_chunks(file, chunk_bytes=chunk_bytes)]
    assert pl.concat(pieces).equals(whole)
    assert whole["__line"].to_list()[:4] == [3, 5, 6, 7]
    assert whole["__malformed"].to_list()[1:3] == ["expected 3 fields, found 2",
                                                    "expected 3 fields, found 4"]


def test_typed_parquet_columns_are_decided_as_their_text_would_be(tmp_path):
    """Parquet numbers, booleans, dates and date-times are checked as they are (no text round
    trip for the rows that pass); every decision, message and accepted value must equal those
    for the same file with every column stored as text, the reference path."""
    import datetime as dt

    nan, inf = float("nan"), float("inf")
    n = 14
    daily = pl.DataFrame({
        "subject_id": ["S1"] * n,
        "date": pl.Series([dt.date(2025, 1, 1) + dt.timedelta(days=i) for i in range(n - 3)]
                          + [dt.date(1800, 1, 1), dt.date(2999, 1, 1), None], dtype=pl.Date),
        "sleep_h": [7.5, -0.0, nan, inf, -1.0, 30.0, None, 1e-300, 0.1, 8.0, 6.0, 7.0, 7.0, 7.0],
        "exercise_min": pl.Series([30.0] * n).cast(pl.Float32),  # read as text
        "electrolytes": [True, False, None] * 4 + [True, False],
        "caffeine_mg": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],  # Int64 for a float kind
        "notes_extra": [1.5] * n,  # an unknown column, typed
    })
    started = [dt.datetime(2025, 1, 1, 10, 0, 0, 123456), dt.datetime(2025, 2, 1, 23, 59, 59),
               dt.datetime(1700, 1, 1), None]
    episodes = pl.DataFrame({
        "episode_id": ["E1", "E2", "E3", "E4"],
        "subject_id": ["S1", "S1", "S1", "S1"],
        "started_at": pl.Series(started, dtype=pl.Datetime("us")),
        "muscle_group": ["calf"] * 4,
        "pain": [3, 2**53 + 1, -1, None],
        "swelling": [True, None, False, True],
    })

    def validated(as_text: bool):
        files = {}
        for name, frame in (("daily", daily), ("episodes", episodes)):
            if as_text:
                frame = frame.select(pl.col(c).cast(pl.String) for c in frame.columns)
            buffer = io.BytesIO()
            frame.write_parquet(buffer)
            files[f"{name}.csv"] = None
            files[f"{name}.parquet"] = buffer.getvalue()
        result = validate_dataset(write_dataset(tmp_path / str(as_text), files))
        for f in result.summary["files"]:
            f.pop("sha256")
        return result

    typed, text = validated(False), validated(True)
    assert typed.summary == text.summary
    assert typed.quarantine.equals(text.quarantine)
    # The edge values are refused, not waved through (NaN, inf, ranges, a null date, a whole
    # number past 2**53, a date-time before 1900).
    assert typed.quarantine.height == 10
    for table in ("daily", "episodes"):
        assert typed.accepted[table].equals(text.accepted[table]), table
