"""Subgroups and effect modification (``subgroups.csv``): does an association of the
``within_subject`` model hold for everyone, or only for some people or some cramps?

For every core feature and custom factor of ``within_subject``:

- **estimates within subgroups**: the ``within_subject`` model fitted on the subject-days of each
  age group, each sex, and with the outcome restricted to calf or foot cramps and to all other
  cramps (the outcome by muscle group). Each fit is the ordinary within-subject fit of
  ``effects.py`` on those rows: the same design, complete cases and data-sufficiency policy
  (``design.py``), so a feature with too little data in a subgroup gets no estimate and a reason;
- **an interaction test** per feature and subgrouping variable: one within-subject model with every
  feature plus the products feature × 1[subgroup = s] for each subgroup s but the first, and a Wald
  test (chi-square, subject-clustered sandwich covariance, df = number of products) that all
  products are 0. For the muscle group, each subject-day enters twice, once per outcome (calf or
  foot; others), each subject with its own baseline rate per outcome, clustered by subject;
- **Benjamini–Hochberg** q-values across all the interaction tests of the table
  (``statsmodels.stats.multitest.multipletests``).

Grouping rule (named constants below): a subgroup needs at least ``MIN_SUBGROUP_SUBJECTS`` subjects
with episodes (the subjects a within-subject estimate rests on). Age bands are merged with their
neighbours, youngest first, until each group reaches that number (a last group short of it joins
the one before). A sex or outcome subgroup that is too small gets no estimate and is left out of
the interaction test. Within a subgroup, a feature's estimate also needs ``MIN_VARYING_SUBJECTS``
subjects with episodes in whom it varies (it is withheld otherwise, and that subgroup leaves the
feature's interaction test). Why 50: the interaction terms of a subgroup are estimated from its own
subjects only, and cluster-robust (sandwich) Wald tests over-reject with few clusters; Cameron &
Miller (2015, "A practitioner's guide to cluster-robust inference", J Hum Resour 50:317) put that
point at roughly 20–50 clusters. On 20 simulated datasets without effect modification (200
subjects × 60 days, ``benchmarks/calibrate_subgroups.py``), these rules gave 6.2% of interaction
p-values below 0.05 (nominal 5%) and 1 of 20 datasets with any q below 0.05; with 30 subjects per
subgroup and no variation rule, 9% and 3 of 10 (rare exposures such as a recent injury gave
p < 1e-5).

Run time: every subgroup and every interaction test is a refit of the whole within-subject model
(about 40 fits), so on a large panel they are fitted on the subjects of a stable hash-based subset
of about ``MAX_SUBJECT_DAYS`` subject-days (``subsets.subject_subset``, the same rule as the lag
model; the bound is the dose-response curves'); each row's note says so, and the intervals are the
subset's. The fits are independent of each other and run side by side on the driver's threads
(``execution.concurrently``; each fit's passes go to the run's executor, as every fit's), and the
interaction models of up to ``FEATURES_PER_DESIGN`` features tested on the same subgroups are cut
from one design, built and checked once (``_SharedDesign``: the same design ``prepare_design``
builds for each feature alone, or that feature's own is built). On 10,000 x 365
(``benchmarks/bench_describe.py``, a shared 2-core machine) the subgroups took 14-18 CPU seconds
before, 9.7 now on one thread and about 12 on two: two fits at once contend for the GIL, so the
second thread saves less than half of the wall time.

Subgroups were not the study's primary question: many tests are run, and a difference that does not
survive the FDR correction is reported as "no difference found", not as a weaker finding.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from pipeline import schema
from pipeline.features import dictionary as fd
from pipeline.features.panel import OUTCOME, Panel, episode_counts_where
from pipeline.models.design import SUBJECT_CODE, Design, prepare_design, with_subject_codes
from pipeline.outputs import OutputColumn, OutputTable, declare

MODEL = fd.WITHIN_SUBJECT
#: Bound on the subject-days the subgroup fits use (see the module docstring): on 10,000 x 365
#: all the data made the subgroups 216 s of a 248 s run.
MAX_SUBJECT_DAYS = 250_000
#: Subjects with episodes a subgroup needs for an estimate (and age bands are merged to reach).
MIN_SUBGROUP_SUBJECTS = 50
#: Subjects with episodes in whom a feature varies, per subgroup, for its subgroup estimate and
#: for the subgroup to enter the feature's interaction test. A rare exposure (a recent injury, a
#: supplement few take) varies in few people: its subgroup terms rest on those few clusters only,
#: and on simulated data without effect modification such tests gave p < 1e-5.
MIN_VARYING_SUBJECTS = 30
#: FDR level at which an interaction counts as found (the report's sentence).
FDR_LEVEL = 0.05
#: The muscle-group subgroups: the outcome restricted to these groups, and to all others.
CALF_FOOT = ("calf", "foot")
CALF_FOOT_LABEL = "calf or foot"
OTHER_LABEL = "other muscle groups"
#: Subgrouping variables, in output order.
VARIABLES = ("age_band", "sex", "muscle_group")
_OUTCOME_BY_TYPE = ("_episodes_calf_foot", "_episodes_other")
_TYPE = "_outcome_type"

SUBGROUPS = declare(OutputTable(
    file="subgroups.csv",
    meaning="Per core feature of the within_subject model: its IRR within each age group, each "
            "sex and for calf/foot cramps vs all others, with an interaction test per feature and "
            "subgrouping variable (Benjamini-Hochberg across the tests).",
    caution="Subgroups were not the primary question: many tests are run, so only an interaction "
            "that survives the FDR correction suggests a real difference; within-subgroup CIs are "
            "wide. Counts are disclosure-controlled (1–7 suppressed, others rounded to 5).",
    columns=(
        OutputColumn("model", pl.String(), "the model subgrouped (`within_subject`)"),
        OutputColumn("factor", pl.String(), "documented contributing factor (or `custom`)"),
        OutputColumn("feature", pl.String(), "feature name (feature dictionary)"),
        OutputColumn("unit", pl.String(), "the documented unit the IRR is per"),
        OutputColumn("subgroup_variable", pl.String(), "`age_band`, `sex` or `muscle_group`"),
        OutputColumn("subgroup", pl.String(), "the subgroup (merged age bands read `18-39`)"),
        OutputColumn("irr", pl.Float64(), "IRR within the subgroup (empty: not estimable)"),
        OutputColumn("ci_low", pl.Float64(), "lower 95% confidence limit"),
        OutputColumn("ci_high", pl.Float64(), "upper 95% confidence limit"),
        OutputColumn("p_interaction", pl.Float64(), "Wald test that the feature's IRR is the same "
                                                    "in every subgroup of the variable"),
        OutputColumn("q_interaction", pl.Float64(), "Benjamini-Hochberg q-value across all "
                                                    "interaction tests of the table"),
        OutputColumn("n_subjects", pl.Int64(), "subjects contributing to the subgroup's fit"),
        OutputColumn("n_subject_days", pl.Int64(), "complete subject-days used"),
        OutputColumn("n_episodes", pl.Int64(), "episodes (of the subgroup's outcome) on them"),
        OutputColumn("note", pl.String(), "why there is no estimate or test, or what qualifies "
                                          "it"),
    )))


@dataclasses.dataclass(frozen=True)
class Subgroup:
    """One subgroup: which levels of the variable it holds (for muscle_group: the outcome)."""

    variable: str
    label: str
    levels: tuple[str, ...]
    #: Subjects with episodes (of the subgroup's outcome) on logged days.
    n_informative: int = 0

    @property
    def sufficient(self) -> bool:
        return self.n_informative >= MIN_SUBGROUP_SUBJECTS

    def insufficiency(self) -> str:
        return (f"only {self.n_informative:,} subject(s) with episodes in this subgroup (need at "
                f"least {MIN_SUBGROUP_SUBJECTS} for a subgroup estimate)")


def age_band_label(bands: tuple[str, ...]) -> str:
    """``("18-29", "30-39")`` -> ``18-39``; ``("70-79", "80+")`` -> ``70+``."""
    low = bands[0].split("-")[0].rstrip("+")
    last = bands[-1]
    return bands[0] if len(bands) == 1 else (
        f"{low}+" if last.endswith("+") else f"{low}-{last.split('-')[1]}")


def group_age_bands(informative: dict[str, int],
                    minimum: int = MIN_SUBGROUP_SUBJECTS) -> list[tuple[str, ...]]:
    """Adjacent age bands merged, youngest first, until each group has ``minimum`` subjects with
    episodes; a last group short of it joins the one before.

    >>> group_age_bands({"18-29": 10, "30-39": 25, "40-49": 31, "50-59": 5, "60-69": 40,
    ...                  "70-79": 20, "80+": 4}, minimum=30)
    [('18-29', '30-39'), ('40-49',), ('50-59', '60-69'), ('70-79', '80+')]
    """
    groups: list[list[str]] = []
    current: list[str] = []
    for band in schema.AGE_BANDS:
        current.append(band)
        if sum(informative.get(b, 0) for b in current) >= minimum:
            groups.append(current)
            current = []
    if current:
        if groups and sum(informative.get(b, 0) for b in current) < minimum:
            groups[-1] += current
        else:
            groups.append(current)
    return [tuple(g) for g in groups]


def subgroup_frame(panel: Panel, subjects: pl.LazyFrame | pl.DataFrame,
                   episodes: pl.LazyFrame) -> pl.DataFrame:
    """The panel with subject codes, each subject's age band and sex, and the outcome split by
    muscle group (calf or foot; others)."""
    frame = with_subject_codes(panel.whole())
    attrs = subjects.lazy().select("subject_id", "age_band", "sex").collect()
    calf_foot = episode_counts_where(frame, episodes, pl.col("muscle_group").is_in(CALF_FOOT),
                                     _OUTCOME_BY_TYPE[0])
    return (frame.join(attrs, on="subject_id", how="left", maintain_order="left")
            .with_columns(calf_foot[_OUTCOME_BY_TYPE[0]])
            .with_columns((pl.col(OUTCOME) - pl.col(_OUTCOME_BY_TYPE[0]))
                          .alias(_OUTCOME_BY_TYPE[1])))


def define_subgroups(frame: pl.DataFrame) -> dict[str, list[Subgroup]]:
    """The subgroups of each variable with their informative-subject counts."""
    per_subject = frame.group_by(SUBJECT_CODE).agg(
        pl.col("age_band").first(), pl.col("sex").first(),
        *[(pl.col(c).sum() > 0).alias(c) for c in (OUTCOME, *_OUTCOME_BY_TYPE)])
    with_episodes = per_subject.filter(pl.col(OUTCOME))
    count = lambda column: dict(with_episodes[column].value_counts().iter_rows())  # noqa: E731
    ages, sexes = count("age_band"), count("sex")
    out = {
        "age_band": [Subgroup("age_band", age_band_label(g), g, sum(ages.get(b, 0) for b in g))
                     for g in group_age_bands(ages)],
        "sex": [Subgroup("sex", s, (s,), sexes.get(s, 0)) for s in schema.SEXES],
        "muscle_group": [
            Subgroup("muscle_group", CALF_FOOT_LABEL, CALF_FOOT,
                     int(per_subject[_OUTCOME_BY_TYPE[0]].sum())),
            Subgroup("muscle_group", OTHER_LABEL,
                     tuple(g for g in schema.MUSCLE_GROUPS if g not in CALF_FOOT),
                     int(per_subject[_OUTCOME_BY_TYPE[1]].sum())),
        ],
    }
    return out


def subgroup_rows(frame: pl.DataFrame, sg: Subgroup) -> pl.DataFrame:
    """The subject-days (and outcome) of one subgroup's fit."""
    if sg.variable == "muscle_group":
        outcome = _OUTCOME_BY_TYPE[0] if sg.label == CALF_FOOT_LABEL else _OUTCOME_BY_TYPE[1]
        return frame.with_columns(pl.col(outcome).alias(OUTCOME))
    return frame.filter(pl.col(sg.variable).is_in(sg.levels))


