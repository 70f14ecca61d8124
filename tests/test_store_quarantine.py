"""The store keeps the quarantine with the rows (committed together), and rows held as
``unknown_subject`` are admitted when their subject arrives: an incremental store ends exactly as a
fresh full ingest of the same files would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from pipeline.ingest import ingest_dataset, write_ingest_outputs
from pipeline.ingest.stored import stored_quarantine
from pipeline.schema import TABLES
from pipeline.store import Store
from tests.fixtures.ingest.helpers import write_dataset

PROJECT_ROOT = Path(__file__).resolve().parents[1]

EXPORT_1 = {
    "subjects.csv": "subject_id,age_band,sex\nS1,18-29,F\nS2,30-39,M\n",
    "daily.csv": ("subject_id,date,sleep_h\n"
                  "S1,2025-01-01,7\n"
                  "S3,2025-01-01,7\n"     # S3 unknown yet: held
                  "S3,2025-01-02,6\n"     # held
                  "S3,2025-01-03,8\n"     # held; export 2 has an exact copy (duplicate)
                  "S3,2025-01-04,8\n"     # held; export 2 says otherwise (conflict)
                  "S9,2025-01-01,5\n"     # S9 never arrives: stays held
                  "S1,2025-01-02,99\n"),  # out of range: quarantined for good
    "episodes.csv": ("subject_id,started_at,muscle_group\n"
                     "S1,2025-01-01T10:00,calf\nS3,2025-01-02T22:00,foot\n"),
}
EXPORT_2 = {
    "subjects/2025-02.csv": "subject_id,age_band,sex\nS3,40-49,F\n",
    "daily/2025-02.csv": ("subject_id,date,sleep_h\n"
                          "S3,2025-01-03,8\n"     # exact copy of a held row
                          "S3,2025-01-04,4\n"     # same key as a held row, other content
                          "S3,2025-02-01,7\n"),   # new
}


def _tables(store_dir) -> dict[str, pl.DataFrame]:
    store = Store(store_dir)
    return {t: store.read(t).collect().sort("source_file", "source_line") for t in TABLES}


def _accounting(summary: dict) -> dict:
    return {t: {k: v for k, v in counts.items() if k != "admitted"}
            for t, counts in summary["store_totals"].items()}


def test_an_incremental_store_ends_as_a_fresh_ingest_of_the_same_files(tmp_path):
    data = write_dataset(tmp_path / "inc", EXPORT_1, base=False)
    incremental = tmp_path / "inc" / "store"
    first = ingest_dataset(data, incremental)
    assert first.summary["tables"]["daily"]["quarantined_by_reason"] == {
        "out_of_range": 1, "unknown_subject": 5}
    assert Store(incremental).read_held("daily").collect().height == 5
    write_dataset(tmp_path / "inc", EXPORT_2, base=False)
    second = ingest_dataset(data, incremental)

    fresh_data = write_dataset(tmp_path / "fresh", {**EXPORT_1, **EXPORT_2}, base=False)
    fresh = ingest_dataset(fresh_data, tmp_path / "fresh" / "store")

    for table, frame in _tables(tmp_path / "fresh" / "store").items():
        assert_frame_equal(_tables(incremental)[table], frame, check_row_order=True)
    assert_frame_equal(stored_quarantine(Store(incremental)),
                       stored_quarantine(Store(tmp_path / "fresh" / "store")))
    assert _accounting(second.summary) == _accounting(fresh.summary)
    daily = second.summary["store_totals"]["daily"]
    # 7 + 3 rows read. Accepted: S1's first row, three held S3 rows, S3's new February row.
    # Duplicate: the new copy of a held row. Quarantined: the held row and the new row that
    # conflict, S1's out-of-range row, and S9's row (S9 never arrived).
    assert (daily["rows"], daily["accepted"], daily["duplicates"], daily["quarantined"]) == (
        10, 5, 1, 4)
    assert daily["quarantined_by_reason"] == {"conflict": 2, "out_of_range": 1,
                                              "unknown_subject": 1}
    assert daily["admitted"] == 3
    assert second.summary["store_totals"]["episodes"]["admitted"] == 1


def test_each_admission_is_recorded_in_the_summary_and_the_manifest(tmp_path):
    data = write_dataset(tmp_path, EXPORT_1, base=False)
    store_dir = tmp_path / "store"
    ingest_dataset(data, store_dir)
    write_dataset(tmp_path, EXPORT_2, base=False)
    result = ingest_dataset(data, store_dir)
    recorded = [(a["table"], a["source_file"], a["admitted"], a["duplicates"], a["conflicts"])
                for a in result.summary["admissions"]]
    assert recorded == [("daily", "daily.csv", 3, 0, 1), ("episodes", "episodes.csv", 1, 0, 0)]
    manifest = Store(store_dir).manifest
    assert [(a.table, a.source_file, a.admitted) for a in manifest.admissions] == [
        ("daily", "daily.csv", 3), ("episodes", "episodes.csv", 1)]
    # This run's own rows add up on their own; the admitted rows are not "read" again.
    daily = result.summary["tables"]["daily"]
    assert (daily["read"], daily["accepted"], daily["duplicates"], daily["quarantined"]) == (
        3, 1, 1, 1)
    # The one held row left is S9's.
    assert Store(store_dir).read_held("daily").collect()["subject_id"].to_list() == ["S9"]


def test_quarantine_csv_describes_the_store_even_when_every_file_was_skipped(tmp_path):
    data = write_dataset(tmp_path, EXPORT_1, base=False)
    store_dir = tmp_path / "store"
    write_ingest_outputs(ingest_dataset(data, store_dir), tmp_path / "first")
    again = ingest_dataset(data, store_dir)
    assert {f["status"] for f in again.summary["files"]} == {"skipped_already_ingested"}
    write_ingest_outputs(again, tmp_path / "again")
    assert (tmp_path / "again" / "quarantine.csv").read_bytes() == \
        (tmp_path / "first" / "quarantine.csv").read_bytes()
    first = json.loads((tmp_path / "first" / "summary.json").read_text())
    second = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert second["store_totals"] == first["store_totals"]
    assert first["store_totals"]["daily"]["quarantined"] == 6


_KILL_AFTER_COMMIT = textwrap.dedent("""
    import os, signal, sys
    import pipeline.atomic as atomic

    original = atomic.write_with

    def commit_then_die(path, write):
        result = original(path, write)
        if path.name == "manifest.json":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    atomic.write_with = commit_then_die
    sys.argv = ["cramp", *sys.argv[1:]]
    from pipeline.cli import main
    main()
""")


def test_a_kill_after_the_commit_loses_no_quarantine_record(tmp_path):
    data = write_dataset(tmp_path, EXPORT_1, base=False)
    store, out = tmp_path / "store", tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    killed = subprocess.run([sys.executable, "-c", _KILL_AFTER_COMMIT, "ingest", str(data),
                             "--store", str(store), "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert Store(store).manifest.files and not (out / "quarantine.csv").exists()
    # The re-run skips every file (already committed) and still writes the whole quarantine.
    result = ingest_dataset(data, store)
    assert {f["status"] for f in result.summary["files"]} == {"skipped_already_ingested"}
    write_ingest_outputs(result, out)
    quarantine = pl.read_csv(out / "quarantine.csv")
    assert quarantine.group_by("reason").len().sort("reason").rows() == [
        ("out_of_range", 1), ("unknown_subject", 6)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["store_totals"]["daily"]["quarantined_by_reason"] == {
        "out_of_range": 1, "unknown_subject": 5}
