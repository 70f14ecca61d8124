"""The same run on a 2-worker Dask LocalCluster equals the local executor's.

The local run of this small dataset has a store of one bucket and one bucket per fit; the Dask run
has a store of five subject buckets (``CRAMP_ROWS_PER_BUCKET``), which the workers read and
evaluate the red flags on, and four buckets per fit (two per worker): the comparison crosses both
executors, the store layouts and the bucketings. Tolerance:
1e-9 relative on every number of effects.csv, dose_response.csv, lags.csv (when a run writes it)
and diagnostics.json (the sums differ in summation order only, ~1e-14); the red-flag tables must
be identical.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from pipeline.run import run_job
from pipeline.synth import generate, write_dataset

pytest.importorskip("distributed")

NUMERIC_TABLES = ("effects.csv", "dose_response.csv", "lags.csv")
EXACT_TABLES = ("red_flags.csv", "subject_flags.csv", "red_flags_not_recorded.csv")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask")
    data = root / "data"
    write_dataset(generate(80, 120, 20261201), data)
    out = {}
    for kind in ("local", "dask"):
        out[kind] = root / kind
        with pytest.MonkeyPatch.context() as mp:
            if kind == "dask":
                mp.setenv("CRAMP_ROWS_PER_BUCKET", "2000")
            run_job(data, out[kind], report=False, executor=kind)
    from pipeline.store import Store

    assert Store(out["local"] / "store").manifest.n_buckets == 1
    assert Store(out["dask"] / "store").manifest.n_buckets == 5
    return out


def assert_frames_close(a: pl.DataFrame, b: pl.DataFrame, rtol: float) -> None:
    assert a.columns == b.columns and a.height == b.height
    for name in a.columns:
        if a[name].dtype.is_numeric():
            np.testing.assert_allclose(b[name].to_numpy().astype(float),
                                       a[name].to_numpy().astype(float), rtol=rtol, atol=0,
                                       equal_nan=True, err_msg=name)
        else:
            assert a[name].to_list() == b[name].to_list(), name


@pytest.mark.parametrize("table", NUMERIC_TABLES)
def test_model_tables_equal_the_local_executors(runs, table):
    local, dask = runs["local"] / table, runs["dask"] / table
    if not local.exists():
        assert not dask.exists()
        pytest.skip(f"this build writes no {table}")
    a, b = pl.read_csv(local, infer_schema_length=None), pl.read_csv(dask, infer_schema_length=None)
    assert a.height > 0
    assert_frames_close(a, b, rtol=1e-9)


@pytest.mark.parametrize("table", EXACT_TABLES)
def test_red_flags_equal_the_local_executors(runs, table):
    a = (runs["local"] / table).read_bytes()
    assert a == (runs["dask"] / table).read_bytes()


def test_diagnostics_equal_the_local_executors(runs):
    def numbers(obj, path=""):
        if isinstance(obj, dict):
            for k, v in sorted(obj.items()):
                yield from numbers(v, f"{path}.{k}")
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                yield from numbers(v, f"{path}[{i}]")
        else:
            yield path, obj

    a = dict(numbers(json.loads((runs["local"] / "diagnostics.json").read_text())))
    b = dict(numbers(json.loads((runs["dask"] / "diagnostics.json").read_text())))
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, float) and not isinstance(value, bool):
            assert b[key] == pytest.approx(value, rel=1e-9, abs=0), key
        else:
            assert b[key] == value, key
