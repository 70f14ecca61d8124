"""Resource limits and files the user may not notice (issue 8, items 4 and 6).

Each limit refuses a small hostile input (``UserError``, exit 2) within seconds; inputs just
inside a limit are read as before. The stdlib CSV fallback quarantines a row, never the file.
"""

from __future__ import annotations

import gzip
import io
import time
import zlib

import polars as pl
import pytest

from pipeline.errors import UserError
from pipeline.ingest import validate_dataset
from pipeline.ingest.discover import ignored_file_hint
from pipeline.ingest.read import decompress_gzip
from pipeline.schema import MAX_COLUMNS_PER_FILE, MAX_LINE_BYTES
from tests.fixtures.ingest.helpers import write_dataset

#: Refusal must come long before memory or time run out; generous for a loaded 2-core machine.
REFUSE_WITHIN_S = 3.0


def _refused(tmp_path, files, match: str) -> float:
    data = write_dataset(tmp_path, files)
    started = time.perf_counter()
    with pytest.raises(UserError, match=match):
        validate_dataset(data)
    return time.perf_counter() - started


def test_gzip_bomb_refused_within_seconds(tmp_path):
    # 1 GiB of zeros in about 1 MB, as the bomb of the issue (138 s and 6 GB before): 64 gzip
    # members of 16 MiB each (concatenated members are one valid gzip file).
    member = gzip.compress(b"\0" * (16 << 20), compresslevel=9)
    payload = gzip.compress(b"subject_id,date\n") + member * 64
    assert len(payload) < 2 << 20
    elapsed = _refused(tmp_path, {"daily.csv": None, "daily.csv.gz": payload}, "expands more than")
    assert elapsed < REFUSE_WITHIN_S


def test_single_stream_gzip_bomb_refused_within_seconds(tmp_path):
    stream = zlib.compressobj(1, zlib.DEFLATED, 31)
    payload = stream.compress(b"subject_id,date\n") + b"".join(
        stream.compress(b"\0" * (1 << 20)) for _ in range(64)) + stream.flush()
    elapsed = _refused(tmp_path, {"daily.csv": None, "daily.csv.gz": payload}, "expands more than")
    assert elapsed < REFUSE_WITHIN_S


def test_a_compressible_export_is_read(tmp_path):
    rows = "".join(f"S1,2025-{m:02d}-{d:02d}\n" for m in range(1, 13) for d in range(1, 29))
    text = ("subject_id,date\n" + rows).encode()
    result = validate_dataset(write_dataset(tmp_path, {"daily.csv": None,
                                                        "daily.csv.gz": gzip.compress(text)}))
    assert result.summary["tables"]["daily"]["accepted"] == 12 * 28


@pytest.mark.parametrize("members", [
    [b"subject_id,date\nS1,2025-01-01\n"],
    [b"subject_id,date\n", b"S1,2025-01-01\n", b"S1,2025-01-02\n"],
])
def test_gzip_members_and_padding_read_as_gzip_reads_them(members):
    from pathlib import Path

    from pipeline.ingest.discover import TableFile

    file = TableFile("daily", Path("daily.csv.gz"), "daily.csv.gz", "csv.gz")
    data = b"".join(gzip.compress(m) for m in members)
    assert decompress_gzip(data, file) == b"".join(members)
    assert decompress_gzip(data + b"\0" * 10, file) == b"".join(members)
    with pytest.raises(UserError, match="not a readable gzip file"):
        decompress_gzip(data[:-5], file)


def test_million_comma_header_refused_within_seconds(tmp_path):
    header = "subject_id,date" + "," * 1_000_000
    elapsed = _refused(tmp_path, {"daily.csv": header + "\nS1,2025-01-01\n"},
                       "MAX_COLUMNS_PER_FILE")
    assert elapsed < REFUSE_WITHIN_S


def test_million_comma_header_on_the_fallback_path_refused(tmp_path):
    # A lone CR sends the file to the standard-library reader.
    header = "subject_id,date" + "," * 1_000_000
    elapsed = _refused(tmp_path, {"daily.csv": header + "\rS1,2025-01-01\r"},
                       "MAX_COLUMNS_PER_FILE")
    assert elapsed < REFUSE_WITHIN_S


def test_columns_up_to_the_limit_are_read(tmp_path):
    header = "subject_id,date," + ",".join(f"x{i}" for i in range(MAX_COLUMNS_PER_FILE - 2))
    data = write_dataset(tmp_path, {"daily.csv": header + "\nS1,2025-01-01" + ","
                                    * (MAX_COLUMNS_PER_FILE - 2) + "\n"})
    assert validate_dataset(data).summary["tables"]["daily"]["accepted"] == 1


def test_header_line_over_the_limit_refused(tmp_path):
    header = "subject_id,date," + "x" * MAX_LINE_BYTES
    _refused(tmp_path, {"daily.csv": header + "\nS1,2025-01-01,1\n"}, "MAX_LINE_BYTES")


