"""Per-patient findings: ``subject_effects.csv`` and ``heterogeneity.csv`` (issue 13).

Two stages (the method is stated in ``per_subject.py`` and ``pooling.py``):

1. **map**: :func:`~pipeline.models.per_subject.fit_subject_bucket` on each bucket of whole
   subjects - every person's own adjusted Poisson fit on the ``within_subject`` features;
2. **reduce**: :func:`pool_subject_rows` - per feature, the REML random-effects fit across persons,
   the between-person SD tau with its Q-profile interval and Cochran's Q, and each person's
   empirical-Bayes (shrunken) estimate.

:func:`fit_subject_effects` runs both on an in-memory panel, with buckets of
``BUCKET_SUBJECTS`` subjects; an executor (local pool, Dask) can call the two stages itself.

Only features the cohort's ``within_subject`` model estimated enter (the same design, so a person's
estimate and the cohort's are comparable); a person's own fit is adjusted for their other
features. A person or feature without an own estimate gets no pooled estimate either: the note
says why, and the cohort's mean (``heterogeneity.csv``) is then the best guess for them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.features import dictionary as fd
from pipeline.features.panel import Panel
from pipeline.models.per_subject import SUBJECT_ROWS_SCHEMA, fit_subject_bucket
from pipeline.models.pooling import MIN_SUBJECTS_FOR_POOLING, Z95, pool, shrink_integrated
from pipeline.outputs import OutputColumn, OutputTable, declare

#: Subjects per bucket of the in-process map (bounds memory; whole subjects only).
BUCKET_SUBJECTS = 1_000
#: tau below this (log rate ratio per unit) reads as "no sign that people differ".
NO_HETEROGENEITY_TAU = 1e-6

SUBJECT_EFFECTS = declare(OutputTable(
    file="subject_effects.csv",
    meaning="One row per person and within_subject feature: the person's partially pooled "
            "(empirical-Bayes) incidence-rate ratio per documented unit with a 95% interval, and "
            "the estimate from their own data alone.",
    caution="Associations in one person's diary, not causes. `irr` borrows strength from the "
            "cohort (shrunk toward the cohort mean by as much as the person's own data are "
            "uncertain); `own_irr` uses this person's days only and is noisy with few episodes.",
    identifying=True,
    columns=(
        OutputColumn("subject_id", pl.String(), "pseudonymous subject id"),
        OutputColumn("factor", pl.String(), "documented contributing factor (or `custom`)"),
        OutputColumn("feature", pl.String(), "feature name (feature dictionary)"),
        OutputColumn("unit", pl.String(), "the documented unit the IRR is per"),
        OutputColumn("irr", pl.Float64(), "partially pooled IRR for this person (empty: none)"),
        OutputColumn("ci_low", pl.Float64(), "lower 95% limit (counts the uncertainty of the "
                     "cohort mean)"),
        OutputColumn("ci_high", pl.Float64(), "upper 95% limit"),
        OutputColumn("own_irr", pl.Float64(), "IRR from this person's own days alone (Poisson "
                     "with an intercept, adjusted for their other features)"),
        OutputColumn("own_ci_low", pl.Float64(), "lower 95% limit (model-based)"),
        OutputColumn("own_ci_high", pl.Float64(), "upper 95% limit (model-based)"),
        OutputColumn("weight_own", pl.Float64(), "share of the pooled log IRR that comes from the "
                     "person's own estimate, tau²/(tau² + own variance); 0: the cohort mean"),
        OutputColumn("n_days", pl.Int64(), "this person's complete days (all features logged)"),
        OutputColumn("n_episodes", pl.Int64(), "episodes on those days"),
        OutputColumn("note", pl.String(), "why there is no estimate, or what qualifies it"),
    )))

HETEROGENEITY = declare(OutputTable(
    file="heterogeneity.csv",
    meaning="One row per within_subject feature: how much people differ in their rate ratio "
            "(random-effects meta-analysis of the persons' own estimates).",
    caution="tau is the SD of the true log IRR across people with an own estimate; people with "
            "too little data are not in it. A tau of 0 means the data show no sign that people "
            "differ, not proof that they do not.",
    columns=(
        OutputColumn("factor", pl.String(), "documented contributing factor (or `custom`)"),
        OutputColumn("feature", pl.String(), "feature name (feature dictionary)"),
        OutputColumn("unit", pl.String(), "the documented unit the IRR is per"),
        OutputColumn("n_subjects", pl.Int64(), "persons with an own estimate"),
        OutputColumn("tau", pl.Float64(), "between-person SD of the log IRR (REML)"),
        OutputColumn("tau_ci_low", pl.Float64(), "lower 95% limit of tau (Q-profile)"),
        OutputColumn("tau_ci_high", pl.Float64(), "upper 95% limit of tau (Q-profile)"),
        OutputColumn("q", pl.Float64(), "Cochran's Q (k − 1 degrees of freedom)"),
        OutputColumn("p_value", pl.Float64(), "test of no heterogeneity (Cochran's Q)"),
        OutputColumn("mean_irr", pl.Float64(), "random-effects mean of the persons' own IRRs "
                     "(for comparison; persons are shrunk toward within_subject_irr)"),
        OutputColumn("mean_ci_low", pl.Float64(), "lower 95% limit of the mean"),
        OutputColumn("mean_ci_high", pl.Float64(), "upper 95% limit of the mean"),
        OutputColumn("range_low", pl.Float64(), "2.5th centile of persons' IRRs (95% "
                     "prediction range around within_subject_irr, ±1.96·sqrt(tau² + se²))"),
        OutputColumn("range_high", pl.Float64(), "97.5th centile of persons' IRRs"),
        OutputColumn("within_subject_irr", pl.Float64(), "the cohort's within_subject IRR "
                     "(effects.csv): the centre each person's estimate is shrunk toward"),
        OutputColumn("note", pl.String(), "why there is no estimate, or what qualifies it"),
    )))


@dataclass(frozen=True)
class SubjectEffects:
    """The per-person results: ``rows`` (one per person and feature, the numeric results of
    :func:`pool_subject_rows`), ``heterogeneity`` (one row per feature)."""

    rows: pl.DataFrame
    heterogeneity: pl.DataFrame
    features: tuple = ()
    #: The pooled estimate's note by feature (empty: none).
    pooled_notes: dict = field(default_factory=dict)

    def lazy(self) -> pl.LazyFrame:
        """``subject_effects.csv`` as a lazy frame over :attr:`rows` (elementwise expressions,
        so it streams)."""
        if not self.features:
            return SUBJECT_EFFECTS.empty().lazy()
        names = [f.name for f in self.features]
        by = {"factor": [f.factor for f in self.features], "unit": [f.unit for f in self.features],
              "pooled": [self.pooled_notes.get(n) for n in names]}
        look = {k: pl.col("feature").replace_strict(names, v, return_dtype=pl.String)
                for k, v in by.items()}
        adjusted_note = pl.when(pl.col("adjusted_for_all")).then(pl.lit(None)).otherwise(
            pl.lit("adjusted only for the features this person's diary can inform"))
        note = pl.when(pl.col("log_irr").is_null()).then(
            pl.lit("not estimated: ") + pl.col("reason").fill_null("no own estimate")
        ).otherwise(pl.concat_str(look["pooled"], adjusted_note, separator="; ",
                                  ignore_nulls=True).fill_null(""))
        theta, se = pl.col("theta").fill_nan(None), pl.col("theta_se").fill_nan(None)
        half = Z95 * pl.col("variance").sqrt()
        # A person's own interval can be so wide that its upper limit overflows: it is then
        # infinite (unbounded), which is what it says.
        return self.rows.lazy().select(
            "subject_id", look["factor"].alias("factor"), "feature", look["unit"].alias("unit"),
            theta.exp().alias("irr"), (theta - Z95 * se).exp().alias("ci_low"),
            (theta + Z95 * se).exp().alias("ci_high"), pl.col("log_irr").exp().alias("own_irr"),
            (pl.col("log_irr") - half).exp().alias("own_ci_low"),
            (pl.col("log_irr") + half).exp().alias("own_ci_high"),
            pl.col("weight_own").fill_nan(None), "n_days", "n_episodes", note.alias("note"),
        ).select(pl.col(c.name).cast(c.dtype) for c in SUBJECT_EFFECTS.columns)

    @property
    def subject_effects(self) -> pl.DataFrame:
        """``subject_effects.csv`` in memory (the run writes it from :meth:`lazy` instead)."""
        return self.lazy().collect()


def within_features(effects: pl.DataFrame, custom_factors=()) -> tuple[list[fd.Feature],
                                                                        dict[str, float]]:
    """The features the cohort's within_subject model estimated (dictionary order) and its log
    IRRs (the per-person fits' start)."""
    rows = effects.filter((pl.col("model") == fd.WITHIN_SUBJECT) & pl.col("irr").is_not_null())
    log_irr = dict(zip(rows["feature"].to_list(), np.log(rows["irr"].to_numpy()).tolist()))
    design, _ = fd.model_features(fd.WITHIN_SUBJECT, custom_factors)
    return [f for f in design if f.name in log_irr], log_irr


def subject_buckets(frame: pl.DataFrame, size: int = BUCKET_SUBJECTS):
    """The panel in buckets of ``size`` whole subjects (by subject_id order). A panel sorted by
    subject (as ``build_panel`` makes it) is cut into zero-copy row slices."""
    if not frame["subject_id"].is_sorted():
        frame = frame.sort("subject_id", "date")
    runs = frame["subject_id"].rle()  # one run per subject, in order
    lengths = runs.struct.field("len").to_numpy()
    ends = np.cumsum(lengths)
    for lo in range(0, lengths.size, size):
        first = int(ends[lo - 1]) if lo else 0
        last = int(ends[min(lo + size, lengths.size) - 1])
        yield frame.slice(first, last - first)


def fit_subject_effects(panel: Panel, effects: pl.DataFrame, *, custom_factors=(),
                        bucket_subjects: int = BUCKET_SUBJECTS,
                        workers: int | None = None) -> SubjectEffects:
    """Both stages on an in-memory panel (``effects``: the run's effects.csv frame); buckets run
    on the run's executor (``pipeline.execution.current()``), or on ``workers`` threads when
    given. The result does not depend on either."""
    features, start = within_features(effects, custom_factors)
    keep = ["subject_id", "date", "episodes", *(f.name for f in features)]
    parts = []
    if features and workers is None and panel.frame is None and panel.parts and all(
            isinstance(part, Path) for part in panel.parts):
        # A panel on disk: each worker reads its own part where it runs (a thread here, a Dask
        # worker on the shared file system) and fits that part's subjects; the driver sends
        # nothing but a path and receives the per-subject rows.
        from pipeline import execution

        parts = execution.current().map(fit_subject_part, [str(p) for p in panel.parts], keep,
                                        features, start, bucket_subjects)
        return pool_subject_rows(pl.concat(parts) if parts else
                                 pl.DataFrame(schema=SUBJECT_ROWS_SCHEMA), features, effects)
    # One part of the panel at a time (the whole panel when it is in memory), cut into buckets
    # of ``bucket_subjects`` whole subjects that run side by side.
    for frame in (panel.buckets(keep) if features else ()):
        if workers is None:
            # The run's executor (pipeline/execution.py: local threads or Dask workers) maps
            # the buckets; results come back in bucket order.
            from pipeline import execution

            ex = execution.current()
            parts += ex.map(fit_subject_bucket,
                            ex.scatter(list(subject_buckets(frame, bucket_subjects))),
                            features, start)
        else:
            # An explicit thread count: buckets on a small thread pool of that size (numpy
            # and polars release the GIL in the heavy parts).
            with ThreadPoolExecutor(max_workers=workers) as pool:
                parts += list(pool.map(lambda b: fit_subject_bucket(b, features, start),
                                       subject_buckets(frame, bucket_subjects)))
        del frame
    rows = pl.concat(parts) if parts else pl.DataFrame(schema=SUBJECT_ROWS_SCHEMA)
    return pool_subject_rows(rows, features, effects)


def fit_subject_part(path: str, columns: list[str], features, start: dict[str, float],
                     bucket_subjects: int = BUCKET_SUBJECTS) -> pl.DataFrame:
    """Every person's own fit in one panel part on disk (read here), in buckets of
    ``bucket_subjects`` whole subjects: a pure function of the part."""
    from pipeline.features.panel import read_part

    from pipeline.execution import raise_if_cancelled

    frame = read_part(Path(path), columns)
    rows = []
    for bucket in subject_buckets(frame, bucket_subjects):
        raise_if_cancelled()  # Ctrl-C: stop within one bucket of subjects
        rows.append(fit_subject_bucket(bucket, features, start))
    return pl.concat(rows) if rows else pl.DataFrame(schema=SUBJECT_ROWS_SCHEMA)


def pool_subject_rows(rows: pl.DataFrame, features, effects: pl.DataFrame) -> SubjectEffects:
    """The reduction: random-effects pooling per feature over every bucket's per-subject rows.

    Only the numeric results are computed here, one column each on the per-subject rows (sorted
    by subject, features in dictionary order within a subject); the output table's text columns
    are expressions over them (:meth:`SubjectEffects.lazy`), so the written file is produced in
    streaming morsels and the run never holds the table itself (at 300,000 persons × 12 features
    that table is 3.6M rows of text)."""
    within = effects.filter(pl.col("model") == fd.WITHIN_SUBJECT)
    within_irr = dict(zip(within["feature"].to_list(), within["irr"].to_list()))
    names = [f.name for f in features]
    rows = rows.filter(pl.col("feature").is_in(names)).sort("subject_id", maintain_order=True)
    feature = rows["feature"].replace_strict(names, range(len(names)),
                                             return_dtype=pl.Int32).to_numpy()
    theta = np.full(rows.height, np.nan)
    se = np.full(rows.height, np.nan)
    weight = np.full(rows.height, np.nan)
    all_y, all_v = rows["log_irr"].to_numpy(), rows["variance"].to_numpy()
    het_rows, pooled_notes = [], {}
    for i, f in enumerate(features):
        at = np.flatnonzero(feature == i)  # this feature's rows, in subject order
        y, v = all_y[at], all_v[at]
        has = ~np.isnan(y)
        n = int(has.sum())
        het = {"factor": f.factor, "feature": f.name, "unit": f.unit, "n_subjects": n,
               "within_subject_irr": within_irr.get(f.name)}
        if n < MIN_SUBJECTS_FOR_POOLING:
            het["note"] = (f"not estimated: only {n} person(s) with an own estimate (need at "
                           f"least {MIN_SUBJECTS_FOR_POOLING} to estimate how much people differ)")
            pooled_notes[f.name] = ("no pooled estimate: too few people with an own estimate to "
                                    "say how much people differ")
        else:
            fit = pool(y[has], v[has])
            centre, centre_se = _cohort_estimate(within, f.name, fit)
            theta[at[has]], se[at[has]] = shrink_integrated(fit, y[has], v[has], centre,
                                                            centre_se, y[has], v[has])
            weight[at[has]] = fit.tau2 / (fit.tau2 + v[has])
            mu_lo, mu_hi = fit.mu - Z95 * fit.mu_se, fit.mu + Z95 * fit.mu_se
            spread = Z95 * np.sqrt(fit.tau2 + centre_se ** 2)
            het.update(tau=fit.tau, tau_ci_low=np.sqrt(fit.tau2_low),
                       tau_ci_high=np.sqrt(fit.tau2_high), q=fit.q, p_value=fit.q_p_value,
                       mean_irr=np.exp(fit.mu), mean_ci_low=np.exp(mu_lo),
                       mean_ci_high=np.exp(mu_hi), range_low=np.exp(centre - spread),
                       range_high=np.exp(centre + spread))
            if fit.tau < NO_HETEROGENEITY_TAU:
                het["note"] = ("no sign that people differ (tau = 0): every person's estimate "
                               "is the cohort's within_subject estimate")
                pooled_notes[f.name] = ("the data show no sign that people differ: this is the "
                                        "cohort's estimate")
            else:
                het["note"] = ""
        het_rows.append(het)
    rows = rows.with_columns(pl.Series("theta", theta), pl.Series("theta_se", se),
                             pl.Series("weight_own", weight))
    het_frame = (pl.DataFrame(het_rows, schema=HETEROGENEITY.schema(), orient="row",
                              strict=False) if het_rows else HETEROGENEITY.empty())
    return SubjectEffects(rows=rows, heterogeneity=HETEROGENEITY.conform(het_frame),
                          features=tuple(features), pooled_notes=pooled_notes)


def _cohort_estimate(within: pl.DataFrame, feature: str, fit) -> tuple[float, float]:
    """The shrinkage centre: the cohort's within_subject log IRR and its standard error (from
    its 95% CI); the random-effects mean when effects.csv has no estimate (not reached: only
    estimated features enter)."""
    row = within.filter(pl.col("feature") == feature)
    if row.height and row["irr"][0] is not None:
        lo, hi = np.log(row["ci_low"][0]), np.log(row["ci_high"][0])
        return float(np.log(row["irr"][0])), float((hi - lo) / (2 * Z95))
    return fit.mu, fit.mu_se


def write_subject_effects(result: SubjectEffects, out_dir) -> None:
    """Write subject_effects.csv and heterogeneity.csv atomically, floats to 6 significant digits
    (rounded by expression: the per-value formatting of effects.csv costs seconds on 10,000
    persons × a dozen features). subject_effects.csv is streamed from :meth:`SubjectEffects.lazy`
    (a sink, in morsels), never held whole."""
    from pathlib import Path

    from pipeline import atomic

    out_dir = Path(out_dir)
    for table, frame in ((SUBJECT_EFFECTS, result.lazy()),
                         (HETEROGENEITY, result.heterogeneity)):
        atomic.write_csv(out_dir / table.file,
                         frame.with_columns(pl.col(pl.Float64).round_sig_figs(6)))
