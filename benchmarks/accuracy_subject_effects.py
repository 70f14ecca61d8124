"""Accuracy of the per-person estimates against planted truth (``cramp synth --heterogeneous``).

For each seed: generate N subjects × D days with per-person rate ratios, run the models and the
per-person estimates, and compare with every person's true IRR, per feature with planted
heterogeneity: root-mean-square error of the log IRR for the pooled, own-data and single cohort
(within_subject) estimates, and the share of persons whose true IRR lies in their 95% interval
(pooled and own). Also prints tau-hat against the planted SD. The same criteria are asserted in
``tests/test_subject_effects.py``; this prints the figures.

Usage: ``python benchmarks/accuracy_subject_effects.py [N_SUBJECTS N_DAYS SEED ...]``
(default 300 365 21 22 23 24).
"""

from __future__ import annotations

import sys

import numpy as np
import polars as pl


def evaluate(n_subjects: int, n_days: int, seed: int) -> list[dict]:
    from pipeline import synth
    from pipeline.features import build_panel
    from pipeline.models import fit_models
    from pipeline.models.subject_effects import fit_subject_effects
    from pipeline.synth.heterogeneity import SD_LOG_IRR

    ds = synth.generate(n_subjects, n_days, seed, heterogeneous=True)
    panel = build_panel(ds.daily.lazy(), ds.episodes.lazy(), ds.injuries.lazy(),
                        custom_factors=ds.custom_factors)
    models = fit_models(panel, custom_factors=ds.custom_factors, dose_response=False)
    result = fit_subject_effects(panel, models.effects, custom_factors=ds.custom_factors)
    truth = ds.truth["heterogeneity"]["subjects"]
    out = []
    for feature, sd in SD_LOG_IRR.items():
        rows = result.subject_effects.filter((pl.col("feature") == feature)
                                             & pl.col("irr").is_not_null())
        true = np.log([truth[s][feature] for s in rows["subject_id"]])
        cohort = models.effects.filter((pl.col("model") == "within_subject")
                                       & (pl.col("feature") == feature))["irr"][0]
        het = result.heterogeneity.filter(pl.col("feature") == feature).row(0, named=True)

        def log(c):
            return np.log(rows[c].to_numpy())

        def rmse(est):
            return float(np.sqrt(np.mean((est - true) ** 2)))

        out.append({
            "seed": seed, "feature": feature, "n": rows.height,
            "rmse_pooled": rmse(log("irr")), "rmse_own": rmse(log("own_irr")),
            "rmse_cohort": rmse(np.log(cohort)),
            "coverage_pooled": float(np.mean((log("ci_low") <= true) & (true <= log("ci_high")))),
            "coverage_own": float(np.mean((log("own_ci_low") <= true)
                                          & (true <= log("own_ci_high")))),
            "tau": het["tau"], "tau_ci": f"{het['tau_ci_low']:.3f}-{het['tau_ci_high']:.3f}",
            "planted_sd": sd,
        })
    return out


def main(argv: list[str]) -> pl.DataFrame:
    n, d = (int(argv[0]), int(argv[1])) if len(argv) >= 2 else (300, 365)
    seeds = [int(s) for s in argv[2:]] or [21, 22, 23, 24]
    rows = [r for seed in seeds for r in evaluate(n, d, seed)]
    frame = pl.DataFrame(rows)
    pl.Config.set_tbl_rows(100)
    pl.Config.set_tbl_cols(20)
    pl.Config.set_tbl_width_chars(200)
    print(frame.with_columns(pl.col(pl.Float64).round(3)))
    total = frame["n"].sum()
    summary = frame.group_by("feature", maintain_order=True).agg(
        pl.col("rmse_pooled", "rmse_own", "rmse_cohort").mean().round(3),
        ((pl.col("coverage_pooled") * pl.col("n")).sum() / pl.col("n").sum()).round(3),
        ((pl.col("coverage_own") * pl.col("n")).sum() / pl.col("n").sum()).round(3))
    print(summary)
    overall = float((frame["coverage_pooled"] * frame["n"]).sum() / total)
    half = 3.29 * np.sqrt(0.95 * 0.05 / total)
    print(f"pooled coverage over all {total:,} person-features: {overall:.3f} "
          f"(99.9% binomial band {0.95 - half:.3f}-{0.95 + half:.3f})")
    return frame


if __name__ == "__main__":
    main(sys.argv[1:])
