"""End-to-end benchmark of `cramp run --no-report` (issue 4, item 7).

1. 10,000 subjects x 365 days as CSV: wall time and peak RSS of `cramp run --no-report` in a fresh
   process (target on 2 cores: < 5 s, < 2 GiB), against the pandas + statsmodels baseline a user
   would write (benchmarks/baseline_pandas_statsmodels.py): prints the speed ratio (aim >= 8x).
2. With --large: 100,000 subjects x 365 days (36.5M subject-days) as Parquet: time and peak RSS.

Data are generated once into benchmarks/.cache/ (gitignored) and reused.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"


#: Benchmark diaries start here, so that 365 days end before today: with synth's default start
#: (2026-01-05) the last weeks would lie in the future and be quarantined as out_of_range, and
#: the toolkit would model fewer rows than the baselines read.
BENCH_START = date(2025, 1, 6)  # a Monday, as synth's default


#: Subjects generated at a time for the largest datasets (synth builds a dataset in memory:
#: 100,000 x 365 takes several GiB, 300,000 x 365 at once would not fit on this machine).
CHUNK_SUBJECTS = 100_000


def dataset(n_subjects: int, n_days: int, fmt: str) -> Path:
    from pipeline import synth

    path = CACHE / f"synth-{n_subjects}x{n_days}-{fmt}-{BENCH_START:%Y}"
    if n_subjects > CHUNK_SUBJECTS and fmt == "parquet":
        return chunked_dataset(path, n_subjects, n_days)
    if not (path / f"subjects.{fmt}").exists():
        started = time.perf_counter()
        ds = synth.generate(n_subjects, n_days, seed=7, start_date=BENCH_START)
        synth.write_dataset(ds, path, fmt=fmt)
        print(f"  generated {path.name} in {time.perf_counter() - started:.1f} s")
    return path


def chunked_dataset(path: Path, n_subjects: int, n_days: int) -> Path:
    """A Parquet dataset of ``n_subjects`` generated ``CHUNK_SUBJECTS`` at a time, each chunk one
    file per table in the table's directory (``daily/part-1.parquet``, ...: how cramp reads a
    table exported in pieces), with ids prefixed by the chunk so that they stay unique."""
    import shutil

    import polars as pl

    from pipeline import synth

    done = path / ".complete"
    if done.exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    n_chunks = -(-n_subjects // CHUNK_SUBJECTS)
    for c in range(n_chunks):
        size = min(CHUNK_SUBJECTS, n_subjects - c * CHUNK_SUBJECTS)
        ds = synth.generate(size, n_days, seed=7 + c, start_date=BENCH_START)
        custom = ds.custom_factors
        for name, frame in ds.tables().items():
            frame = frame.with_columns(pl.col("subject_id").str.replace("^S", f"S{c + 1}-"))
            if "episode_id" in frame.columns:
                frame = frame.with_columns(pl.col("episode_id").str.replace("^", f"c{c + 1}-"))
            (path / name).mkdir(parents=True, exist_ok=True)
            frame.write_parquet(path / name / f"part-{c + 1}.parquet", statistics=True)
        del ds
    if custom:
        from pipeline.synth.write import dataset_toml

        (path / "dataset.toml").write_text(dataset_toml(custom))
    done.write_text("")
    print(f"  generated {path.name} in {time.perf_counter() - started:.1f} s "
          f"({n_chunks} chunks of up to {CHUNK_SUBJECTS:,} subjects)")
    return path


# Runs a command in a child Python that reports its own peak RSS when it exits, so each process's
# high-water mark is measured separately (RUSAGE_CHILDREN would keep the maximum over all children).
_PEAK_WRAPPER = """
import atexit, resource, runpy, sys
atexit.register(lambda: sys.stderr.write(
    "\\nPEAK_RSS_KIB=%d\\n" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
target, sys.argv = sys.argv[1], sys.argv[1:]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__")
"""


def timed_subprocess(target: str, args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of ``python -m target args`` (or a script path)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, target, *args],
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{target} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    peak_kib = int(result.stderr.rsplit("PEAK_RSS_KIB=", 1)[1].split()[0])
    return wall, peak_kib / 1024**2


def run_once(data: Path, label: str) -> float:
    out = CACHE / f"out-{label}"
    shutil.rmtree(out, ignore_errors=True)
    wall, peak = timed_subprocess(
        "pipeline", ["run", "--data", str(data), "--out", str(out), "--no-report"]
    )
    effects = out / "effects.csv"
    print(f"  cramp run --no-report [{label}]: {wall:.2f} s wall, peak RSS {peak:.2f} GiB"
          f" ({effects.stat().st_size if effects.exists() else 0} bytes of effects)")
    return wall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--large", action="store_true", help="also 100,000 x 365 Parquet")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv if argv is not None else [])
    CACHE.mkdir(exist_ok=True)
    csv_data = dataset(10_000, 365, "csv")
    ours = run_once(csv_data, "10k-csv")
    if not args.no_baseline:
        wall, peak = timed_subprocess(
            str(Path(__file__).with_name("baseline_pandas_statsmodels.py")), [str(csv_data)]
        )
        print(f"  pandas + statsmodels baseline: {wall:.2f} s wall, peak RSS {peak:.2f} GiB")
        print(f"  speed-up: {wall / ours:.1f}x")
    if args.large:
        big = dataset(100_000, 365, "parquet")
        run_once(big, "100k-parquet")


if __name__ == "__main__":
    main(sys.argv[1:])
