"""The Parquet store: exact schemas, idempotent ingest by file hash, atomic and crash-safe writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline.ingest import ingest_dataset
from pipeline.schema import PROVENANCE_SCHEMA, TABLES
from pipeline.store import Store
from tests.fixtures.ingest.helpers import write_dataset

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DAILY = "subject_id,date,sleep_h,airq\nS1,2025-01-01,7,40\nS1,2025-01-02,6,\nS2,2025-01-01,8,12\n"
TOML = ('[[custom_factors]]\ncolumn = "airq"\nfactor = "air_quality"\nlabel = "Air quality"\n'
        'kind = "numeric"\n')


def _dataset(tmp_path):
    return write_dataset(tmp_path, {"daily.csv": DAILY, "dataset.toml": TOML})


def test_empty_store_reads_every_table_with_its_schema(tmp_path):
    store = Store(tmp_path / "store")
    for name, table in TABLES.items():
        frame = store.read(name).collect()
        assert frame.height == 0
        assert dict(frame.schema) == {**table.polars_schema(), **PROVENANCE_SCHEMA}


def test_read_has_exact_schema_with_custom_columns_and_provenance(tmp_path):
    store_dir = tmp_path / "store"
    ingest_dataset(_dataset(tmp_path), store_dir)
    store = Store(store_dir)
    daily = store.read("daily").collect()
    assert dict(daily.schema) == {**TABLES["daily"].polars_schema(), "airq": pl.Float64(),
                                  **PROVENANCE_SCHEMA}
    assert daily.select("subject_id", "sleep_h", "airq", "source_file", "source_line").rows() == [
        ("S1", 7.0, 40.0, "daily.csv", 2), ("S1", 6.0, None, "daily.csv", 3),
        ("S2", 8.0, 12.0, "daily.csv", 4)]
    # injuries was not in the dataset: it reads empty, with the right schema
    injuries = store.read("injuries").collect()
    assert injuries.height == 0
    assert dict(injuries.schema) == {**TABLES["injuries"].polars_schema(), **PROVENANCE_SCHEMA}
    files = {f.path: f for f in store.manifest.files}
    assert set(files) == {"subjects.csv", "daily.csv", "episodes.csv"}
    assert files["daily.csv"].rows == 3 and files["daily.csv"].accepted == 3
    assert len(files["daily.csv"].sha256) == 64
    assert files["daily.csv"].ingested_at.endswith("Z")


def test_ingesting_the_same_files_twice_adds_nothing(tmp_path):
    data, store_dir = _dataset(tmp_path), tmp_path / "store"
    ingest_dataset(data, store_dir)
    before = {t: Store(store_dir).read(t).collect() for t in TABLES}
    again = ingest_dataset(data, store_dir)
    assert {f["status"] for f in again.summary["files"]} == {"skipped_already_ingested"}
    assert all(t["read"] == 0 for t in again.summary["tables"].values())
    for t in TABLES:
        assert_frame_equal(Store(store_dir).read(t).collect(), before[t])
    assert len(Store(store_dir).manifest.files) == 3


def test_a_new_file_adds_its_rows_checked_against_the_store(tmp_path):
    data, store_dir = _dataset(tmp_path), tmp_path / "store"
    ingest_dataset(data, store_dir)
    (data / "daily").mkdir()
    (data / "daily" / "2025-02.csv").write_text(
        "subject_id,date,sleep_h,airq\n"
        "S1,2025-02-01,7,\n"      # new: accepted
        "S1,2025-01-01,7,40\n"    # exact copy of a stored row: duplicate
        "S2,2025-01-01,5,12\n"    # same key as a stored row, other content: conflict
        "S2,2025-02-01,7,\n")     # S2 is known from the stored subjects: accepted
    result = ingest_dataset(data, store_dir)
    daily = result.summary["tables"]["daily"]
    assert (daily["read"], daily["accepted"], daily["duplicates"], daily["quarantined"]) == (4, 2, 1, 1)
    conflict = result.quarantine.row(0, named=True)
    assert (conflict["line"], conflict["reason"]) == (4, "conflict")
    assert conflict["message"].endswith("(the stored row is kept)")
    stored = Store(store_dir).read("daily").collect()
    assert stored.height == 5
    assert stored.filter(pl.col("source_file") == "daily/2025-02.csv")["source_line"].to_list() == [2, 5]
    statuses = {f["path"]: f["status"] for f in result.summary["files"]}
    assert statuses == {"subjects.csv": "skipped_already_ingested",
                        "daily.csv": "skipped_already_ingested",
                        "daily/2025-02.csv": "ingested",
                        "episodes.csv": "skipped_already_ingested"}


def test_an_edited_file_is_ingested_again_and_old_rows_count_as_duplicates(tmp_path):
    data, store_dir = _dataset(tmp_path), tmp_path / "store"
    ingest_dataset(data, store_dir)
    (data / "daily.csv").write_text(DAILY + "S2,2025-01-02,8,\n")
    result = ingest_dataset(data, store_dir)
    daily = result.summary["tables"]["daily"]
    assert (daily["read"], daily["accepted"], daily["duplicates"]) == (4, 1, 3)
    assert Store(store_dir).read("daily").collect().height == 4


def test_a_refused_file_leaves_the_store_untouched(tmp_path):
    data, store_dir = _dataset(tmp_path), tmp_path / "store"
    ingest_dataset(data, store_dir)
    manifest_before = (store_dir / "manifest.json").read_bytes()
    (data / "injuries.csv").write_text("subject_id,date,muscle_group,Phone\nS1,2025-01-01,calf,x\n")
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="injuries.csv.*'Phone'"):
        ingest_dataset(data, store_dir)
    assert (store_dir / "manifest.json").read_bytes() == manifest_before
    assert Store(store_dir).read("injuries").collect().height == 0


_KILLABLE = textwrap.dedent("""
    import sys, time
    import pipeline.atomic as atomic

    original = atomic.write_with
    mode = sys.argv[3]

    def paused(path, write):
        if mode == "before_manifest" and path.name == "manifest.json":
            print("READY", flush=True)
            time.sleep(120)
        if mode == "inside_part" and path.suffix == ".parquet":
            def half_written(tmp):
                write(tmp)
                print("READY", flush=True)
                time.sleep(120)
            return original(path, half_written)
        return original(path, write)

    atomic.write_with = paused
    from pipeline.ingest import ingest_dataset
    ingest_dataset(sys.argv[1], sys.argv[2])
