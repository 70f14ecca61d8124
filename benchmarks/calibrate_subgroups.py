"""Calibration and cost of the subgroup analysis (by hand, not part of CI).

    python benchmarks/calibrate_subgroups.py [--seeds 20] [--subjects 200] [--days 60]

On default synthetic datasets (no effect modification anywhere) it prints, per seed, the share of
interaction p-values below 0.05 and whether any q-value is below 0.05; then the totals (nominal:
5% of p-values; datasets with any q < 0.05 about 5% under the global null). With
``--effect-modification`` the datasets carry the planted sitting × 60+ modification instead, and
the figures are the test's power. ``--time`` adds the seconds of fit_models and fit_subgroups.
"""

from __future__ import annotations

import argparse
import math
import time

import polars as pl


def main(argv: list[str] | None = None) -> None:
    from pipeline import synth
    from pipeline.features import build_panel
    from pipeline.models.effects import fit_models
    from pipeline.models.subgroups import FDR_LEVEL, fit_subgroups

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--subjects", type=int, default=200)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--effect-modification", action="store_true")
    ap.add_argument("--time", action="store_true")
    args = ap.parse_args(argv)
    below, total, found = 0, 0, 0
    for seed in range(args.seeds):
        ds = synth.generate(args.subjects, args.days, seed=seed,
                            effect_modification=args.effect_modification)
        panel = build_panel(ds.daily.lazy(), ds.episodes.lazy(), ds.injuries.lazy(),
                            custom_factors=ds.custom_factors)
        start, t_models = None, None
        if args.time:
            t = time.perf_counter()
            effects = fit_models(panel, custom_factors=ds.custom_factors).effects
            t_models = time.perf_counter() - t
            w = effects.filter((pl.col("model") == "within_subject") & pl.col("irr").is_not_null())
            start = {f: math.log(i) for f, i in zip(w["feature"], w["irr"])}
        t = time.perf_counter()
        out = fit_subgroups(panel, ds.subjects.lazy(), ds.episodes.lazy(),
                            custom_factors=ds.custom_factors, start=start)
        t_sub = time.perf_counter() - t
        tests = out.unique(["subgroup_variable", "feature"]).drop_nulls("p_interaction")
        n_below = int((tests["p_interaction"] < 0.05).sum())
        any_q = bool((tests["q_interaction"] < FDR_LEVEL).any())
        below, total, found = below + n_below, total + tests.height, found + any_q
        timing = f"  models {t_models:.1f}s subgroups {t_sub:.1f}s" if args.time else ""
        print(f"seed {seed}: {n_below}/{tests.height} p<0.05, any q<{FDR_LEVEL}: {any_q}{timing}",
              flush=True)
    print(f"total: {below}/{total} = {below / max(total, 1):.1%} of p-values < 0.05; "
          f"{found}/{args.seeds} datasets with any q < {FDR_LEVEL}")


if __name__ == "__main__":
    main()
