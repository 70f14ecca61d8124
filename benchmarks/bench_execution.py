"""Executors compared on the same within-subject fit (by hand; not part of CI).

The per-bucket passes are numpy (BLAS, ufuncs, reductions release the GIL), so a thread pool
should keep every core busy without copying buckets between processes. This times one fit of a
simulated design (default 4,000 subjects x 365 days x 14 features) on: one thread; a local
thread pool of one thread per core; a Dask LocalCluster of one single-threaded worker process per
core (buckets shipped once per fit, coefficients and p x p sums per pass). Prints wall and CPU
seconds of this process (the Dask workers' CPU is not in it).

Usage: python benchmarks/bench_execution.py [--subjects N] [--days D]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=4000)
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv if argv is not None else [])
    from pipeline import execution
    from pipeline.models import fit_conditional_poisson

    rng = np.random.default_rng(0)
    p = 14
    subject = np.repeat(np.arange(args.subjects), args.days)
    n = subject.size
    frailty = rng.normal(0, 0.6, args.subjects)
    X = np.asfortranarray(rng.normal(size=(n, p)) + 0.3 * frailty[subject, None])
    y = rng.poisson(np.exp(-1.5 + frailty[subject] + X @ np.full(p, 0.05))).astype(float)
    names = [f"x{j}" for j in range(p)]
    cores = execution.cores()
    print(f"within-subject fit, {n:,} rows x {p} features, {args.subjects:,} subjects, "
          f"{cores} cores", flush=True)
    reference = None
    for label, make in (("1 thread", lambda: execution.LocalExecutor(1)),
                        (f"thread pool ({cores})", lambda: execution.LocalExecutor(cores)),
                        (f"Dask LocalCluster ({cores} processes)",
                         lambda: execution.DaskExecutor(n_workers=cores))):
        ex = make()
        try:
            fit_conditional_poisson(X[:50_000], y[:50_000], groups=subject[:50_000],
                                    clusters=subject[:50_000], feature_names=names, executor=ex)
            wall, cpu = time.perf_counter(), time.process_time()
            fit = fit_conditional_poisson(X, y, groups=subject, clusters=subject,
                                          feature_names=names, executor=ex)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            ex.close()
        reference = fit.coef if reference is None else reference
        diff = float(np.max(np.abs(fit.coef / reference - 1)))
        print(f"  {label:32s} {wall:6.2f} s wall, {cpu:6.2f} s CPU here "
              f"({fit.n_iter} Newton steps; max rel. coef difference {diff:.1e})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
