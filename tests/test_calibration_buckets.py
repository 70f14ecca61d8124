"""Calibration deciles from per-bucket statistics equal ``calibration`` on the concatenation
(issue 10): the same bins, the same integer counts, the same order statistics at the bin edges
bit for bit (``predicted_rate_min``/``max``), the predicted and observed sums within 1e-12
relative (summation order only; identical with one bucket). Rows tied with an edge value are
placed by their row order in the concatenation, buckets in order.

Each case is split into 1, 7 and 64 buckets at random cut points (so some buckets are empty),
and run with the default bounds on what a bucket returns and with bounds that force the other
paths: ``max_values=3`` (histograms refined until a bin holds three rows), ``max_values=0``
(never values: a bin's distinct keys, or histograms down to single keys), ``max_distinct=0``
(never distinct keys) and ``max_distinct=2`` (some buckets return distinct keys, others a
histogram).
"""

from __future__ import annotations

import pickle
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.execution import LocalExecutor
from pipeline.models.calibration import (
    MAX_DISTINCT,
    MAX_VALUES,
    bucket_assign,
    bucket_refine,
    bucket_summary,
    float_keys,
    key_value,
)
from pipeline.models.diagnostics import calibration, calibration_by_buckets
from tests.fixtures.ingest.helpers import spec_table

EPS = np.finfo(float).eps

CASES = r"""
| case              | rows  | why                                                        |
| spread            | 5000  | gamma-distributed rates: every value distinct              |
| lognormal         | 5000  | rates over many binades                                    |
| three values      | 5000  | heavy ties at every edge                                   |
| all equal         | 3000  | one value: every row tied                                  |
| last bit          | 4000  | 1 + k eps for k = 0..3: values differing in the last bit   |
| ties and spread   | 4000  | half the rows share one rate, the rest distinct            |
| one row           | 1     | a single subject-day                                       |
| fewer than bins   | 7     | n < bins: some deciles empty                               |
| as many as bins   | 10    | one row per decile                                         |
| signed infinite   | 3000  | negative, zero, -0.0 and infinite values                   |
| extreme           | 3000  | subnormal to 1e300                                         |
| no rows           | 0     | nothing to calibrate                                       |
"""


