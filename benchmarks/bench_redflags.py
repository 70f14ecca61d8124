"""Benchmark: evaluate all shipped red-flag rules on 1M generated episodes.

Target (issue 3, item 8): under 1 s wall time on 2 cores for ``evaluate`` (all rules, including
the per-subject frequent rule, derived ids, not-recorded counts and the subject summary).

Episodes are generated in memory with numpy (10,000 subjects x 100 episodes over a year by
default, about 10 % of each optional field null and half the episode ids missing), written to
Parquet and scanned, as ``Store.read("episodes")`` does. Pain follows Binomial(10, 0.4), so about
5 % of episodes reach 7; ``--stress`` draws pain uniformly from 0-10 instead (about 36 % reach 7),
which more than doubles the number of flags to format and sort. The measurement runs in a child
process pinned to 2 CPUs with ``POLARS_MAX_THREADS=2``; peak RSS is that child's
``resource.getrusage(RUSAGE_SELF).ru_maxrss``.

    .venv/bin/python benchmarks/bench_redflags.py [--episodes 1000000] [--subjects 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TARGET_SECONDS = 1.0
CORES = 2

_CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
cpus = sorted(os.sched_getaffinity(0))[: int(sys.argv[2])]
os.sched_setaffinity(0, cpus)
import polars as pl
from pipeline.redflags import evaluate, load_rules, write_flag_outputs
rules = load_rules()
lf = pl.scan_parquet(sys.argv[1])
times, cpu = [], []
for _ in range(int(sys.argv[3])):
    t, c = time.perf_counter(), time.process_time()
    result = evaluate(lf, rules)
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
t = time.perf_counter()
write_flag_outputs(result, Path(sys.argv[4]))
write_s = time.perf_counter() - t
print(json.dumps({
    "cpus": len(cpus), "threads": pl.thread_pool_size(), "evaluate_s": times, "cpu_s": cpu,
    "write_s": write_s, "load_average": os.getloadavg(),
    "flags": result.flags.height, "subjects_flagged": result.subject_flags.height,
    "not_recorded_rows": result.not_recorded.height,
    "frequent_periods": result.flags.filter(pl.col("rule_id") == "frequent").height,
    "by_rule": dict(result.flags.group_by("rule_id").len().sort("rule_id").iter_rows()),
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def generate(path: Path, n: int, subjects: int, seed: int, stress: bool = False) -> None:
    import numpy as np
    import polars as pl

    from pipeline import schema

    rng = np.random.default_rng(seed)
    subject = rng.integers(0, subjects, n)
    minute = rng.integers(0, 365 * 24 * 60, n)

    def nullable(values, p_null=0.1):
        return pl.Series(values).set(pl.Series(rng.random(n) < p_null), None)

    df = pl.DataFrame(
        {
            "episode_id": pl.Series([f"ep{i}" for i in range(n)]).set(
                pl.Series(rng.random(n) < 0.5), None
            ),
            "subject_id": pl.Series(subject).cast(pl.String).str.zfill(6),
            # Minutes into 2024 (1704067200 s after the Unix epoch).
            "started_at": pl.Series(minute * 60_000_000 + 1_704_067_200_000_000).cast(
                pl.Datetime("us")
            ),
            "duration_min": nullable(np.round(rng.exponential(5.0, n) + 0.1, 1)),
            "muscle_group": pl.Series(np.array(schema.MUSCLE_GROUPS)[rng.integers(0, 10, n)]),
            "pain": nullable(rng.integers(0, 11, n) if stress else rng.binomial(10, 0.4, n)),
            "pain_uncontrolled": nullable(rng.random(n) < 0.05),
            "swelling": nullable(rng.random(n) < 0.03),
            "skin_changes": nullable(rng.random(n) < 0.01),
            "sleep_loss": nullable(rng.random(n) < 0.1),
            "er_visit": nullable(rng.random(n) < 0.005),
            "numbness": nullable(
                np.array(schema.NUMBNESS_LEVELS)[rng.choice(3, n, p=[0.9, 0.07, 0.03])]
            ),
            "source_file": pl.repeat("episodes.csv", n, eager=True),
            "source_line": pl.int_range(2, n + 2, eager=True),
        }
    ).cast({**schema.EPISODES.polars_schema(), **schema.PROVENANCE_SCHEMA})
    df.write_parquet(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1_000_000)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--stress", action="store_true",
                        help="uniform pain 0-10: about 36 %% of episodes flagged severe_pain")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "episodes.parquet"
        generate(data, args.episodes, args.subjects, args.seed, stress=args.stress)
        env = {**os.environ, "POLARS_MAX_THREADS": str(CORES)}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(data), str(CORES), str(args.repeat),
             str(Path(tmp) / "out")],
            env=env, check=True, capture_output=True, text=True,
        )
    figures = json.loads(out.stdout)
    best = min(figures["evaluate_s"])
    median = sorted(figures["evaluate_s"])[len(figures["evaluate_s"]) // 2]
    print(f"red flags: {args.episodes:,} episodes, {args.subjects:,} subjects"
          f"{' (stress: uniform pain)' if args.stress else ''}, {figures['cpus']} CPUs / "
          f"{figures['threads']} polars threads, load average "
          + ", ".join(f"{x:.1f}" for x in figures["load_average"]))
    print(f"  evaluate, all rules: best {best:.3f} s, median {median:.3f} s wall; runs "
          + ", ".join(f"{t:.3f}" for t in figures["evaluate_s"])
          + f"  (target < {TARGET_SECONDS:.1f} s: {'OK' if best < TARGET_SECONDS else 'MISSED'})")
    print("  CPU time per run: " + ", ".join(f"{t:.3f}" for t in figures["cpu_s"]) + " s")
    print(f"  write_flag_outputs: {figures['write_s']:.3f} s; peak RSS "
          f"{figures['peak_rss_mib']:.0f} MiB")
    print(f"  flags {figures['flags']:,}, subjects flagged {figures['subjects_flagged']:,}, "
          f"not-recorded rows {figures['not_recorded_rows']:,}, "
          f"frequent periods {figures['frequent_periods']:,}")
    print("  by rule: " + ", ".join(f"{k}={v:,}" for k, v in figures["by_rule"].items()))


if __name__ == "__main__":
    main()