def test_jsonl_with_too_many_distinct_keys_refused_within_seconds(tmp_path):
    lines = "\n".join("{" + ",".join(f'"k{j}_{i}": 1' for i in range(100)) + "}"
                      for j in range(1000))
    elapsed = _refused(tmp_path, {"daily.csv": None, "daily.jsonl": lines},
                       "MAX_COLUMNS_PER_FILE")
    assert elapsed < REFUSE_WITHIN_S


def test_parquet_with_too_many_columns_refused(tmp_path):
    buffer = io.BytesIO()
    pl.DataFrame({f"c{i}": [1] for i in range(MAX_COLUMNS_PER_FILE + 1)}).write_parquet(buffer)
    _refused(tmp_path, {"daily.csv": None, "daily.parquet": buffer.getvalue()},
             "MAX_COLUMNS_PER_FILE")


@pytest.mark.parametrize("ending", ["\n", "\r"], ids=["fast_path", "stdlib_path"])
def test_a_row_over_the_line_limit_is_quarantined_not_the_file(tmp_path, ending):
    text = ending.join(["subject_id,date,notes", "S1,2025-01-01," + "n" * (MAX_LINE_BYTES + 1),
                        "S1,2025-01-02,ok", ""])
    result = validate_dataset(write_dataset(tmp_path, {"daily.csv": text}))
    assert result.accepted["daily"]["source_line"].to_list() == [3]
    (line, reason, value), = result.quarantine.select("line", "reason", "value").rows()
    assert (line, reason) == (2, "malformed_row") and len(value) <= 200


def test_a_200_kib_field_on_the_stdlib_path_is_read(tmp_path):
    # Over the csv module's default field limit (128 KiB), under MAX_LINE_BYTES.
    text = "subject_id,date,notes\rS1,2025-01-01," + "n" * (200 << 10) + "\rS1,2025-01-02,ok\r"
    result = validate_dataset(write_dataset(tmp_path, {"daily.csv": text}))
    assert result.accepted["daily"]["source_line"].to_list() == [2, 3]
    assert result.quarantine.height == 0


def test_unterminated_quote_quarantines_the_row_naming_its_lines(tmp_path):
    text = 'subject_id,date,notes\nS1,2025-01-01,ok\nS1,2025-01-02,"open\nS1,2025-01-03,x\n'
    result = validate_dataset(write_dataset(tmp_path, {"daily.csv": text}))
    assert result.accepted["daily"]["source_line"].to_list() == [2]
    (line, reason, message), = result.quarantine.select("line", "reason", "message").rows()
    assert (line, reason) == (3, "malformed_row")
    assert "lines 3 to 4" in message and "never closed" in message


def test_cr_only_jsonl_is_read_line_by_line(tmp_path):
    text = '{"subject_id": "S1", "date": "2025-01-01"}\r{"subject_id": "S1", "date": "2025-01-02"}\r'
    result = validate_dataset(write_dataset(tmp_path, {"daily.csv": None, "daily.jsonl": text}))
    assert result.accepted["daily"]["source_line"].to_list() == [1, 2]


def test_every_ignored_file_is_listed_masked(tmp_path):
    data = write_dataset(tmp_path, {
        "daily.xlsx": b"PK", "daily/2024/a.csv": "x", "daily/notes.txt": "x",
        "episodes.json": "[]", "episode.csv": "x", "jane.doe@example.com.tsv": "x",
        ".hidden": "x", "dataset.toml": ""})
    assert validate_dataset(data).summary["ignored_files"] == [
        "daily/2024/", "daily/notes.txt", "daily.xlsx", "episode.csv", "episodes.json",
        "j***@***.com.tsv"]


@pytest.mark.parametrize("name,hint", [
    ("daily.xlsx", "daily.xlsx found: export it as CSV"),
    ("daily/2024/", "daily/2024/ is a directory inside a table directory"),
    ("episodes.json", "episodes.json found: save it as JSON Lines"),
    ("episode.csv", "episode.csv found: not a contract table name"),
    ("notes.tsv", "notes.tsv found: export it as CSV"),
    ("README.md", None),
])
def test_hints_for_ignored_files(name, hint):
    found = ignored_file_hint(name)
    assert (found is None) if hint is None else found.startswith(hint)


def test_symlink_inside_the_dataset_is_read(tmp_path):
    data = write_dataset(tmp_path, {"exports/d.csv": "subject_id,date\nS1,2025-01-01\n",
                                    "daily.csv": None})
    (data / "daily.csv").symlink_to(data / "exports" / "d.csv")
    assert validate_dataset(data).summary["tables"]["daily"]["accepted"] == 1


def test_symlink_out_of_the_dataset_is_refused_by_name(tmp_path):
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:TOP-SECRET\n")
    data = write_dataset(tmp_path, {"injuries.csv": None})
    (data / "injuries.csv").symlink_to(secret)
    with pytest.raises(UserError, match="injuries.csv: is a symbolic link") as error:
        validate_dataset(data)
    assert "TOP-SECRET" not in str(error.value) and "passwd" not in str(error.value)