def fit_subgroups(panel: Panel, subjects: pl.LazyFrame | pl.DataFrame, episodes: pl.LazyFrame,
                  *, custom_factors=(), start: dict[str, float] | None = None) -> pl.DataFrame:
    """``subgroups.csv`` before disclosure control: ``SUBGROUPS``' columns, one row per
    subgrouping variable, feature and subgroup.

    ``start``: the within_subject estimates (log IRR by feature), used as starting values.

    The fits are independent, so they run side by side (``_fit_all``); the features tested on
    the same subgroups share one interaction design (``_interaction_tests``).
    """
    from statsmodels.stats.multitest import multipletests

    from pipeline.models.subsets import panel_subset

    features, reported = fd.model_features(MODEL, custom_factors)
    # The subset first, so that the subgroup frame (subject codes, attributes, outcome by muscle
    # group) is built on its subject-days only; the codes stay in subject_id order.
    rows_in, subset = panel_subset(panel, MAX_SUBJECT_DAYS,
                                     what="each subgroup model")
    frame = subgroup_frame(dataclasses.replace(panel, frame=rows_in), subjects, episodes)
    groups = define_subgroups(frame)
    everyone = [sg for variable in VARIABLES for sg in groups[variable]]
    estimated = _fit_all(lambda sg: _estimate_rows(frame, panel, features, reported, sg, start),
                         everyone, cost=lambda sg: sg.n_informative)
    rows: list[dict[str, Any]] = [r for sg_rows, _ in estimated for r in sg_rows]
    varying: dict[tuple[str, str, str], int] = {}
    for sg, (_, counts) in zip(everyone, estimated):
        varying.update({(sg.variable, label, name): n for (label, name), n in counts.items()})

    usable = {(variable, f.name): tuple(
        sg for sg in groups[variable]
        if varying.get((variable, sg.label, f.name), 0) >= MIN_VARYING_SUBJECTS)
        for variable in VARIABLES for f in reported}
    tests = _interaction_tests(frame, panel, features, reported, usable, start)

    keys = [k for k, (p, _) in tests.items() if p is not None]
    q = dict(zip(keys, multipletests([tests[k][0] for k in keys], method="fdr_bh")[1])) if keys \
        else {}
    for row in rows:
        key = (row["subgroup_variable"], row["feature"])
        p, why = tests[key]
        row["p_interaction"] = p
        row["q_interaction"] = None if p is None else float(q[key])
        if subset is not None:
            why = "; ".join(x for x in (why, f"{subset['n_subjects']:,} of {subset['of_subjects']:,} "
                                        f"subjects: {subset['why']}") if x)
        if why:
            row["note"] = "; ".join(x for x in (row["note"], why) if x)
    order = {v: i for i, v in enumerate(VARIABLES)}
    feature_rank = {f.name: i for i, f in enumerate(reported)}
    frame_out = pl.DataFrame(rows, schema={**SUBGROUPS.schema(), "_sg": pl.Int64},
                             orient="row")
    return SUBGROUPS.conform(frame_out.sort(
        pl.col("subgroup_variable").replace_strict(order, return_dtype=pl.Int64),
        pl.col("feature").replace_strict(feature_rank, return_dtype=pl.Int64), "_sg"))


