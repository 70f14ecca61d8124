"""Benchmark: ingest 10,000 subjects x 365 days of CSV (3.65M daily rows, ~0.7M episodes).

Target (issue 2, item 10): under 10 s wall time on 2 cores, peak RSS under 2 GiB.

The dataset is generated with ``pipeline.synth`` (cached under ``--cache`` so reruns skip it), or
given with ``--data DIR`` (e.g. ``benchmarks/.cache/synth-10000x365-csv``, what ``make bench``
uses); the ingest runs in a fresh child process so that its peak RSS is measured alone
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``, the figure ``/usr/bin/time -v`` reports).
The child's stage lines (``pipeline.progress``: each file read and validated, each table's
checks, the store) are printed too; on a shared machine compare CPU seconds as well as wall.

    .venv/bin/python benchmarks/bench_ingest.py [--subjects 10000] [--days 365] [--cache DIR]
    .venv/bin/python benchmarks/bench_ingest.py --data DIR [--repeat 3]

Issue 10 (bounded memory): the ingest of 100,000 subjects x 365 days of Parquet (36.5M
subject-days) must stay well under 4 GiB: the validated rows are staged on disk by subject
bucket, so peak memory follows a piece and a bucket, not the dataset. That figure:

    .venv/bin/python benchmarks/bench_ingest.py \
        --data benchmarks/.cache/synth-100000x365-parquet-2025 --target-rss-gib 4 --target-s 60
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 10.0


def cpu_pressure() -> str:
    """Linux PSI ``some avg10`` for CPU: how much of the last 10 s runnable tasks waited."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return line.split()[1].split("=")[1] + "%"
    except (OSError, IndexError):
        return "n/a"

TARGET_RSS_GIB = 2.0

_CHILD = """
import io, sys, time, json
from pathlib import Path
from rich.console import Console
from pipeline import progress
from pipeline.ingest import ingest_dataset, write_ingest_outputs
lines = io.StringIO()
t0 = time.perf_counter()
with progress.session(True, console=Console(file=lines, width=200, color_system=None)):
    result = ingest_dataset(Path(sys.argv[1]), Path(sys.argv[2]), progress=True)
t1 = time.perf_counter()
write_ingest_outputs(result, Path(sys.argv[3]))
t2 = time.perf_counter()
stages = [l.strip() for l in lines.getvalue().splitlines() if l.strip().startswith("✓")]
print(json.dumps({"ingest_s": t1 - t0, "outputs_s": t2 - t1, "stages": stages,
                  "tables": {k: v["accepted"] for k, v in result.summary["tables"].items()},
                  "quarantined": sum(v["quarantined"] for v in result.summary["tables"].values())}))
"""


def make_dataset(out: Path, subjects: int, days: int, seed: int) -> None:
    from pipeline.synth import generate, write_dataset

    ds = generate(subjects, days, seed)
    write_dataset(ds, out, fmt="csv")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cramp-bench")
    parser.add_argument("--data", type=Path, default=None,
                        help="an existing dataset directory instead of a generated one")
    parser.add_argument("--repeat", type=int, default=1, help="measure this many times")
    parser.add_argument("--target-s", type=float, default=TARGET_SECONDS,
                        help="the wall-time target printed against (default: the 10k target)")
    parser.add_argument("--target-rss-gib", type=float, default=TARGET_RSS_GIB,
                        help="the peak-RSS target printed against (issue 10, 100k: 4)")
    args = parser.parse_args(argv)

    if args.data is not None:
        data = args.data
        args.subjects = args.days = 0
    else:
        data = args.cache / f"data-{args.subjects}x{args.days}-s{args.seed}"
        if not (data / "daily.csv").is_file():
            t = time.perf_counter()
            shutil.rmtree(data, ignore_errors=True)
            make_dataset(data, args.subjects, args.days, args.seed)
            print(f"generated {data} in {time.perf_counter() - t:.1f} s")
    size_mb = sum(p.stat().st_size for p in data.iterdir() if p.is_file()) / 1e6
    for run in range(args.repeat):
        _measure(data, size_mb, args, run)


def _measure(data: Path, size_mb: float, args, run: int) -> None:
    import json

    work = Path(tempfile.mkdtemp(prefix="cramp-bench-ingest-"))
    try:
        env = {**os.environ, "POLARS_MAX_THREADS": os.environ.get("POLARS_MAX_THREADS", "2")}
        load_before = os.getloadavg()[0]
        pressure_before = cpu_pressure()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(data), str(work / "store"),
                               str(work / "out")], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        # ru_maxrss of RUSAGE_CHILDREN is the largest child so far (runs are alike).
        rss_gib = usage.ru_maxrss / 1024**2
        cpu = (usage.ru_utime - before.ru_utime) + (usage.ru_stime - before.ru_stime)
        child = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    what = (f"{args.subjects:,} subjects x {args.days} days, " if args.subjects else "")
    print(f"run {run + 1}: input: {data} ({what}{size_mb:,.0f} MB)")
    print(f"rows accepted: " + ", ".join(f"{k} {v:,}" for k, v in child["tables"].items())
          + f"; quarantined {child['quarantined']:,}")
    for line in child["stages"]:
        print(f"  {line}")
    print(f"ingest_dataset: {child['ingest_s']:.2f} s; write_ingest_outputs: "
          f"{child['outputs_s']:.2f} s; process wall (incl. interpreter start): {wall:.2f} s")
    print(f"child CPU time (user+sys): {cpu:.2f} s; load average before/after: "
          f"{load_before:.1f}/{os.getloadavg()[0]:.1f}; CPU pressure (PSI avg10) before/after: "
          f"{pressure_before}/{cpu_pressure()} (other processes inflate wall time)")
    print(f"peak RSS: {rss_gib:.2f} GiB (target < {args.target_rss_gib} GiB); "
          f"cores: {os.cpu_count()}, POLARS_MAX_THREADS={env['POLARS_MAX_THREADS']}")
    ok = child["ingest_s"] < args.target_s and rss_gib < args.target_rss_gib
    print("target met" if ok else
          f"TARGET MISSED (< {args.target_s} s, < {args.target_rss_gib} GiB)")


if __name__ == "__main__":
    main()
