"""The same run on a 2-worker Dask LocalCluster equals the local executor's.

The local run of this small dataset has a store of one bucket and one bucket per fit; the Dask run
has a store of five subject buckets (``CRAMP_ROWS_PER_BUCKET``), which the workers read and
evaluate the red flags on, and four buckets per fit (two per worker): the comparison crosses both
executors, the store layouts and the bucketings. Tolerance:
1e-9 relative on every number of effects.csv, dose_response.csv, lags.csv, subgroups.csv,
subject_effects.csv, heterogeneity.csv, cohort.csv (those a run writes) and diagnostics.json (the sums differ in summation order only, ~1e-14); the red-flag tables must
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

NUMERIC_TABLES = ("effects.csv", "dose_response.csv", "lags.csv", "subgroups.csv",
                  "subject_effects.csv", "heterogeneity.csv", "cohort.csv")
EXACT_TABLES = ("red_flags.csv", "subject_flags.csv", "red_flags_not_recorded.csv")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask")
    data = root / "data"
    write_dataset(generate(80, 120, 20261201), data)
    out = {}
    out["data"] = data
    for kind in ("local", "dask"):
        out[kind] = root / kind
        with pytest.MonkeyPatch.context() as mp:
            if kind == "dask":
                mp.setenv("CRAMP_ROWS_PER_BUCKET", "2000")
                # Every fit on the workers, the small in-memory ones too (by default those
                # run on the driver: execution.for_design).
                mp.setenv("CRAMP_DRIVER_FIT_MB", "0")
            run_job(data, out[kind], report=False, executor=kind)
    from pipeline.store import Store

    assert Store(out["local"] / "store").manifest.n_buckets == 1
    assert Store(out["dask"] / "store").manifest.n_buckets == 5
    return out


def assert_frames_close(a: pl.DataFrame, b: pl.DataFrame, rtol: float,
                        printed_digits: int | None = None) -> None:
    """Numbers within ``rtol``; with ``printed_digits`` (the CSVs hold 6 significant digits) two
    values may also be one unit apart in the last printed digit: results equal to 1e-9 still
    print differently when they straddle a rounding boundary (seen: 0.889620|5)."""
    assert a.columns == b.columns and a.height == b.height
    for name in a.columns:
        if a[name].dtype.is_numeric():
            x, z = a[name].to_numpy().astype(float), b[name].to_numpy().astype(float)
            if printed_digits is not None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    unit = 10.0 ** (np.floor(np.log10(np.abs(x))) - (printed_digits - 1))
                close = np.isclose(z, x, rtol=rtol, atol=0, equal_nan=True) | (
                    np.abs(z - x) <= 1.000001 * unit)
                assert close.all(), (name, x[~close], z[~close])
            else:
                np.testing.assert_allclose(z, x, rtol=rtol, atol=0, equal_nan=True,
                                           err_msg=name)
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
    assert_frames_close(a, b, rtol=1e-9, printed_digits=6)


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
            # diagnostics.json holds 6 significant digits too (see assert_frames_close).
            unit = 10.0 ** (np.floor(np.log10(abs(value))) - 5) if value else 0.0
            assert abs(b[key] - value) <= max(1e-9 * abs(value), 1.000001 * unit), key
        else:
            assert b[key] == value, key


def test_full_precision_model_results_equal_on_dask(runs, monkeypatch):
    """The CSVs round to 6 digits; here the models' frames themselves, fitted on the same panel
    with the local executor and on a 2-worker LocalCluster (4 buckets per fit), within 1e-9."""
    from pipeline import execution
    from pipeline.dataset_config import load_dataset_config
    from pipeline.features import build_panel
    from pipeline.models import fit_models
    from pipeline.store import Store

    store = Store(runs["dask"] / "store")  # 5 store buckets
    config = load_dataset_config(runs["data"])
    panel = build_panel(store.read("daily"), store.read("episodes"), store.read("injuries"),
                        custom_factors=config.custom_factors)
    monkeypatch.setenv("CRAMP_DRIVER_FIT_MB", "0")  # every fit on the workers
    results = {}
    for kind in ("local", "dask"):
        ex = (execution.LocalExecutor(1) if kind == "local"
              else execution.DaskExecutor(n_workers=2))
        try:
            with execution.using(ex):
                results[kind] = fit_models(panel, custom_factors=config.custom_factors)
        finally:
            ex.close()
    a, b = results["local"], results["dask"]
    assert a.effects["irr"].drop_nulls().len() > 5
    assert_frames_close(a.effects, b.effects, rtol=1e-9)
    assert_frames_close(a.dose_response, b.dose_response, rtol=1e-9)