def _estimate_rows(frame, panel, features, reported, sg: Subgroup,
                   start) -> tuple[list[dict], dict[tuple[str, str], int]]:
    """The subgroup's rows: the within_subject fit on its subject-days. An estimate resting on
    fewer than ``MIN_VARYING_SUBJECTS`` subjects in whom the feature varies is withheld (the
    feature stays in the fit, so the others are adjusted for it as in within_subject).
    Also returns (subgroup, feature) -> those subjects (0 for a feature without an estimate)."""
    from pipeline.models.effects import _effect_rows, _fit

    base = {"subgroup_variable": sg.variable, "subgroup": sg.label, "p_interaction": None,
            "q_interaction": None}
    rank = {"_sg": list(schema.AGE_BANDS + schema.SEXES + (CALF_FOOT_LABEL, OTHER_LABEL))
            .index(sg.levels[0] if sg.variable != "muscle_group" else sg.label)}
    if not sg.sufficient:
        return [{**base, **rank, "model": MODEL, "factor": f.factor, "feature": f.name,
                 "unit": f.unit, "irr": None, "ci_low": None, "ci_high": None,
                 "n_subjects": sg.n_informative, "n_subject_days": None, "n_episodes": None,
                 "note": "not estimated: " + sg.insufficiency()} for f in reported], {}
    design = prepare_design(subgroup_rows(frame, sg), panel, MODEL, True, features, reported)
    fit, failure = _fit(design, start)
    out, varying = [], {}
    for row in _effect_rows(design, fit, failure):
        row.pop("p_value"), row.pop("q_value")
        n_vary = design.sufficiency.get(row["feature"], {}).get("n_subjects_with_variation", 0)
        varying[(sg.label, row["feature"])] = n_vary if row["irr"] is not None else 0
        if row["irr"] is not None and n_vary < MIN_VARYING_SUBJECTS:
            row.update(irr=None, ci_low=None, ci_high=None,
                       note=f"not estimated: varies within only {n_vary:,} subject(s) with "
                            f"episodes in this subgroup (need at least {MIN_VARYING_SUBJECTS} "
                            "for a subgroup estimate)")
        out.append({**row, **base, **rank, "note": row["note"] or None})
    return out, varying


