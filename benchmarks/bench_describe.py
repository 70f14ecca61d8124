"""Cost of the "cohort table and subgroups" stage of ``cramp run`` (by hand, not part of CI).

    cramp run --data DATA --out OUT --no-report          # once: leaves the store in OUT/store
    python benchmarks/bench_describe.py --store OUT/store [--repeat 2]

Builds the panel from the store and fits the within_subject model once (its estimates start the
subgroup fits, as in the run), then prints wall and CPU seconds of ``cohort_for_run`` and
``fit_subgroups`` with the fits one after another (``CRAMP_FIT_THREADS=1``) and side by side
(the cores). On a shared machine repeat and compare CPU seconds as well as wall.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import time
from pathlib import Path

import polars as pl


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> None:
    from pipeline import execution
    from pipeline.describe import cohort_for_run
    from pipeline.features import build_panel
    from pipeline.models.effects import fit_models
    from pipeline.models.subgroups import fit_subgroups
    from pipeline.redflags import load_rules
    from pipeline.redflags.buckets import evaluate_store
    from pipeline.store import Store

    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, required=True, help="a store written by cramp run")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
    store = Store(args.store)
    injuries = any(f.table == "injuries" for f in store.manifest.files)
    panel = build_panel(store.read("daily"), store.read("episodes"),
                        store.read("injuries") if injuries else None)
    flags = evaluate_store(store, load_rules(None))
    effects = fit_models(panel, dose_response=False).effects
    within = effects.filter((pl.col("model") == "within_subject") & pl.col("irr").is_not_null())
    start = {f: math.log(irr) for f, irr in zip(within["feature"], within["irr"])}
    cores = execution.cores()
    print(f"{panel.frame.height:,} subject-days; {cores} cores")
    for _ in range(args.repeat):
        for workers in (1, cores):
            os.environ[execution.THREADS_ENV] = str(workers)
            w, c = time.perf_counter(), _cpu()
            cohort_for_run(store, panel, flags)
            w1, c1 = time.perf_counter(), _cpu()
            fit_subgroups(panel, store.read("subjects"), store.read("episodes"), start=start)
            w2, c2 = time.perf_counter(), _cpu()
            print(f"threads {workers}: cohort {w1 - w:5.2f} s wall {c1 - c:5.2f} s cpu; "
                  f"subgroups {w2 - w1:5.2f} s wall {c2 - c1:5.2f} s cpu", flush=True)


if __name__ == "__main__":
    main()
