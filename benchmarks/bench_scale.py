"""Issue 10's figures: speed and memory at size, local and on Dask (by hand; not part of CI).

Default (10,000 subjects x 365 days as CSV, each in a fresh process, one after another):
  1. `cramp run --no-report` (local executor): wall time, peak RSS;
  2. the pandas + statsmodels baseline (benchmarks/baseline_pandas_statsmodels.py);
  3. the plain-polars floor: read both CSVs, build the panel (benchmarks/floor_polars.py);
  then the ratios against the targets (>= 8x the baseline, <= 2.5x the floor, < 2 GiB);
  4. the same run with `--executor dask` (a LocalCluster of one single-threaded worker per core:
     2 workers on a 2-core machine): wall time and the driver's peak RSS;
  5. the within-subject fit next to pyfixest `fepois` (CRV1 by subject) and the population fit
     next to glum (cluster-robust covariance) on the same design (the baseline's panel): times
     and the largest relative coefficient and standard-error differences (skipped when
     pyfixest/glum are not installed: `pip install pyfixest glum`, the `bench` extra).
--large: 100,000 x 365 as Parquet (target < 60 s, < 4 GiB); --huge: 300,000 x 365 as Parquet
(target: completes with peak < 4 GiB). Run these one at a time on a quiet machine.

Usage: python benchmarks/bench_scale.py [--large] [--huge] [--skip-10k] [--no-peers] [--no-dask]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_run import CACHE, dataset  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGET_SPEEDUP = 8.0
TARGET_FLOOR_RATIO = 2.5
TARGET_PEAK_10K_GIB = 2.0
TARGET_LARGE_S = 60.0
TARGET_LARGE_PEAK_GIB = 4.0


# A child Python that reports its own peak RSS and CPU seconds (user + system, its threads
# included) when it exits. CPU seconds are far less disturbed than wall time on a shared machine.
_WRAPPER = """
import atexit, resource, runpy, sys
def report():
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    sys.stderr.write("\\nPEAK_RSS_KIB=%d CPU_S=%.3f\\n" % (
        r.ru_maxrss, r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime))