Test = tuple[float | None, str | None]


def _untested(feature: fd.Feature, usable: Sequence[Subgroup], panel: Panel) -> Test | None:
    """Why the interaction of ``feature`` is not tested before any fit, or None."""
    if len(usable) < 2:
        return None, ("interaction not tested: fewer than 2 subgroups with a subgroup estimate")
    if feature.name not in panel.features:
        return None, None  # absent from the dataset: the estimate rows already say so
    return None


def _interaction_frame(frame: pl.DataFrame, usable: Sequence[Subgroup]):
    """The rows of an interaction model of ``usable`` (at least 2 subgroups of one variable) and
    the indicator of each subgroup but the first: ``(rows, [(subgroup, expression)])``."""
    variable = usable[0].variable
    if variable == "muscle_group":
        return _stacked(frame), [(usable[1], pl.col(_TYPE) == 1)]
    rows = frame.filter(pl.col(variable).is_in([lv for sg in usable for lv in sg.levels]))
    return rows, [(sg, pl.col(variable).is_in(sg.levels)) for sg in usable[1:]]


def _product_columns(feature: fd.Feature, indicators) -> tuple[list[fd.Feature], list[pl.Expr]]:
    """The products feature × 1[subgroup = s] (as features of the design, and as columns)."""
    products, columns = [], []
    for sg, indicator in indicators:
        product = dataclasses.replace(feature, name=f"{feature.name} × {sg.label}")
        columns.append((pl.col(feature.name) * indicator.cast(pl.Float64)).alias(product.name))
        products.append(product)
    return products, columns


