"""The baseline a user would write: pandas to build the subject-day panel, statsmodels to fit.

The same analysis as ``cramp run`` (issue 4): the subject-day panel, a population Poisson GLM with
subject-clustered errors, a within-subject (subject fixed effects) Poisson model with
subject-clustered errors. This is the speed reference for benchmarks/bench_run.py, written the way
an analyst fluent in pandas/statsmodels would write it, not tuned:

1. read   ``pd.read_csv`` / ``pd.read_parquet`` of daily, episodes, injuries.
2. panel  episodes counted per subject and calendar date (``groupby().size()``) and left-joined
          to the logged days; ``recent_injury`` (an injury on d-30 ... d-1) with ``merge_asof``;
          the core features in model units (exercise per 30 min, heat per 5 °C, caffeine per
          100 mg, yes/no as 0/1); complete cases.
3. population  ``smf.glm("episodes ~ ...", family=Poisson()).fit(cov_type="cluster",
          cov_kwds={"groups": subject})``.
4. within_subject  ``statsmodels.discrete.conditional_models.ConditionalPoisson(...).fit()``
          (default BFGS). Why this and not a GLM with subject dummies: at 10,000 subjects the dummy
          design is 3.65M x 10,012 dense float64, ~290 GB, so no user can fit it;
          ConditionalPoisson is statsmodels' tool for exactly this model and gives the same
          coefficients. Its covariance is model-based only, so for subject-clustered errors the
          user adds the sandwich by hand from per-subject scores (a loop over subjects), which is
          timed separately (``within_robust_s``).

Custom factors from dataset.toml are not included (core features only).

Usage: ``python benchmarks/baseline_pandas_statsmodels.py DATA_DIR [--ours] [--scale]``. With
``--ours`` it then times ``pipeline.models`` (fit_poisson + fit_conditional_poisson) on the very
same numpy design and prints the largest IRR difference between the two, to show the scale of the
gap; that part is not included in the baseline's own timings. ``--scale`` (no DATA_DIR needed)
times ``pipeline.models`` on a complete simulated 3.65M x 12 design with 10,000 subjects.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = ["exercise_min", "exercise_rpe", "fluid_l", "heat_c", "electrolytes", "recent_injury",
            "sitting_h", "poor_posture", "stress", "sleep_h", "caffeine_mg", "alcohol_units"]
SCALES = {"exercise_min": 30.0, "heat_c": 5.0, "caffeine_mg": 100.0}
BOOLEANS = ["electrolytes", "poor_posture"]
RECENT_INJURY_DAYS = 30


def _read(data: Path, table: str) -> pd.DataFrame | None:
    for suffix, reader in ((".csv", pd.read_csv), (".csv.gz", pd.read_csv),
                           (".parquet", pd.read_parquet)):
        path = data / f"{table}{suffix}"
        if path.exists():
            return reader(path)
    return None


def read_tables(*paths) -> dict[str, pd.DataFrame]:
    """Tables from a dataset directory, or from explicit table files named after their table."""
    found: dict[str, pd.DataFrame] = {}
    for p in map(Path, paths):
        if p.is_dir():
            for table in ("daily", "episodes", "injuries"):
                frame = _read(p, table)
                if frame is not None:
                    found[table] = frame
        else:
            table = p.name.split(".")[0]
            found[table] = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    if "daily" not in found or "episodes" not in found:
        raise SystemExit("need at least the daily and episodes tables")
    return found


def build_panel(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    daily = tables["daily"].copy()
    daily["date"] = pd.to_datetime(daily["date"])
    episodes = tables["episodes"]
    day = pd.to_datetime(episodes["started_at"]).dt.normalize()
    counts = (episodes.assign(date=day).groupby(["subject_id", "date"]).size()
              .rename("episodes").reset_index())
    panel = daily.merge(counts, on=["subject_id", "date"], how="left")
    panel["episodes"] = panel["episodes"].fillna(0).astype(int)

    injuries = tables.get("injuries")
    panel = panel.sort_values("date")
    if injuries is not None and len(injuries):
        inj = (injuries.assign(injury_date=pd.to_datetime(injuries["date"]))
               [["subject_id", "injury_date"]].drop_duplicates().sort_values("injury_date"))
        panel = pd.merge_asof(panel, inj, left_on="date", right_on="injury_date",
                              by="subject_id", allow_exact_matches=False, direction="backward")
        gap = (panel["date"] - panel["injury_date"]).dt.days
        panel["recent_injury"] = (gap <= RECENT_INJURY_DAYS).astype(float)
    else:
        panel["recent_injury"] = 0.0
    panel = panel.sort_values(["subject_id", "date"]).reset_index(drop=True)

    for col in BOOLEANS:
        values = panel[col]
        if values.dtype == object:
            values = values.map({"true": 1.0, "false": 0.0, True: 1.0, False: 0.0})
        panel[col] = values.astype(float)
    for col, scale in SCALES.items():
        panel[col] = panel[col] / scale
    return panel.dropna(subset=FEATURES + ["episodes"]).reset_index(drop=True)


def fit_population(panel: pd.DataFrame):
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    groups = panel["subject_id"].astype("category").cat.codes.to_numpy()
    formula = "episodes ~ " + " + ".join(FEATURES)
    return smf.glm(formula, data=panel, family=sm.families.Poisson()).fit(
        cov_type="cluster", cov_kwds={"groups": groups})


def fit_within(panel: pd.DataFrame):
    from statsmodels.discrete.conditional_models import ConditionalPoisson

    groups = panel["subject_id"].astype("category").cat.codes.to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Dropped N groups ... no within-group variance"
        model = ConditionalPoisson(panel["episodes"].to_numpy(float),
                                   panel[FEATURES].to_numpy(float), groups=groups)
        return model, model.fit()


def within_cluster_se(model, result) -> np.ndarray:
    """Subject-clustered sandwich for ConditionalPoisson, by hand: per-subject score of the
    conditional (multinomial) likelihood, x'(y - n p), CRV1 correction G/(G-1)(N-1)/(N-K)."""
    beta = np.asarray(result.params)
    scores = []
    for x, y in zip(model._exog_grp, model._endog_grp):
        y = np.asarray(y, dtype=float).ravel()
        eta = x @ beta
        w = np.exp(eta - eta.max())
        scores.append(x.T @ (y - y.sum() * w / w.sum()))
    S = np.array(scores)
    bread = np.asarray(result.cov_params())
    g, n, k = S.shape[0], int(sum(len(x) for x in model._exog_grp)), beta.size
    cov = g / (g - 1) * (n - 1) / (n - k) * bread @ (S.T @ S) @ bread
    return np.sqrt(np.diag(cov))


