"""The cross-row checks of ingest run per subject bucket, and their results do not depend on the
number of buckets: an ingest into a store of 1, about 7 or about 64 buckets accepts, quarantines,
counts and stores exactly the same rows (summary, quarantine with its messages, held rows,
admissions), whether the validated rows are staged in memory (1) or in files (7, 64).

The exports are the hard case: a second export into a store that holds rows of a subject not yet
accepted; it brings that subject (held rows admitted), copies of stored rows (duplicates), rows
that contradict them (conflicts), an ``episode_id`` used by two subjects that fall in different
buckets (a key that crosses buckets, checked on the narrow key column), and episodes without an
id (fallback key, checked within the bucket).
"""

from __future__ import annotations

import csv
import io
import json

import polars as pl
import pytest

from pipeline import execution
from pipeline.ingest import ingest_dataset, staging
from pipeline.ingest.stored import stored_quarantine
from pipeline.store import Store
from pipeline.synth import generate, write_dataset

BUCKETS = (1, 7, 64)
_TIMES = {"ingested_at", "admitted_at"}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    path.write_text(out.getvalue())


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("bucket-exports")
    write_dataset(generate(30, 40, 21), root / "full")
    subjects, daily, episodes = (_rows(root / "full" / f"{t}.csv")
                                 for t in ("subjects", "daily", "episodes"))
    # The first subject is accepted only by the second export: its rows wait, held.
    a, b = root / "a", root / "b"
    _write(a / "subjects.csv", [subjects[0], *subjects[2:]])
    _write(a / "daily.csv", daily[: len(daily) * 2 // 3])
    _write(a / "episodes.csv", episodes[: len(episodes) * 2 // 3])
    # Two subjects in different buckets of 7 share an episode_id (with different content).
    ids = [r[0] for r in subjects[2:]]
    one = ids[0]
    other = next(s for s in ids if execution.bucket_of(s, 7) != execution.bucket_of(one, 7))
    header_e = episodes[0]
    stored_episode = next(r for r in episodes[1: len(episodes) * 2 // 3] if r[1] == one)
    borrowed = [stored_episode[0], other, *stored_episode[2:]]
    no_id = ["", one, *stored_episode[2:]]
    _write(b / "subjects.csv", [subjects[0], subjects[1], *subjects[-5:]])  # 1 new, 5 copies
    conflict_day = daily[5][:]
    conflict_day[2] = "999" if conflict_day[2] != "999" else "998"
    _write(b / "daily" / "one.csv", [daily[0], *daily[len(daily) // 2:], conflict_day])
    _write(b / "daily" / "two.csv", [daily[0], *daily[-20:]])  # copies of the first file
    _write(b / "episodes.csv", [header_e, *episodes[len(episodes) // 2:], borrowed, no_id,
                                no_id, [e if i else "" for i, e in enumerate(episodes[-1])]])
    return a, b


def _ingest(exports, tmp_path, monkeypatch, n_buckets: int) -> dict:
    store_dir = tmp_path / f"store-{n_buckets}"
    daily_rows = sum(1 for _ in open(exports[0] / "daily.csv")) - 1
    monkeypatch.setenv(execution.ROWS_PER_BUCKET_ENV, str(-(-daily_rows // n_buckets)))
    # One bucket keeps the staged rows in memory; the others stage them in files (both must
    # decide alike).
    monkeypatch.setattr(staging, "MEMORY_BYTES", 1 << 30 if n_buckets == 1 else 0)
    results = [ingest_dataset(data, store_dir) for data in exports]
    store = Store(store_dir)
    # The count follows the accepted rows (about n_buckets: some rows are quarantined or held).
    assert store.manifest.n_buckets == 1 if n_buckets == 1 else \
        n_buckets * 0.8 <= store.manifest.n_buckets <= n_buckets
    def scrub(x):
        if isinstance(x, dict):
            return {k: scrub(v) for k, v in x.items() if k not in _TIMES}
        if isinstance(x, list):
            return [scrub(v) for v in x]
        return x

    return {
        "summaries": [json.dumps(scrub(r.summary), sort_keys=True) for r in results],
        "accepted": [{t: r.accepted[t] for t in r.accepted} for r in results],
        "quarantine": stored_quarantine(store),
        "stored": {t: _sorted(store.read(t).collect()) for t in store.manifest.parts},
        "held": {t: store.read_held(t).collect() for t in ("daily", "episodes", "injuries")},
    }


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    # Both exports name their file episodes.csv: provenance alone does not order the rows.
    return frame.sort(frame.columns, nulls_last=True)


@pytest.fixture(scope="module")
def outcomes(exports, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bucket-stores")
    with pytest.MonkeyPatch.context() as mp:
        return {n: _ingest(exports, tmp, mp, n) for n in BUCKETS}


def test_the_exports_exercise_every_cross_row_check(outcomes):
    first, second = (json.loads(s) for s in outcomes[1]["summaries"])
    assert first["tables"]["daily"]["quarantined_by_reason"].get("unknown_subject", 0) > 0
    assert second["admissions"], "held rows must be admitted by the second export"
    reasons = second["tables"]["episodes"]["quarantined_by_reason"]
    assert reasons.get("conflict", 0) >= 1
    assert second["tables"]["daily"]["quarantined_by_reason"].get("conflict") == 1
    assert second["tables"]["daily"]["duplicates"] > 0
    assert second["tables"]["subjects"]["duplicates"] == 5
    q = outcomes[7]["quarantine"]
    crossing = q.filter((pl.col("table") == "episodes") & (pl.col("reason") == "conflict")
                        & (pl.col("column") == "episode_id"))
    assert crossing.height == 1 and "the stored row is kept" in crossing["message"][0]
    assert q.filter(pl.col("column") == "subject_id+started_at+muscle_group").height == 0


@pytest.mark.parametrize("n_buckets", BUCKETS[1:])
def test_the_checks_do_not_depend_on_the_number_of_buckets(outcomes, n_buckets):
    one, many = outcomes[1], outcomes[n_buckets]
    assert many["summaries"] == one["summaries"]
    assert many["quarantine"].equals(one["quarantine"])
    for table, frame in one["stored"].items():
        assert many["stored"][table].equals(frame), table
    for table, frame in one["held"].items():
        assert many["held"][table].equals(frame), table
    for got, want in zip(many["accepted"], one["accepted"]):
        assert got.keys() == want.keys()
        for table in want:  # input order, whatever the buckets
            assert got[table].equals(want[table]), table
