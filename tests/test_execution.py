"""The execution layer: stable subject buckets, executors, and estimators that do not depend on
how subjects are spread over buckets.

Tolerance for the bucket-count test: 1e-10 relative (the issue's). The per-bucket sums are the
same numbers added in a different order, so the fits differ by rounding only (~1e-14 seen); the
Newton path (steps, Hessian refreshes) is the same whatever the bucketing.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline import execution
from pipeline.models import conditional_buckets as cb
from pipeline.models import poisson_buckets as pb
from pipeline.models.conditional import fit_conditional_buckets, fit_conditional_poisson
from pipeline.models.poisson import fit_poisson, fit_poisson_buckets

NAMES = ["sitting_h", "poor_posture", "fluid_l"]


def test_bucket_numbers_are_fixed_forever():
    """Pinned values: a change of hash would silently re-bucket every existing store.

    subject_id   bucket of 64   bucket of 1,000,003
    S0001        46             370605
    S0002        12             854149
    ü-7          35             981797
    """
    import hashlib

    assert [execution.bucket_of(s, 64) for s in ["S0001", "S0002", "ü-7"]] == [46, 12, 35]
    assert [execution.bucket_of(s, 1_000_003) for s in ["S0001", "S0002", "ü-7"]] == [
        370605, 854149, 981797]
    # blake2b-64 of the UTF-8 bytes, little-endian: reproducible in any language.
    for sid in ["S0001", "ü-7", "", "subject with spaces"]:
        expected = int.from_bytes(hashlib.blake2b(sid.encode(), digest_size=8).digest(),
                                  "little") % 64
        assert execution.bucket_of(sid, 64) == expected


def test_rows_of_one_subject_share_a_bucket_and_match_bucket_of():
    ids = pl.Series("subject_id", ["a", "b", "a", "c", "b", "a", None])
    b = execution.subject_buckets(ids, 7)
    assert b.dtype == pl.UInt32 and b.len() == ids.len()
    assert b.to_list()[:6] == [execution.bucket_of(s, 7) for s in ["a", "b", "a", "c", "b", "a"]]


def test_bucket_count_grows_with_the_data():
    assert execution.bucket_count(0) == 1
    assert execution.bucket_count(999_999) == 1
    assert execution.bucket_count(3_650_000) == 4
    assert execution.bucket_count(110_000_000) == 110


def test_split_by_bucket_keeps_every_row_and_whole_subjects():
    frame = pl.DataFrame({"subject_id": [f"s{i % 13}" for i in range(100)], "v": range(100)})
    parts = execution.split_by_bucket(frame, "subject_id", 5)
    assert len(parts) == 5 and sum(p.height for p in parts) == 100
    seen = [set(p["subject_id"]) for p in parts]
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1:])


def test_local_executor_maps_in_bucket_order():
    ex = execution.LocalExecutor(workers=2)
    try:
        assert ex.map(lambda h, k: h * k, ex.scatter(range(10)), 3) == [3 * i for i in range(10)]
    finally:
        ex.close()


def test_unknown_executor_is_a_user_error():
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="unknown executor"):
        execution.make_executor("spark")
    with pytest.raises(UserError, match="only used with --executor dask"):
        execution.make_executor("local", "tcp://x:1")


def panel(seed=3, n_subjects=120):
    """Subjects with 10-60 days, a frailty correlated with sitting, planted effects, string ids
    (so hash buckets mix them), a few subjects without episodes."""
    rng = np.random.default_rng(seed)
    days = rng.integers(10, 61, n_subjects)
    subject = np.repeat(np.arange(n_subjects), days)
    n = subject.size
    frailty = rng.normal(0, 0.6, n_subjects)
    X = np.column_stack([rng.normal(6, 2, n) + frailty[subject],
                         (rng.random(n) < 0.3).astype(float), rng.gamma(4, 0.5, n)])
    y = rng.poisson(np.exp(-1.5 + frailty[subject] + X @ [0.15, 0.3, -0.3])).astype(float)
    y[subject < 3] = 0
    ids = np.array([f"P{s:05d}" for s in subject])
    return X, y, ids


def bucketed(X, y, ids, n_buckets):
    frame = pl.DataFrame({"subject_id": ids, "y": y, "row": np.arange(y.size)})
    parts = execution.split_by_bucket(frame, "subject_id", n_buckets)
    out = []
    for part in parts:
        if part.height == 0:
            continue
        rows = part["row"].to_numpy()
        out.append((np.asfortranarray(X[rows]), part["y"].to_numpy(), part["subject_id"]
                    .to_numpy(), rows))
    return out


@pytest.mark.parametrize("model", ["within_subject", "population"])
def test_one_seven_and_sixty_four_buckets_agree(model):
    X, y, ids = panel()
    ex = execution.LocalExecutor(workers=2)
    fits = {}
    try:
        for k in (1, 7, 64):
            parts = bucketed(X, y, ids, k)
            if model == "within_subject":
                handles = [cb.grouped_bucket(Xb, yb, gb) for Xb, yb, gb, _ in parts]
                fit = fit_conditional_buckets(ex.scatter(handles), NAMES, executor=ex)
            else:
                handles = [pb.cluster_bucket(Xb, yb, gb) for Xb, yb, gb, _ in parts]
                fit = fit_poisson_buckets(ex.scatter(handles), NAMES, executor=ex)
            rows = np.concatenate([r for *_, r in parts])
            fitted = np.empty_like(fit.fitted)
            fitted[rows] = fit.fitted
            fits[k] = (fit, fitted)
    finally:
        ex.close()
    one, fitted_one = fits[1]
    assert len(bucketed(X, y, ids, 64)) > 40  # most of the 64 buckets hold subjects
    for k in (7, 64):
        fit, fitted = fits[k]
        assert fit.n_iter == one.n_iter
        np.testing.assert_allclose(fit.coef, one.coef, rtol=1e-10, atol=0)
        np.testing.assert_allclose(fit.cov_cluster, one.cov_cluster, rtol=1e-10, atol=0)
        np.testing.assert_allclose(fit.cov_model, one.cov_model, rtol=1e-10, atol=0)
        np.testing.assert_allclose([fit.loglik, fit.deviance, fit.pearson_chi2],
                                   [one.loglik, one.deviance, one.pearson_chi2], rtol=1e-10)
        np.testing.assert_allclose(fitted, fitted_one, rtol=1e-10, atol=1e-300)
        assert (fit.n_obs, fit.n_clusters) == (one.n_obs, one.n_clusters)
    # The in-memory API (contiguous buckets of a sorted design) gives the same answer.
    order = np.argsort(ids, kind="stable")
    subject = np.unique(ids, return_inverse=True)[1]
    if model == "within_subject":
        ref = fit_conditional_poisson(X, y, groups=subject, clusters=subject, feature_names=NAMES)
    else:
        ref = fit_poisson(X, y, clusters=subject, feature_names=NAMES)
    assert order is not None
    np.testing.assert_allclose(ref.coef, one.coef, rtol=1e-10)
    np.testing.assert_allclose(ref.cov_cluster, one.cov_cluster, rtol=1e-10)
    np.testing.assert_allclose(ref.fitted, fitted_one, rtol=1e-10, atol=1e-300)


def test_red_flags_by_bucket_equal_the_whole_table(tmp_path):
    """Every rule reads one episode or one subject (``frequent``): per-bucket evaluation, merged,
    is the whole-table evaluation, row for row and in the documented order."""
    from pipeline.ingest import ingest_dataset
    from pipeline.redflags import evaluate, load_rules
    from pipeline.redflags.buckets import evaluate_by_bucket
    from pipeline.store import Store
    from pipeline.synth import generate, write_dataset

    write_dataset(generate(60, 90, 7), tmp_path / "data")
    ingest_dataset(tmp_path / "data", tmp_path / "store")
    episodes = Store(tmp_path / "store").read("episodes")
    rules = load_rules(None)
    whole = evaluate(episodes, rules)
    assert whole.flags.height > 0 and whole.not_recorded.height > 0
    assert "frequent" in set(whole.flags["rule_id"])
    ex = execution.LocalExecutor(workers=2)
    try:
        for k in (1, 7, 64):
            got = evaluate_by_bucket(episodes, rules, ex, n_buckets=k)
            assert got.flags.equals(whole.flags)
            assert got.subject_flags.equals(whole.subject_flags)
            assert got.not_recorded.equals(whole.not_recorded)
    finally:
        ex.close()


@pytest.mark.parametrize("args, message", [
    (("--executor", "spark"), "unknown executor 'spark'"),
    (("--scheduler", "tcp://127.0.0.1:1"), "--scheduler is only used with --executor dask"),
    (("--executor", "dask", "--scheduler", "tcp://127.0.0.1:1"), "cannot reach the Dask scheduler"),
], ids=["unknown", "scheduler-without-dask", "unreachable"])
def test_bad_executor_options_are_one_message_and_exit_2(tmp_path, args, message):
    """Checked before anything is read or written."""
    import subprocess
    import sys

    from pipeline.synth import generate, write_dataset

    write_dataset(generate(3, 5, 1), tmp_path / "data")
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", "--data",
                             str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                             "--no-report", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_map_inside_a_bucket_function_runs_inline_instead_of_deadlocking():
    ex = execution.LocalExecutor(workers=2)
    try:
        inner = lambda h: sum(ex.map(lambda k: k * h, list(range(4))))  # noqa: E731
        assert ex.map(inner, list(range(6))) == [6 * h for h in range(6)]
    finally:
        ex.close()


def test_concurrent_tasks_keep_their_order_the_callers_executor_and_their_errors():
    import threading
    import time

    seen_threads, seen_executors = set(), []

    def task(i):
        def run():
            time.sleep(0.05 * (3 - i))  # finish in reverse order
            seen_threads.add(threading.get_ident())
            seen_executors.append(execution.current())
            return i * i
        return run

    mine = execution.LocalExecutor(workers=2)
    try:
        with execution.using(mine):
            assert execution.concurrently([task(i) for i in range(4)], workers=2) == [0, 1, 4, 9]
    finally:
        mine.close()
    assert len(seen_threads) == 2 and all(ex is mine for ex in seen_executors)

    def boom():
        raise ValueError("task failed")

    with pytest.raises(ValueError, match="task failed"):
        execution.concurrently([task(0), boom], workers=2)
    # One worker: in order, in this thread.
    order = []
    execution.concurrently([lambda: order.append(1), lambda: order.append(2)], workers=1)
    assert order == [1, 2]


class _Remote:
    """Stands for a remote executor (Dask): anything that is not the local pool."""

    workers = 4

    def map(self, fn, handles, *args):  # pragma: no cover - routing only
        raise AssertionError("not called")


@pytest.mark.parametrize("env, nbytes, remote", [
    # (CRAMP_DRIVER_FIT_MB, design bytes, whether the fit goes to the remote executor)
    (None, 10 * 2 ** 20, False),          # small in-memory design: the driver fits it
    (None, 256 * 2 ** 20, False),         # at the limit: still the driver
    (None, 256 * 2 ** 20 + 1, True),      # above it: the workers
    ("0", 1, True),                       # 0: every fit on the executor
    ("1", 2 * 2 ** 20, True),
    ("junk", 10 * 2 ** 20, False),        # not a number: the default
])
def test_small_in_memory_designs_are_fitted_on_the_driver(monkeypatch, env, nbytes, remote):
    if env is None:
        monkeypatch.delenv(execution.DRIVER_FIT_ENV, raising=False)
    else:
        monkeypatch.setenv(execution.DRIVER_FIT_ENV, env)
    remote_ex = _Remote()
    with execution.using(remote_ex):
        chosen = execution.for_design(nbytes)
    assert (chosen is remote_ex) is remote
    if not remote:
        assert isinstance(chosen, execution.LocalExecutor)
    with execution.using(execution.LocalExecutor(1)) as local:  # a local run: always its pool
        assert execution.for_design(nbytes) is local
