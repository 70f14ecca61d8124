"""summary.json and quarantine.csv: stable, complete, and refused when the accounting is off."""

from __future__ import annotations

import json

import polars as pl
import pytest

from pipeline.errors import UserError
from pipeline.ingest import IngestAccountingError, validate_dataset, write_ingest_outputs
from pipeline.schema import CONTRACT_VERSION, TABLES
from tests.fixtures.ingest.helpers import write_dataset

TABLE_KEYS = {"read", "accepted", "quarantined", "duplicates", "quarantined_by_reason",
              "unknown_columns"}


def _result(tmp_path):
    data = write_dataset(tmp_path, {"daily.csv": "subject_id,date,sleep_h,mood\n"
                                                 "S1,2025-01-01,7,ok\nS1,2025-01-02,x,\n"
                                                 "S1,2025-01-01,7,ok\n"})
    return validate_dataset(data)


def test_summary_and_quarantine_files(tmp_path):
    result = _result(tmp_path)
    out = tmp_path / "out"
    write_ingest_outputs(result, out)
    text = (out / "summary.json").read_text()
    summary = json.loads(text)
    assert summary["contract_version"] == CONTRACT_VERSION
    assert set(summary["tables"]) == set(TABLES)
    for table in summary["tables"].values():
        assert TABLE_KEYS <= set(table)
        assert table["read"] == table["accepted"] + table["quarantined"] + table["duplicates"]
    assert (summary["tables"]["daily"]["read"], summary["tables"]["daily"]["duplicates"]) == (3, 1)
    assert summary["tables"]["daily"]["unknown_columns"] == ["mood"]
    assert summary["tables"]["injuries"]["read"] == 0
    assert [f["path"] for f in summary["files"]] == ["subjects.csv", "daily.csv", "episodes.csv"]
    assert {f["status"] for f in summary["files"]} == {"ingested"}
    assert text == json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    quarantine = pl.read_csv(out / "quarantine.csv", infer_schema=False)
    assert quarantine.rows() == [("daily", "daily.csv", "3", "sleep_h", "x", "type",
                                  "expected a number")]
    # Writing again gives byte-identical files, and leaves no temporary files behind.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write_ingest_outputs(_result(tmp_path / "again"), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_broken_accounting_is_a_loud_bug_not_a_user_error(tmp_path):
    result = _result(tmp_path)
    result.summary["tables"]["daily"]["accepted"] += 1
    with pytest.raises(IngestAccountingError, match="daily: read 3 != accepted 2") as error:
        write_ingest_outputs(result, tmp_path / "out")
    assert not isinstance(error.value, UserError)
    assert not (tmp_path / "out" / "summary.json").exists()


def test_quarantine_must_match_the_counts(tmp_path):
    result = _result(tmp_path)
    result.quarantine = result.quarantine.clear()
    with pytest.raises(IngestAccountingError, match="quarantine.csv has 0 rows"):
        write_ingest_outputs(result, tmp_path / "out")


def test_progress_bars_only_when_asked(tmp_path, capsys):
    data = write_dataset(tmp_path, {"daily.csv": "subject_id,date\n" + "S1,2025-01-01\n" * 80_000})
    result = validate_dataset(data, progress=True)
    assert result.summary["tables"]["daily"]["duplicates"] == 79_999
    capsys.readouterr()
    validate_dataset(data, progress=False)
    assert capsys.readouterr().out == ""
