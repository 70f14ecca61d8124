"""Benchmark of the synthetic generator (by hand; not part of CI).

Prints wall time of ``synth.generate`` and ``synth.write_dataset`` for 10,000 subjects × 365 days
(CSV and Parquet), row counts and the process's peak RSS. ``--large`` adds 100,000 × 365 as Parquet
(run it alone: peak RSS is a process-wide high-water mark).

Usage: python benchmarks/bench_synth.py [--large] [--subjects N --days D]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _cpu_s() -> float:
    """CPU seconds of this process (all threads): a figure less sensitive to a busy machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(n_subjects: int, n_days: int, formats: tuple[str, ...]) -> None:
    from pipeline import synth

    started, cpu = time.perf_counter(), _cpu_s()
    ds = synth.generate(n_subjects, n_days, seed=7)
    generated = time.perf_counter() - started
    print(f"  {n_subjects:,} x {n_days} days: generate {generated:.2f} s wall, "
          f"{_cpu_s() - cpu:.2f} s CPU "
          f"({ds.daily.height:,} daily rows, {ds.episodes.height:,} episodes, "
          f"{ds.injuries.height:,} injuries); peak RSS so far {_peak_gib():.2f} GiB", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        for fmt in formats:
            started, cpu = time.perf_counter(), _cpu_s()
            synth.write_dataset(ds, tmp / fmt / "data", fmt=fmt)
            size = sum(p.stat().st_size for p in (tmp / fmt / "data").iterdir()) / 1024**2
            print(f"    write {fmt}: {time.perf_counter() - started:.2f} s wall, "
                  f"{_cpu_s() - cpu:.2f} s CPU, {size:,.0f} MiB; "
                  f"peak RSS so far {_peak_gib():.2f} GiB", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--large", action="store_true", help="also 100,000 x 365 as Parquet")
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv or [])
    run(args.subjects, args.days, ("csv", "parquet"))
    if args.large:
        run(100_000, 365, ("parquet",))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
