"""Calibration deciles: the whole-array ``calibration`` against ``calibration_by_buckets`` over
``.npy`` buckets (by hand; not part of CI).

Writes simulated fitted rates (default 36.5M rows, the 100,000 x 365 run's subject-days; a
frailty-like lognormal spread, and one rate in eight tied at 0.02) and Poisson counts as one
``.npy`` pair per bucket of ~1M rows in a temporary directory, then runs each method in a fresh
process and prints wall and CPU seconds and the process's peak RSS: the whole-array method loads
and concatenates every bucket; the bucketed one memory-maps one bucket at a time per pass
(``LocalExecutor`` threads), and also prints its passes. Both tables are compared (counts and
edges identical, sums within 1e-12 relative).

Usage: python benchmarks/bench_calibration.py [--rows N] [--rows-per-bucket M]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def load_npy(handle):
    y_path, mu_path = handle
    return np.load(y_path, mmap_mode="r"), np.load(mu_path, mmap_mode="r")


def write(directory: Path, rows: int, per_bucket: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    handles = []
    for b, start in enumerate(range(0, rows, per_bucket)):
        m = min(per_bucket, rows - start)
        mu = np.exp(rng.normal(-3.2, 0.8, m))
        mu[rng.random(m) < 0.125] = 0.02
        y = rng.poisson(mu).astype(float)
        handles.append((str(directory / f"y-{b}.npy"), str(directory / f"mu-{b}.npy")))
        np.save(handles[-1][0], y)
        np.save(handles[-1][1], mu)
    return handles


def run(method: str, handles: list) -> dict:
    from pipeline.execution import LocalExecutor
    from pipeline.models.diagnostics import calibration, calibration_by_buckets

    handles = [tuple(h) for h in handles]
    t0, c0 = time.perf_counter(), time.process_time()
    passes = []
    if method == "whole":
        parts = [load_npy(h) for h in handles]
        table = calibration(np.concatenate([p[0] for p in parts]),
                            np.concatenate([p[1] for p in parts]))
    else:
        executor = LocalExecutor()

        def mapper(fn, hs, *args):
            passes.append(fn.__name__)
            return executor.map(fn, hs, *args)

        table = calibration_by_buckets(handles, load_npy, mapper)
        executor.close()
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "passes": passes, "table": table}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=36_500_000)
    parser.add_argument("--rows-per-bucket", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "HANDLES_JSON"))
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    if args.child:
        out = run(args.child[0], json.loads(Path(args.child[1]).read_text()))
        print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory(prefix="bench-calibration-") as tmp:
        handles = write(Path(tmp), args.rows, args.rows_per_bucket)
        listing = Path(tmp) / "handles.json"
        listing.write_text(json.dumps(handles))
        print(f"calibration deciles, {args.rows:,} rows in {len(handles)} .npy buckets",
              flush=True)
        results = {}
        for method in ("whole", "buckets"):
            proc = subprocess.run([sys.executable, __file__, "--child", method, str(listing)],
                                  check=True, capture_output=True, text=True)
            r = results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
            extra = f", {len(r['passes'])} passes" if r["passes"] else ""
            print(f"  {method:8s} {r['wall']:6.2f} s wall {r['cpu']:6.2f} s cpu "
                  f"peak RSS {r['peak_kib'] / 1024:7.0f} MiB{extra}", flush=True)
        a, b = results["whole"]["table"], results["buckets"]["table"]
        same = [(r["n_subject_days"], r["predicted_rate_min"], r["predicted_rate_max"])
                for r in a] == [(r["n_subject_days"], r["predicted_rate_min"],
                                 r["predicted_rate_max"]) for r in b]
        worst = max(abs(x[k] - z[k]) / abs(x[k]) for x, z in zip(a, b)
                    for k in ("predicted_episodes", "observed_episodes") if x[k])
        print(f"  counts and edges identical: {same}; largest relative sum difference "
              f"{worst:.1e}")


if __name__ == "__main__":
    main()