def run_baseline(*paths) -> dict:
    """Time each stage of the pandas + statsmodels analysis; returns timings in seconds and the
    estimates (``population_irr``, ``within_irr``) for cross-checks."""
    timings: dict = {}
    t0 = time.perf_counter()
    tables = read_tables(*paths)
    t1 = time.perf_counter()
    panel = build_panel(tables)
    t2 = time.perf_counter()
    pop = fit_population(panel)
    t3 = time.perf_counter()
    model, within = fit_within(panel)
    t4 = time.perf_counter()
    within_se = within_cluster_se(model, within)
    t5 = time.perf_counter()
    timings.update(read_s=t1 - t0, panel_s=t2 - t1, population_s=t3 - t2, within_s=t4 - t3,
                   within_robust_s=t5 - t4, total_s=t5 - t0, n_subject_days=len(panel),
                   n_subjects=int(panel["subject_id"].nunique()),
                   population_irr=np.exp(pop.params[FEATURES].to_numpy()),
                   within_irr=np.exp(np.asarray(within.params)), within_se=within_se,
                   panel=panel)
    return timings


def time_ours(panel: pd.DataFrame) -> dict:
    from pipeline.models import fit_conditional_poisson, fit_poisson

    X = np.ascontiguousarray(panel[FEATURES].to_numpy(float))
    y = panel["episodes"].to_numpy(float)
    subject = panel["subject_id"].astype("category").cat.codes.to_numpy()
    t0, c0 = time.perf_counter(), time.process_time()
    pop = fit_poisson(X, y, clusters=subject, feature_names=FEATURES)
    t1, c1 = time.perf_counter(), time.process_time()
    within = fit_conditional_poisson(X, y, groups=subject, clusters=subject,
                                     feature_names=FEATURES)
    t2, c2 = time.perf_counter(), time.process_time()
    return {"population_s": t1 - t0, "within_s": t2 - t1, "population_cpu_s": c1 - c0,
            "within_cpu_s": c2 - c1, "population_irr": pop.irr[1:], "within_irr": within.irr,
            "within_se": within.se, "shape": X.shape, "n_groups": within.n_groups_used}