def _interaction_test(frame, panel, features, feature: fd.Feature, usable: list[Subgroup],
                      start) -> Test:
    """``(p, None)`` or ``(None, why not)``: the Wald test of feature × subgroup products, with
    the model's own design (``prepare_design`` on the rows and products of this one test).

    ``fit_subgroups`` gets the same tests from designs shared by the features of a variable
    (``_interaction_tests``) and falls back to this where it cannot show they are the same."""
    untested = _untested(feature, usable, panel)
    if untested is not None:
        return untested
    rows, indicators = _interaction_frame(frame, usable)
    products, columns = _product_columns(feature, indicators)
    rows = rows.with_columns(columns)
    extended = dataclasses.replace(panel, features={**panel.features,
                                                    **{p.name: p for p in products}})
    design = prepare_design(rows, extended, MODEL, True, (*features, *products),
                            (*features, *products))
    return _wald_test(design, feature, products, start, usable[0].variable)


def _wald_test(design: Design, feature: fd.Feature, products: list[fd.Feature], start,
               variable: str) -> Test:
    """Fit an interaction model's design; the Wald test that its products are all 0."""
    from scipy.stats import chi2

    from pipeline.models.effects import _fit

    clusters = design.groups // 2 if variable == "muscle_group" else None
    fit, failure = _fit(design, start, clusters=clusters)
    if fit is None:
        return None, f"interaction not tested: {failure}"
    if feature.name not in fit.names:
        return None, ("interaction not tested: "
                      + design.excluded.get(feature.name, "not estimable in the combined model"))
    idx = [fit.names.index(p.name) for p in products if p.name in fit.names]
    if not idx:
        reasons = {design.excluded.get(p.name, "not estimable") for p in products}
        return None, "interaction not tested: " + "; ".join(sorted(reasons))
    b = fit.coef[idx]
    V = fit.cov_cluster[np.ix_(idx, idx)]
    wald = float(b @ np.linalg.solve(V, b))
    why = None
    if len(idx) < len(products):
        dropped = [p.name for p in products if p.name not in fit.names]
        why = "interaction test without " + ", ".join(dropped) + " (not estimable)"
    return float(chi2.sf(wald, len(idx))), why


