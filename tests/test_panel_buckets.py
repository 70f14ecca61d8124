"""The panel built one store bucket at a time equals the panel built whole: every feature is a
function of one subject's own days, so a bucket's part is the whole panel's rows of its
subjects, and the summary adds up from the buckets."""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline import scratch
from pipeline.features.panel import build_panel, build_panel_from_store
from pipeline.ingest import ingest_dataset
from pipeline.models.subsets import panel_subset, subject_subset
from pipeline.store import Store
from pipeline.synth import generate, write_dataset


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("panel-buckets")
    write_dataset(generate(60, 70, 5), root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRAMP_ROWS_PER_BUCKET", "600")  # 4,200 daily rows -> 7 buckets
        ingest_dataset(root / "data", root / "store")
    store = Store(root / "store")
    assert store.manifest.n_buckets == 7
    return store


@pytest.fixture(scope="module")
def panels(store, tmp_path_factory):
    whole = build_panel(store.read("daily"), store.read("episodes"), store.read("injuries"))
    run_dir = tmp_path_factory.mktemp("run")
    with scratch.session(run_dir) as root:
        bucketed = build_panel_from_store(store, injuries=True,
                                          directory=scratch.new_directory("panel"))
        frames = [bucketed.bucket(b) for b in range(bucketed.n_buckets)]
        union = bucketed.whole()
        assert all(p.parent.parent == root for p in bucketed.parts)
    assert not root.exists(), "the scratch space is removed when the job ends"
    return whole, bucketed, frames, union


def test_the_bucketed_panel_is_the_whole_panel(panels):
    whole, bucketed, _, union = panels
    assert bucketed.frame is None and bucketed.n_buckets == 7
    assert_frame_equal(union, whole.frame)
    assert bucketed.summary == whole.summary
    assert bucketed.features.keys() == whole.features.keys()
    assert bucketed.absent == whole.absent


def test_each_part_holds_whole_subjects_sorted(panels):
    whole, _, frames, _ = panels
    seen = set()
    for part in frames:
        ids = set(part["subject_id"].unique())
        assert not ids & seen
        seen |= ids
        assert part.equals(part.sort("subject_id", "date"))
        assert_frame_equal(part, whole.frame.filter(pl.col("subject_id").is_in(list(ids))))
    assert seen == set(whole.frame["subject_id"].unique())


def test_a_subject_subset_read_bucket_by_bucket_is_the_whole_panels(store, tmp_path):
    whole = build_panel(store.read("daily"), store.read("episodes"), store.read("injuries"))
    with scratch.session(tmp_path):
        bucketed = build_panel_from_store(store, injuries=True,
                                          directory=scratch.new_directory("panel"))
        sub, note = panel_subset(bucketed, 1500, what="a test")
        expected, expected_note = subject_subset(whole.frame, 1500, what="a test")
    assert 0 < sub.height < whole.frame.height
    assert_frame_equal(sub, expected)
    assert note == expected_note
