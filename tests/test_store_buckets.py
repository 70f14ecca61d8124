"""The subject-bucketed store: every accepted row in its subject's bucket, the bucket count
recorded once, ``read`` unchanged as the union of the buckets."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline import execution
from pipeline.ingest import ingest_dataset
from pipeline.store import Store, bucket_of_part
from pipeline.synth import generate, write_dataset

TABLES = ("subjects", "daily", "episodes", "injuries")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("buckets")
    write_dataset(generate(40, 60, 11), root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRAMP_ROWS_PER_BUCKET", "500")  # 2,400 daily rows -> 5 buckets
        ingest_dataset(root / "data", root / "store")
    return Store(root / "store")


def test_the_bucket_count_is_chosen_from_the_size_and_recorded(store):
    assert store.manifest.n_buckets == 5
    for table in TABLES:
        assert all(bucket_of_part(p) is not None for p in store.manifest.parts[table])


@pytest.mark.parametrize("table", TABLES)
def test_buckets_partition_every_table_by_subject(store, table):
    whole = store.read(table).collect()
    parts = [store.read_bucket(table, b).collect() for b in range(store.manifest.n_buckets)]
    assert sum(p.height for p in parts) == whole.height > 0
    for b, part in enumerate(parts):
        assert part.schema == whole.schema
        assert set(execution.subject_buckets(part["subject_id"], 5).to_list()) <= {b}
    key = ["source_file", "source_line"]
    assert pl.concat(parts).sort(key).equals(whole.sort(key))


def test_a_later_ingest_keeps_the_bucket_count(store, tmp_path):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store.path, copy)
    more = tmp_path / "more"
    write_dataset(generate(3, 10, 12), more)
    ingest_dataset(more, copy)  # tiny: on its own it would get 1 bucket
    assert Store(copy).manifest.n_buckets == 5


def test_a_small_store_has_one_bucket(tmp_path):
    write_dataset(generate(5, 20, 13), tmp_path / "data")
    ingest_dataset(tmp_path / "data", tmp_path / "store")
    s = Store(tmp_path / "store")
    assert s.manifest.n_buckets == 1
    assert s.read_bucket("daily", 0).collect().height == s.read("daily").collect().height