@dataclasses.dataclass
class _SharedDesign:
    """One interaction design for every feature tested on the same subgroups of a variable: the
    model's features plus the products of all those features, built and checked once.

    A feature's own design (its products only) is then a choice of columns (``design_for``). It
    is the design ``prepare_design`` builds for that feature alone when the complete-case rows
    never change while the sufficiency checks run (``rows_fixed``): every column then gets the
    same verdict in either design, because each check reads only its own column on those rows.
    """

    design: Design
    #: The model's own features (the first columns) and each tested feature's products.
    features: tuple[fd.Feature, ...]
    products: dict[str, list[fd.Feature]]
    rows_fixed: bool

    def design_for(self, feature: fd.Feature) -> Design | None:
        """``feature``'s interaction design, or None when it might differ from its own."""
        from pipeline.models.design import FEATURE_REASONS

        own = {p.name for p in self.products[feature.name]}
        others = {p.name for ps in self.products.values() for p in ps} - own
        big = self.design
        collinear = FEATURE_REASONS["collinear"]
        if not self.rows_fixed or any(big.excluded.get(p) == collinear for p in own):
            # A product the others span here might not be spanned by fewer columns.
            return None
        idx = [j for j, f in enumerate(big.kept) if f.name not in others]
        products = self.products[feature.name]
        X = np.empty((big.X.shape[0], len(idx)), order="F")  # column-major, as _build_X's
        for k, j in enumerate(idx):
            X[:, k] = big.X[:, j]
        return Design(
            big.model, True, (*self.features, *products), (*self.features, *products),
            kept=[big.kept[j] for j in idx],
            excluded={k: v for k, v in big.excluded.items() if k not in others},
            sufficiency={k: dict(v) for k, v in big.sufficiency.items() if k not in others},
            X=X, y=big.y, groups=big.groups, strata=big.strata,
            n_candidate_days=big.n_candidate_days, n_dropped_incomplete=big.n_dropped_incomplete,
            n_subjects_without_episodes=big.n_subjects_without_episodes,
            n_days_without_episodes_subject=big.n_days_without_episodes_subject)