def rates(case: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if case == "spread":
        return rng.gamma(2.0, 0.01, n)
    if case == "lognormal":
        return np.exp(rng.normal(-3, 3, n))
    if case == "three values":
        return rng.choice([0.01, 0.02, 0.05], n)
    if case == "all equal":
        return np.full(n, 0.03)
    if case == "last bit":
        return 1.0 + rng.integers(0, 4, n) * EPS
    if case == "ties and spread":
        mu = rng.gamma(2.0, 0.01, n)
        mu[rng.random(n) < 0.5] = 0.02
        return mu
    if case == "signed infinite":
        mu = rng.normal(size=n)
        pick = rng.integers(0, n, 40)
        mu[pick] = rng.choice([np.inf, -np.inf, 0.0, -0.0], 40)
        return mu
    if case == "extreme":
        return np.exp(rng.uniform(np.log(5e-324), np.log(1e300), n))
    return rng.gamma(2.0, 0.01, n)


def split(y: np.ndarray, mu: np.ndarray, n_buckets: int, rng: np.random.Generator) -> list:
    cuts = np.sort(rng.integers(0, y.size + 1, n_buckets - 1))
    return list(zip(np.split(y, cuts), np.split(mu, cuts)))


def in_memory(handle):
    """The test's ``load``: a handle is the bucket's (y, fitted) itself."""
    return handle


def assert_same_table(expected: list[dict], got: list[dict], exact_sums: bool = False) -> None:
    assert [(r["decile"], r["n_subject_days"]) for r in got] == \
        [(r["decile"], r["n_subject_days"]) for r in expected]
    for e, g in zip(expected, got):
        assert g.keys() == e.keys()
        for key in ("predicted_rate_min", "predicted_rate_max"):
            assert g[key] == e[key], (key, e, g)
        for key in ("predicted_episodes", "observed_episodes"):
            if exact_sums or not np.isfinite(e[key]):
                assert g[key] == e[key], (key, e, g)
            else:
                assert g[key] == pytest.approx(e[key], rel=1e-12, abs=0), (key, e, g)


@pytest.mark.parametrize("max_values, max_distinct", [
    (MAX_VALUES, MAX_DISTINCT), (3, MAX_DISTINCT), (0, MAX_DISTINCT), (0, 0), (3, 2)])
@pytest.mark.parametrize("n_buckets", [1, 7, 64])
@pytest.mark.parametrize("row", spec_table(CASES), ids=lambda r: r["case"])
def test_bucketed_calibration_equals_calibration_of_the_concatenation(row, n_buckets, max_values,
                                                                      max_distinct):
    rng = np.random.default_rng(zlib.crc32(row["case"].encode()))
    n = int(row["rows"])
    mu = rates(row["case"], n, rng)
    y = rng.poisson(np.clip(np.abs(np.nan_to_num(mu, posinf=1, neginf=1)), 0, 3)).astype(float)
    buckets = split(y, mu, n_buckets, rng)
    expected = calibration(y, mu)
    got = calibration_by_buckets(buckets, in_memory, max_values=max_values,
                                 max_distinct=max_distinct)
    assert_same_table(expected, got, exact_sums=n_buckets == 1)
    if n:
        assert sum(r["n_subject_days"] for r in got) == n


def test_empty_buckets_anywhere_and_no_buckets():
    rng = np.random.default_rng(5)
    mu = rng.gamma(2.0, 0.01, 500)
    y = rng.poisson(mu * 10).astype(float)
    empty = (np.zeros(0), np.zeros(0))
    buckets = [empty, (y[:200], mu[:200]), empty, empty, (y[200:], mu[200:]), empty]
    assert_same_table(calibration(y, mu), calibration_by_buckets(buckets, in_memory))
    assert calibration_by_buckets([], in_memory) == []
    assert calibration_by_buckets([empty, empty], in_memory) == []


def test_other_bin_counts():
    rng = np.random.default_rng(6)
    mu = rng.choice([0.1, 0.2, 0.3, 0.4], 997)
    y = rng.poisson(mu).astype(float)
    for bins in (1, 2, 3, 20, 300):
        assert_same_table(calibration(y, mu, bins),
                          calibration_by_buckets(split(y, mu, 7, rng), in_memory, bins=bins))


def test_ties_are_placed_in_row_order_across_buckets():
    # Ten rows of one rate: deciles 1..10 in row order, whatever the bucketing.
    y = np.arange(10, dtype=float)
    mu = np.full(10, 0.5)
    got = calibration_by_buckets([(y[:3], mu[:3]), (y[3:3], mu[3:3]), (y[3:], mu[3:])], in_memory)
    assert [r["observed_episodes"] for r in got] == list(range(10))


# ------------------------------------------------------------------ keys


def test_keys_order_as_the_floats():
    values = np.array([-np.inf, -1e300, -1.0, -5e-324, -0.0, 0.0, 5e-324, 1.0, 1.0 + EPS,
                       1e300, np.inf, np.nan])
    keys = float_keys(values)
    assert (np.diff(keys[:4].astype(object)) > 0).all()
    assert keys[4] == keys[5]  # -0.0 == 0.0
    assert (np.diff(keys[5:].astype(object)) > 0).all()
    assert keys[-1] == np.iinfo(np.uint64).max
    assert [key_value(int(k)) for k in keys[:-1]] == [*values[:4], 0.0, *values[5:-1]]
    assert np.isnan(key_value(int(keys[-1])))


# ------------------------------------------------------------------ how it runs


def test_passes_and_what_a_bucket_returns_are_small():
    """Distinct rates: a summary, a histogram, the values of a few bins, the assignment; the
    same with one rate in eight tied among them (the tie's bin returned as distinct keys). One
    rate: a summary and the assignment. No bucket returns more than a 2**16-bin histogram."""
    rng = np.random.default_rng(7)
    tie_among_spread = rng.gamma(2.0, 0.01, 200_000)
    tie_among_spread[::8] = 0.02
    for mu, passes in [(rng.gamma(2.0, 0.01, 200_000), 4), (tie_among_spread, 4),
                       (np.full(200_000, 0.02), 2)]:
        y = rng.poisson(mu).astype(float)
        calls = []

        def mapper(fn, handles, *args, calls=calls):
            out = [fn(h, *args) for h in handles]
            calls.append((fn.__name__, max(len(pickle.dumps(o)) for o in out)))
            return out

        got = calibration_by_buckets(split(y, mu, 7, rng), in_memory, mapper)
        assert_same_table(calibration(y, mu), got)
        assert len(calls) == passes, calls
        assert max(size for _, size in calls) < 6 * 2**16 + 4096, calls


def load_npy(handle):
    """A ``load`` as the models will use it: the bucket's y and fitted values as ``.npy`` files,
    memory-mapped (the passes before the last read the fitted values only)."""
    y_path, mu_path = handle
    return np.load(y_path, mmap_mode="r"), np.load(mu_path, mmap_mode="r")


def write_buckets(tmp_path, y, mu, n_buckets, rng):
    handles = []
    for b, (yb, mb) in enumerate(split(y, mu, n_buckets, rng)):
        np.save(tmp_path / f"y-{b}.npy", yb)
        np.save(tmp_path / f"mu-{b}.npy", mb)
        handles.append((str(tmp_path / f"y-{b}.npy"), str(tmp_path / f"mu-{b}.npy")))
    return handles


def test_npy_buckets_on_the_local_executor(tmp_path):
    rng = np.random.default_rng(8)
    mu = rng.gamma(2.0, 0.01, 30_000)
    mu[::7] = 0.02  # ties at an edge
    y = rng.poisson(mu).astype(float)
    handles = write_buckets(tmp_path, y, mu, 7, rng)
    executor = LocalExecutor(2)
    try:
        got = calibration_by_buckets(handles, load_npy, executor.map)
    finally:
        executor.close()
    assert_same_table(calibration(y, mu), got)


def test_the_bucket_functions_pickle():
    for fn in (bucket_summary, bucket_refine, bucket_assign, load_npy):
        assert pickle.loads(pickle.dumps(fn)) is fn


@pytest.mark.slow
def test_npy_buckets_on_a_dask_cluster(tmp_path):
    pytest.importorskip("distributed")
    from pipeline.execution import DaskExecutor

    rng = np.random.default_rng(9)
    mu = rng.choice([0.01, 0.02, 0.05], 20_000)
    mu[::3] = rng.gamma(2.0, 0.01, mu[::3].size)
    y = rng.poisson(mu).astype(float)
    handles = write_buckets(tmp_path, y, mu, 7, rng)
    executor = DaskExecutor(n_workers=2)
    try:
        got = calibration_by_buckets(handles, load_npy, executor.map)
    finally:
        executor.close()
    assert_same_table(calibration(y, mu), got)


# ------------------------------------------------------------------ property


values_pool = st.sampled_from([0.0, 1e-3, 0.01, 0.01 + 1e-17, 0.02, 0.5, 1.0, 1.0 + EPS, 7.0])


@given(
    mu=st.lists(st.one_of(values_pool,
                          st.floats(0, 10, allow_nan=False, allow_infinity=False)),
                min_size=0, max_size=120),
    cuts=st.lists(st.integers(0, 120), max_size=8),
    bins=st.integers(1, 12),
    max_values=st.sampled_from([0, 1, 2, 5, MAX_VALUES]),
    max_distinct=st.sampled_from([0, 1, 3, MAX_DISTINCT]),
)
def test_property_equals_calibration(mu, cuts, bins, max_values, max_distinct):
    mu = np.array(mu, dtype=float)
    y = (np.arange(mu.size) % 3).astype(float)
    cuts = sorted(min(c, mu.size) for c in cuts)
    buckets = list(zip(np.split(y, cuts), np.split(mu, cuts)))
    expected = calibration(y, mu, bins)
    assert_same_table(expected, calibration_by_buckets(buckets, in_memory, bins=bins,
                                                       max_values=max_values,
                                                       max_distinct=max_distinct))