def time_ours_simulated(n_subjects: int = 10_000, n_days: int = 365, n_features: int = 12,
                        seed: int = 0) -> dict:
    """Time pipeline.models on a complete simulated design of n_subjects x n_days rows (no
    missing values, so exactly 3.65M x 12 at the defaults), subject frailty correlated with
    three features, two yes/no features."""
    from pipeline.models import fit_conditional_poisson, fit_poisson

    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_subjects), n_days)
    n = subject.size
    frailty = rng.normal(0, 0.5, n_subjects)
    X = rng.standard_normal((n, n_features))
    X[:, :3] += frailty[subject, None]
    X[:, 4] = rng.random(n) < 0.3
    X[:, 7] = rng.random(n) < 0.5
    beta = rng.normal(0, 0.1, n_features)
    y = rng.poisson(np.exp(-2.5 + frailty[subject] + X @ beta)).astype(float)
    names = [f"x{j}" for j in range(n_features)]
    t0, c0 = time.perf_counter(), time.process_time()
    fit_poisson(X, y, clusters=subject, feature_names=names)
    t1, c1 = time.perf_counter(), time.process_time()
    fit_conditional_poisson(X, y, groups=subject, clusters=subject, feature_names=names)
    t2, c2 = time.perf_counter(), time.process_time()
    return {"population_s": t1 - t0, "within_s": t2 - t1, "population_cpu_s": c1 - c0,
            "within_cpu_s": c2 - c1, "shape": X.shape, "n_groups": n_subjects}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", help="dataset directory or table files")
    parser.add_argument("--ours", action="store_true",
                        help="also time pipeline.models on the same design")
    parser.add_argument("--scale", action="store_true",
                        help="time pipeline.models on a complete simulated 10,000 x 365 x 12 "
                             "design (no dataset needed)")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    if args.scale:
        o = time_ours_simulated()
        n, p = o["shape"]
        print(f"pipeline.models on a simulated {n:,} x {p} design, {o['n_groups']:,} subjects:")
        print(f"  population_s     {o['population_s']:8.2f}  (cpu {o['population_cpu_s']:.2f})")
        print(f"  within_s         {o['within_s']:8.2f}  (cpu {o['within_cpu_s']:.2f})")
        print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GiB")
    if not args.paths:
        return
    r = run_baseline(*args.paths)
    print(f"baseline pandas + statsmodels on {r['n_subject_days']:,} subject-days, "
          f"{r['n_subjects']:,} subjects")
    for key in ("read_s", "panel_s", "population_s", "within_s", "within_robust_s", "total_s"):
        print(f"  {key:16s} {r[key]:8.2f}")
    print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GiB")
    if args.ours:
        o = time_ours(r["panel"])
        n, p = o["shape"]
        print(f"pipeline.models on the same {n:,} x {p} design, {o['n_groups']:,} subjects:")
        print(f"  population_s     {o['population_s']:8.2f}  (cpu {o['population_cpu_s']:.2f})")
        print(f"  within_s         {o['within_s']:8.2f}  (cpu {o['within_cpu_s']:.2f})")
        fits = r["population_s"] + r["within_s"] + r["within_robust_s"]
        print(f"  fits: statsmodels {fits:.2f} s vs ours {o['population_s'] + o['within_s']:.2f} s")
        print("  max relative IRR difference: population "
              f"{np.max(np.abs(o['population_irr'] / r['population_irr'] - 1)):.1e}, within "
              f"{np.max(np.abs(o['within_irr'] / r['within_irr'] - 1)):.1e} (statsmodels BFGS "
              "stops at gtol 1e-5); clustered SE "
              f"{np.max(np.abs(o['within_se'] / r['within_se'] - 1)):.1e}")


if __name__ == "__main__":
    main()