def _shared_design(interaction_frame, panel, features,
                   tested: list[fd.Feature]) -> _SharedDesign:
    """The interaction design with the products of every feature in ``tested``
    (``interaction_frame``: ``_interaction_frame``'s rows and indicators)."""
    from pipeline.models.design import FEATURE_REASONS, MAX_MISSING_FRACTION

    rows, indicators = interaction_frame
    products, columns = {}, []
    for f in tested:
        products[f.name], cols = _product_columns(f, indicators)
        columns += cols
    every = [p for ps in products.values() for p in ps]
    extended = dataclasses.replace(panel, features={**panel.features,
                                                    **{p.name: p for p in every}})
    design = prepare_design(rows.with_columns(columns), extended, MODEL, True,
                            (*features, *every), (*features, *every))
    # Do the complete-case rows stay those of the first round of checks? The first round
    # requires every feature not dropped for missingness; the last, those that passed (or were
    # dropped later as collinear). The same rows then: no check ever ran on other rows.
    present = [f.name for f in features if f.name in panel.features]
    n = rows.height
    nulls = rows.select(pl.col(present).null_count()).row(0, named=True) if n else {}
    first = [c for c in present if n and nulls[c] / n <= MAX_MISSING_FRACTION]
    last = [c for c in first if c in design.names
            or design.excluded.get(c) == FEATURE_REASONS["collinear"]]
    complete = rows.select(
        pl.all_horizontal(pl.col(first).is_not_null()).sum().alias("first") if first
        else pl.lit(n).alias("first"),
        pl.all_horizontal(pl.col(last).is_not_null()).sum().alias("last") if last
        else pl.lit(n).alias("last")).row(0) if n else (0, 0)
    fixed = bool(n) and complete[0] == complete[1] == n - design.n_dropped_incomplete
    return _SharedDesign(design, tuple(features), products, fixed)


#: Features whose products share one interaction design (``_SharedDesign``): more share the
#: model's own columns less often, fewer hold fewer columns in memory at a time (a design of 4
#: features' products on 10,000 x 365 is about 50 MB; every feature's at once was 230 MB).
FEATURES_PER_DESIGN = 4


class _Rows:
    """The rows of the interaction models of some subgroups (``_interaction_frame``): built by
    the first design that needs them, released when the last has been built."""

    def __init__(self, frame: pl.DataFrame, usable: tuple[Subgroup, ...], users: int):
        self.frame, self.usable, self.users = frame, usable, users
        self.value = None
        self.lock = threading.Lock()

    def get(self):
        with self.lock:
            if self.value is None:
                self.value = _interaction_frame(self.frame, self.usable)
            return self.value

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                self.value = None