atexit.register(report)
target, sys.argv = sys.argv[1], sys.argv[1:]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__")
"""
CPU: dict[str, float] = {}


def timed_subprocess(target: str, args: list[str], label: str = "") -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of ``python -m target args`` (or a script path); its CPU
    seconds go to ``CPU[label]``."""
    started = time.perf_counter()
    env = {**os.environ, "CRAMP_PROGRESS": "1"}  # cramp's stage lines, printed below
    result = subprocess.run([sys.executable, "-c", _WRAPPER, target, *args],
                            capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{target} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    tail = result.stderr.rsplit("PEAK_RSS_KIB=", 1)[1].split()
    CPU[label] = float(tail[1].split("=")[1])
    stage_lines = [ln for ln in result.stderr.splitlines() if ln.startswith("✓")]
    if stage_lines:
        print("    stages: " + "; ".join(ln[2:].split(" (at ")[0] for ln in stage_lines
                                       if not ln[2:].startswith(("check ", "read and "))),
              flush=True)
    return wall, int(tail[0]) / 1024**2


def cramp_run(data: Path, label: str, *extra: str) -> tuple[float, float]:
    out = CACHE / f"out-{label}"
    shutil.rmtree(out, ignore_errors=True)
    wall, peak = timed_subprocess("pipeline", ["run", "--data", str(data), "--out", str(out),
                                               "--no-report", *extra], label)
    print(f"  cramp run --no-report {' '.join(extra)} [{label}]: {wall:.2f} s wall, "
          f"{CPU[label]:.1f} s CPU, peak RSS {peak:.2f} GiB", flush=True)
    return wall, peak


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def ten_k(dask: bool) -> None:
    data = dataset(10_000, 365, "csv")
    ours, peak = cramp_run(data, "10k-csv")
    base, base_peak = timed_subprocess(str(HERE / "baseline_pandas_statsmodels.py"), [str(data)],
                                       "baseline")
    print(f"  pandas + statsmodels baseline: {base:.2f} s wall, {CPU['baseline']:.1f} s CPU, "
          f"peak RSS {base_peak:.2f} GiB", flush=True)
    floor, floor_peak = timed_subprocess(str(HERE / "floor_polars.py"), [str(data)], "floor")
    print(f"  plain-polars floor (read both CSVs, build the panel): {floor:.2f} s wall, "
          f"{CPU['floor']:.1f} s CPU, peak RSS {floor_peak:.2f} GiB", flush=True)
    print(f"  CPU seconds: baseline / ours {CPU['baseline'] / CPU['10k-csv']:.1f}x, "
          f"ours / floor {CPU['10k-csv'] / CPU['floor']:.1f}x (less disturbed by other load "
          "than wall time; the targets are on wall time)")
    print(f"  speed-up over the baseline: {base / ours:.1f}x (target >= {TARGET_SPEEDUP:g}x: "
          f"{verdict(base / ours >= TARGET_SPEEDUP)})")
    print(f"  ratio to the floor: {ours / floor:.1f}x (target <= {TARGET_FLOOR_RATIO:g}x: "
          f"{verdict(ours / floor <= TARGET_FLOOR_RATIO)})")
    print(f"  peak RSS {peak:.2f} GiB (target < {TARGET_PEAK_10K_GIB:g} GiB: "
          f"{verdict(peak < TARGET_PEAK_10K_GIB)})", flush=True)
    if dask:
        from pipeline.execution import cores

        workers = min(cores(), 4)
        wall, _ = cramp_run(data, "10k-csv-dask", "--executor", "dask")
        print(f"  (dask: LocalCluster of {workers} single-threaded workers; the peak is the "
              f"driver's; {wall / ours:.2f}x the local run)", flush=True)


def peers() -> None:
    try:
        import glum  # noqa: F401
        import pyfixest  # noqa: F401
    except ImportError:
        print("  pyfixest/glum not installed (pip install pyfixest glum): peers skipped")
        return
    import numpy as np
    import pandas as pd

    import baseline_pandas_statsmodels as base
    from pipeline.models import fit_conditional_poisson, fit_poisson

    data = dataset(10_000, 365, "csv")
    panel = base.build_panel(base.read_tables(data))
    names = base.FEATURES
    X = np.asfortranarray(panel[names].to_numpy(float))
    y = panel["episodes"].to_numpy(float)
    subject = panel["subject_id"].astype("category").cat.codes.to_numpy()
    print(f"  design: {X.shape[0]:,} subject-days x {X.shape[1]} features, "
          f"{subject.max() + 1:,} subjects", flush=True)

    def timed(fn):
        started = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - started

    ours_fe, t_ours_fe = timed(lambda: fit_conditional_poisson(
        X, y, groups=subject, clusters=subject, feature_names=names))
    import pyfixest as pf

    frame = pd.DataFrame(X, columns=names).assign(episodes=y, subject=subject)
    formula = "episodes ~ " + " + ".join(names) + " | subject"
    # Warm up (numba compiles pyfixest's demeaning on first use): time the second call only.
    pf.fepois(formula, data=frame.iloc[:20_000], vcov={"CRV1": "subject"})
    peer_fe, t_peer_fe = timed(lambda: pf.fepois(formula, data=frame, vcov={"CRV1": "subject"}))
    coef = peer_fe.coef()[list(names)].to_numpy()
    se = peer_fe.se()[list(names)].to_numpy()
    print(f"  within-subject: ours {t_ours_fe:.2f} s, pyfixest fepois (CRV1) {t_peer_fe:.2f} s; "
          f"max rel. difference coef {np.max(np.abs(coef / ours_fe.coef - 1)):.1e}, "
          f"SE {np.max(np.abs(se / ours_fe.se - 1)):.1e}", flush=True)

    ours_pop, t_ours_pop = timed(lambda: fit_poisson(X, y, clusters=subject,
                                                     feature_names=names))
    from glum import GeneralizedLinearRegressor

    def glum_fit():
        model = GeneralizedLinearRegressor(family="poisson", alpha=0, fit_intercept=True,
                                           gradient_tol=1e-10)
        model.fit(X, y, store_covariance_matrix=True, clusters=subject)
        return model

    GeneralizedLinearRegressor(family="poisson", alpha=0).fit(X[:20_000], y[:20_000])  # warm up
    peer_pop, t_peer_pop = timed(glum_fit)
    coef = np.r_[peer_pop.intercept_, peer_pop.coef_]
    se = np.sqrt(np.diag(peer_pop.covariance_matrix_))
    print(f"  population: ours {t_ours_pop:.2f} s, glum (clustered covariance) {t_peer_pop:.2f} s; "
          f"max rel. difference coef {np.max(np.abs(coef / ours_pop.coef - 1)):.1e}, "
          f"SE {np.max(np.abs(se / ours_pop.se - 1)):.1e}", flush=True)


def large(n_subjects: int, label: str, time_target: float | None) -> None:
    data = dataset(n_subjects, 365, "parquet")
    wall, peak = cramp_run(data, label)
    if time_target is not None:
        print(f"  target < {time_target:g} s: {verdict(wall < time_target)}")
    print(f"  peak target < {TARGET_LARGE_PEAK_GIB:g} GiB: "
          f"{verdict(peak < TARGET_LARGE_PEAK_GIB)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--large", action="store_true", help="100,000 x 365 Parquet")
    parser.add_argument("--huge", action="store_true", help="300,000 x 365 Parquet")
    parser.add_argument("--skip-10k", action="store_true")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--no-dask", action="store_true")
    args = parser.parse_args(argv if argv is not None else [])
    CACHE.mkdir(exist_ok=True)
    if not args.skip_10k:
        print("10,000 x 365 CSV:", flush=True)
        ten_k(dask=not args.no_dask)
    if not args.no_peers:
        print("peers on the same design:", flush=True)
        peers()
    if args.large:
        print("100,000 x 365 Parquet:", flush=True)
        large(100_000, "100k-parquet", TARGET_LARGE_S)
    if args.huge:
        print("300,000 x 365 Parquet:", flush=True)
        large(300_000, "300k-parquet", None)


if __name__ == "__main__":
    main(sys.argv[1:])
