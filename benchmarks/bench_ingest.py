"""Benchmark: ingest 10,000 subjects x 365 days of CSV (3.65M daily rows, ~0.7M episodes).

Target (issue 2, item 10): under 10 s wall time on 2 cores, peak RSS under 2 GiB.

The dataset is generated with ``pipeline.synth`` (cached under ``--cache`` so reruns skip it);
the ingest runs in a fresh child process so that its peak RSS is measured alone
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``, the figure ``/usr/bin/time -v`` reports).

    .venv/bin/python benchmarks/bench_ingest.py [--subjects 10000] [--days 365] [--cache DIR]
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
import sys, time, json
from pathlib import Path
from pipeline.ingest import ingest_dataset, write_ingest_outputs
t0 = time.perf_counter()
result = ingest_dataset(Path(sys.argv[1]), Path(sys.argv[2]))
t1 = time.perf_counter()
write_ingest_outputs(result, Path(sys.argv[3]))
t2 = time.perf_counter()
print(json.dumps({"ingest_s": t1 - t0, "outputs_s": t2 - t1,
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
    args = parser.parse_args(argv)

    data = args.cache / f"data-{args.subjects}x{args.days}-s{args.seed}"
    if not (data / "daily.csv").is_file():
        t = time.perf_counter()
        shutil.rmtree(data, ignore_errors=True)
        make_dataset(data, args.subjects, args.days, args.seed)
        print(f"generated {data} in {time.perf_counter() - t:.1f} s")
    size_mb = sum(p.stat().st_size for p in data.iterdir() if p.is_file()) / 1e6
    work = Path(tempfile.mkdtemp(prefix="cramp-bench-ingest-"))
    try:
        env = {**os.environ, "POLARS_MAX_THREADS": os.environ.get("POLARS_MAX_THREADS", "2")}
        load_before = os.getloadavg()[0]
        pressure_before = cpu_pressure()
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(data), str(work / "store"),
                               str(work / "out")], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        rss_gib = usage.ru_maxrss / 1024**2
        cpu = usage.ru_utime + usage.ru_stime
        import json

        child = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"input: {args.subjects:,} subjects x {args.days} days, {size_mb:,.0f} MB of CSV")
    print(f"rows accepted: " + ", ".join(f"{k} {v:,}" for k, v in child["tables"].items())
          + f"; quarantined {child['quarantined']:,}")
    print(f"ingest_dataset: {child['ingest_s']:.2f} s; write_ingest_outputs: "
          f"{child['outputs_s']:.2f} s; process wall (incl. interpreter start): {wall:.2f} s")
    print(f"child CPU time (user+sys): {cpu:.2f} s; load average before/after: "
          f"{load_before:.1f}/{os.getloadavg()[0]:.1f}; CPU pressure (PSI avg10) before/after: "
          f"{pressure_before}/{cpu_pressure()} (other processes inflate wall time)")
    print(f"peak RSS: {rss_gib:.2f} GiB (target < {TARGET_RSS_GIB} GiB); "
          f"cores: {os.cpu_count()}, POLARS_MAX_THREADS={env['POLARS_MAX_THREADS']}")
    ok = child["ingest_s"] < TARGET_SECONDS and rss_gib < TARGET_RSS_GIB
    print("target met" if ok else f"TARGET MISSED (< {TARGET_SECONDS} s, < {TARGET_RSS_GIB} GiB)")


if __name__ == "__main__":
    main()