""")


def _ingest_and_kill(data: Path, store_dir: Path, mode: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(data), str(store_dir), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _snapshot(store_dir: Path) -> dict[str, pl.DataFrame]:
    return {t: Store(store_dir).read(t).collect() for t in TABLES}


@pytest.mark.parametrize("mode", ["before_manifest", "inside_part"])
def test_sigkill_mid_ingest_leaves_the_store_intact(tmp_path, mode):
    data, store_dir = _dataset(tmp_path), tmp_path / "store"
    # First ingest completes; the second (a new export) is killed while writing.
    ingest_dataset(data, store_dir)
    before = _snapshot(store_dir)
    manifest_before = Store(store_dir).manifest
    (data / "daily").mkdir()
    (data / "daily" / "more.csv").write_text("subject_id,date,sleep_h\nS1,2025-03-01,7\n")
    _ingest_and_kill(data, store_dir, mode)

    # The killed run is invisible: same manifest, same rows, every table readable.
    assert Store(store_dir).manifest == manifest_before
    after = _snapshot(store_dir)
    for t in TABLES:
        assert_frame_equal(after[t], before[t])

    # Re-running completes the ingest exactly once and clears the leftovers.
    result = ingest_dataset(data, store_dir)
    assert result.summary["tables"]["daily"]["accepted"] == 1
    assert Store(store_dir).read("daily").collect().height == before["daily"].height + 1
    listed = {p for parts in Store(store_dir).manifest.parts.values() for p in parts}
    on_disk = {p.name for p in (store_dir / "tables").rglob("*") if p.is_file()}
    assert on_disk == listed
    assert not list(store_dir.glob(".*.tmp"))


def test_sigkill_during_first_ingest_leaves_an_empty_readable_store(tmp_path):
    data, store_dir = _dataset(tmp_path), tmp_path / "store"
    _ingest_and_kill(data, store_dir, "before_manifest")
    assert all(frame.height == 0 for frame in _snapshot(store_dir).values())
    ingest_dataset(data, store_dir)
    assert Store(store_dir).read("daily").collect().height == 3


def test_a_custom_factor_declared_later_is_added_to_the_stored_table(tmp_path):
    data = write_dataset(tmp_path, {"daily.csv": "subject_id,date\nS1,2025-01-01\n"})
    store_dir = tmp_path / "store"
    ingest_dataset(data, store_dir)
    (data / "dataset.toml").write_text(TOML)
    (data / "daily").mkdir()
    (data / "daily" / "new.csv").write_text("subject_id,date,airq\nS1,2025-01-01,\nS1,2025-01-02,9\n")
    result = ingest_dataset(data, store_dir)
    assert result.summary["tables"]["daily"]["duplicates"] == 1
    daily = Store(store_dir).read("daily").collect()
    assert daily.select("source_file", "airq").rows() == [("daily.csv", None),
                                                          ("daily/new.csv", 9.0)]


def test_a_refused_first_ingest_creates_no_store(tmp_path):
    from pipeline.errors import UserError

    data = write_dataset(tmp_path, {"daily.csv": "subject_id,date,email\nS1,2025-01-01,x\n"})
    with pytest.raises(UserError):
        ingest_dataset(data, tmp_path / "store")
    with pytest.raises(UserError):
        ingest_dataset(tmp_path / "missing", tmp_path / "store")
    assert not (tmp_path / "store").exists()
