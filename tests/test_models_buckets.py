"""Models fitted from a panel held in buckets on disk equal the models fitted in memory.

A run keeps its panel and each model's design one subject bucket at a time in its scratch space
(``design_buckets``); the sufficiency policy, the collinearity check, the Newton passes, the
sandwich, the calibration and the dose-response subset are then reductions over buckets. The
results must equal the in-memory path's beyond floating-point summation order (1e-10 relative),
with identical counts, reasons and notes, under the default and a non-default ``[analysis]``.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline import scratch
from pipeline.analysis_config import AnalysisConfig
from pipeline.features.panel import build_panel, build_panel_from_store
from pipeline.ingest import ingest_dataset
from pipeline.models import fit_models
from pipeline.store import Store
from pipeline.synth import generate, write_dataset

RTOL = 1e-10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("model-buckets")
    write_dataset(generate(150, 80, 17), root / "data")
    return root


def bucketed_store(root, n_buckets: int, rows_per_bucket: str) -> Store:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRAMP_ROWS_PER_BUCKET", rows_per_bucket)  # about 10,500 daily rows
        ingest_dataset(root / "data", root / f"store-{n_buckets}")
    store = Store(root / f"store-{n_buckets}")
    assert store.manifest.n_buckets == n_buckets
    return store


@pytest.fixture(scope="module")
def store(data):
    return bucketed_store(data, 7, "1600")


@pytest.fixture(scope="module")
def store64(data):
    return bucketed_store(data, 64, "162")


def fits(store, tmp_path, analysis):
    whole = build_panel(store.read("daily"), store.read("episodes"), store.read("injuries"))
    in_memory = fit_models(whole, analysis=analysis)
    with scratch.session(tmp_path) as root:
        panel = build_panel_from_store(store, injuries=True,
                                       directory=scratch.new_directory("panel"))
        assert panel.frame is None and panel.n_buckets == store.manifest.n_buckets
        bucketed = fit_models(panel, analysis=analysis)
        # Each model's design is removed once the model is done: only the panel is left.
        assert [p.name.split("-")[0] for p in root.iterdir()] == ["panel"]
    return in_memory, bucketed


def assert_same_table(a: pl.DataFrame, b: pl.DataFrame):
    assert a.columns == b.columns and a.height == b.height
    for name, dtype in a.schema.items():
        if dtype.is_float():
            x, y = a[name].to_numpy(), b[name].to_numpy()
            assert np.array_equal(np.isnan(x), np.isnan(y)), name
            ok = ~np.isnan(x)
            np.testing.assert_allclose(y[ok], x[ok], rtol=RTOL, atol=1e-12, err_msg=name)
        else:
            assert a[name].to_list() == b[name].to_list(), name


def assert_same_json(a, b, path="diagnostics"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_json(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_json(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=RTOL, abs=1e-12, nan_ok=True), path
    else:
        assert a == b, path


@pytest.mark.parametrize("analysis", [
    AnalysisConfig(),
    AnalysisConfig(strata="subject_month", adjust=("day_of_week", "days_in_study")),
], ids=["default", "subject-month-adjusted"])
@pytest.mark.parametrize("curve_rows", [None, 3000], ids=["all-rows", "curve-subset"])
@pytest.mark.parametrize("budget_mb", ["0", "1024"], ids=["designs-on-disk", "designs-held"])
def test_bucketed_designs_give_the_in_memory_results(store, tmp_path, monkeypatch, analysis,
                                                     curve_rows, budget_mb):
    # 0: every design bucket on disk (DesignFile); 1024: held in memory (HeldBucket).
    monkeypatch.setenv("CRAMP_DESIGN_MEMORY_MB", budget_mb)
    if curve_rows:  # the curves' subject subset, gathered from the buckets
        monkeypatch.setattr("pipeline.models.dose_response.MAX_SUBJECT_DAYS", curve_rows)
    in_memory, bucketed = fits(store, tmp_path, analysis)
    if curve_rows:
        assert bucketed.diagnostics["dose_response"]["subset"]["n_subject_days"] <= curve_rows
    assert in_memory.effects["irr"].is_not_null().sum() > 10
    assert_same_table(in_memory.effects, bucketed.effects)
    assert in_memory.dose_response.height > 0
    assert_same_table(in_memory.dose_response, bucketed.dose_response)
    assert_same_json(in_memory.diagnostics, bucketed.diagnostics)
    for model in ("population", "within_subject"):
        calibration = bucketed.diagnostics["models"][model]["calibration"]
        assert [row["decile"] for row in calibration] == list(range(1, 11))


def test_sixty_four_buckets_give_the_in_memory_results(store64, tmp_path, monkeypatch):
    monkeypatch.setenv("CRAMP_DESIGN_MEMORY_MB", "0")
    in_memory, bucketed = fits(store64, tmp_path, AnalysisConfig())
    assert_same_table(in_memory.effects, bucketed.effects)
    assert_same_table(in_memory.dose_response, bucketed.dose_response)
    assert_same_json(in_memory.diagnostics, bucketed.diagnostics)


@pytest.mark.parametrize("where", ["panel", "design"])
def test_a_full_disk_in_the_scratch_space_is_one_message_and_leaves_nothing(tmp_path,
                                                                            monkeypatch, where):
    import errno

    from pipeline.errors import UserError
    from pipeline.run import run_job

    write_dataset(generate(60, 60, 3), tmp_path / "data")
    monkeypatch.setenv("CRAMP_ROWS_PER_BUCKET", "900")  # several buckets: the scratch path

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("CRAMP_DESIGN_MEMORY_MB", "0")
    if where == "panel":
        monkeypatch.setattr(pl.DataFrame, "write_ipc", full)
    else:
        monkeypatch.setattr("pipeline.models.design_buckets.np.save", full)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="no space left on the device"):
        run_job(tmp_path / "data", out, report=False)
    assert not list(out.glob(".scratch-*")), "the scratch space is removed on failure too"