class _Chunk:
    """Some features tested on the same subgroups, and their shared design once it is built
    (released when the last of their tests is done)."""

    def __init__(self, rows: _Rows, features: list[fd.Feature]):
        self.rows, self.usable, self.features = rows, rows.usable, features
        self.shared: _SharedDesign | None = None
        self.built = threading.Event()
        self.left = len(features)
        self.lock = threading.Lock()

    def done_with(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                self.shared = None


def _interaction_tests(frame, panel, features, reported,
                       usable: dict[tuple[str, str], tuple[Subgroup, ...]],
                       start) -> dict[tuple[str, str], Test]:
    """Every interaction test of the table, keyed by (variable, feature name).

    Up to ``FEATURES_PER_DESIGN`` features tested on the same subgroups share one design
    (``_SharedDesign``); where it cannot stand in for a feature's own, the feature's test builds
    its own (``_interaction_test``): same result, more time. The work is one list run in order
    side by side (``_fit_all``): each chunk's design, then its fits, which wait for
    the design if the other thread is still building it (it was started before them: the items
    are taken in order, so no fit waits for a design nobody builds)."""
    by_name = {f.name: f for f in reported}
    tests: dict[tuple[str, str], Test] = {}
    groups: dict[tuple[Subgroup, ...], list[fd.Feature]] = {}
    for (variable, name), sgs in usable.items():
        untested = _untested(by_name[name], sgs, panel)
        if untested is not None:
            tests[(variable, name)] = untested
        else:
            groups.setdefault(sgs, []).append(by_name[name])
    chunks = []
    for sgs, fs in groups.items():
        rows = _Rows(frame, sgs, -(-len(fs) // FEATURES_PER_DESIGN))
        chunks += [_Chunk(rows, fs[i:i + FEATURES_PER_DESIGN])
                   for i in range(0, len(fs), FEATURES_PER_DESIGN)]
    # Largest fits first (the stacked muscle-group days, then the most products), so that no
    # long fit is left alone at the end.
    chunks.sort(key=lambda c: -(len(c.usable) - 1 + len(features))
                * (2 if c.usable[0].variable == "muscle_group" else 1))

    def step(item) -> Test | None:
        chunk, feature = item
        if feature is None:
            try:
                chunk.shared = _shared_design(chunk.rows.get(), panel, features, chunk.features)
            finally:
                chunk.rows.release()
                chunk.built.set()
            return None
        chunk.built.wait()
        try:
            shared = chunk.shared
            design = None if shared is None else shared.design_for(feature)
            if design is None:
                return _interaction_test(frame, panel, features, feature, list(chunk.usable),
                                         start)
            return _wald_test(design, feature, shared.products[feature.name], start,
                              chunk.usable[0].variable)
        finally:
            chunk.done_with()

    items = [(c, f) for c in chunks for f in (None, *c.features)]
    for (chunk, feature), test in zip(items, _fit_all(step, items)):
        if feature is not None:
            tests[(chunk.usable[0].variable, feature.name)] = test
    return {key: tests[key] for key in usable}  # in table order, as the q-values' input


def _fit_all(fn: Callable[[Any], Any], items: Sequence[Any], *,
             cost: Callable[[Any], float] | None = None) -> list[Any]:
    """``[fn(item) for item in items]``, side by side (``execution.concurrently``).

    The subgroup and interaction fits are independent and each is too small to keep two cores
    busy by itself (one bucket: ``conditional.fit_conditional_poisson`` splits a design only
    from 8 row blocks per thread), so the fits are what runs in parallel. The threads take the
    items in order: with ``cost``, the costliest first, so that no long fit is left alone at the
    end. The results are the same either way: each fit is the same computation on the same
    buckets."""
    from pipeline import execution

    order = list(range(len(items))) if cost is None else \
        sorted(range(len(items)), key=lambda i: -cost(items[i]))
    done = execution.concurrently([lambda item=items[i]: fn(item) for i in order])
    out: list[Any] = [None] * len(items)
    for i, result in zip(order, done):
        out[i] = result
    return out



def _stacked(frame: pl.DataFrame) -> pl.DataFrame:
    """Each subject-day twice: outcome calf/foot (type 0) and other (type 1). The group code
    2·subject + type gives each subject a baseline rate per outcome; ``// 2`` is the subject."""
    parts = [frame.with_columns(pl.col(c).alias(OUTCOME), pl.lit(t, pl.Int64).alias(_TYPE))
             for t, c in enumerate(_OUTCOME_BY_TYPE)]
    return (pl.concat(parts)
            .with_columns((pl.col(SUBJECT_CODE) * 2 + pl.col(_TYPE)).alias(SUBJECT_CODE))
            .sort(SUBJECT_CODE, "date", maintain_order=True))


def write_subgroups(frame: pl.DataFrame, out_dir, policy=None) -> None:
    """``subgroups.csv``, disclosure-controlled (counts suppressed 1–7 and rounded to 5, counts
    in notes likewise), floats to 6 significant digits."""
    from pathlib import Path

    from pipeline import atomic
    from pipeline.disclosure import DEFAULT_POLICY, disclose_counts, disclose_text
    from pipeline.models.effects import format_floats

    policy = policy or DEFAULT_POLICY
    shown = disclose_counts(frame, ["n_subjects", "n_subject_days", "n_episodes"], policy)
    shown = shown.with_columns(pl.Series("note", [None if t is None else disclose_text(t, policy)
                                                  for t in shown["note"].to_list()],
                                         dtype=pl.String))
    atomic.write_csv(Path(out_dir) / SUBGROUPS.file, format_floats(SUBGROUPS.conform(shown)))
