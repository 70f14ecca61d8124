"""Benchmark: the per-person estimates (issue 13) on 10,000 subjects × 365 days.

What ``cramp run`` adds for ``subject_effects.csv`` and ``heterogeneity.csv``: the one call in
``pipeline/run.py`` (``fit_subject_effects``: every person's own Poisson fit, batched over subjects,
then the REML pooling per feature) after ``fit_models``, and the CSV writes. The synthetic tables
are the cached dataset of ``bench_models.py``. Prints wall and CPU time of the added work (CPU,
because on a shared machine the wall time also measures the neighbours) and peak RSS.

Usage: ``python benchmarks/bench_subject_effects.py [N_SUBJECTS N_DAYS]``. Not run in CI.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import _dataset, _peak_rss_mib, _Timer  # noqa: E402

#: The issue's budget for the added time on 2 cores.
BUDGET_S = 3.0


def main(n_subjects: int = 10_000, n_days: int = 365) -> dict:
    import polars as pl

    from pipeline import schema
    from pipeline.features import build_panel
    from pipeline.models import fit_models
    from pipeline.models.subject_effects import fit_subject_effects, write_subject_effects

    path = _dataset(n_subjects, n_days)
    # The cache may have been written by a newer CustomFactor: keep the fields this one knows.
    known = {f.name for f in dataclasses.fields(schema.CustomFactor)}
    custom = tuple(schema.CustomFactor(**{k: v for k, v in c.items() if k in known})
                   for c in json.loads((path / "custom.json").read_text()))
    read = {name: pl.scan_parquet(path / f"{name}.parquet")
            for name in ("daily", "episodes", "injuries")}
    panel = build_panel(read["daily"], read["episodes"], read["injuries"], custom_factors=custom)
    models = fit_models(panel, custom_factors=custom, dose_response=False)
    print(f"panel: {panel.summary['n_subject_days']:,} subject-days, "
          f"{panel.summary['n_subjects']:,} subjects", flush=True)

    timer = _Timer()
    result = fit_subject_effects(panel, models.effects, custom_factors=custom)
    fit_wall, fit_cpu = timer.lap()
    with tempfile.TemporaryDirectory() as out:
        write_subject_effects(result, out)
    write_wall, write_cpu = timer.lap()
    se = result.subject_effects
    n_est = se.filter(pl.col("own_irr").is_not_null())["subject_id"].n_unique()
    figures = {"fit_s": fit_wall, "fit_cpu_s": fit_cpu, "write_s": write_wall,
               "write_cpu_s": write_cpu, "added_s": fit_wall + write_wall,
               "peak_rss_mib": _peak_rss_mib()}
    print(f"per-person fits + pooling: {fit_wall:.2f} s wall ({fit_cpu:.2f} s CPU); "
          f"{n_est:,} persons with an own estimate, {se.height:,} rows", flush=True)
    print(f"CSV writes: {write_wall:.2f} s wall ({write_cpu:.2f} s CPU)")
    verdict = "within" if figures["added_s"] <= BUDGET_S else "OVER"
    print(f"added to cramp run: {figures['added_s']:.2f} s wall ({verdict} the {BUDGET_S:g} s "
          f"budget); peak RSS {figures['peak_rss_mib']:,.0f} MiB")
    with open("/proc/loadavg") as handle:
        print(f"load average during the run: {handle.read().split()[0]} (2 cores)")
    return figures


if __name__ == "__main__":
    main(*[int(a) for a in sys.argv[1:3]])
