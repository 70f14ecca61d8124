"""The cohort table ("Table 1", ``cohort.csv``): who is in the data, what their diaries record and
what their cramps are like, before any model.

Three sections, one row per characteristic and level:

- ``subjects``: subjects by age band and sex; days logged per subject; episodes per subject and per
  30 logged days (median, IQR, share with none); the share meeting the ``frequent`` advisory, read
  from the red-flag outputs (the rule is never recomputed here);
- ``daily factors``: per logged day, median and IQR of each numeric factor in its own unit (what
  "per 1 h of sitting" means in this cohort) and the share of yes days of each yes/no factor;
- ``episodes``: duration (median, IQR, over ``PROLONGED_OVER_MIN`` min), time of day (night
  ``NIGHT_FROM_H``:00–``NIGHT_UNTIL_H``:00, and by hour), muscle group, pain (distribution, share
  ``SEVERE_PAIN_FROM`` or more), each red-flag sign and emergency visits.

Missing is its own level ("not recorded"), never folded into "no". Percentages are of every row in
the denominator, missing included, so a column's levels add up to 100%.

Disclosure control (``pipeline/disclosure.py``, the OpenSAFELY convention it cites): ``n`` and
``denominator`` are suppressed (1–7) and rounded (to 5) before writing; ``percent`` is computed from
the two disclosed counts (a percentage of exact counts would undo the rounding); medians and IQRs are
given only when at least ``MIN_SUBJECTS_FOR_QUANTILES`` subjects contribute values.

Computation: :func:`summarise_bucket` is a pure function of one bucket of whole subjects returning
small parts (per-subject rows without ids, level counts, value histograms, contributing subjects);
:func:`combine` adds parts of several buckets; :func:`cohort_table` builds the table. Diary values
are recorded at a fixed resolution, so a histogram of values is small and its quantiles are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline import schema
from pipeline.disclosure import DEFAULT_POLICY, DisclosurePolicy, disclose_counts, disclose_text
from pipeline.features import dictionary as fd
from pipeline.features.panel import OUTCOME
from pipeline.outputs import OutputColumn, OutputTable, declare

#: Night: an episode starting at or after 22:00 or before 06:00 (local wall-clock time).
NIGHT_FROM_H = 22
NIGHT_UNTIL_H = 6
#: Duration above which an episode is "prolonged": the shipped `prolonged` advisory's threshold
#: (rules.toml), repeated here only to describe the cohort, not to flag anyone.
PROLONGED_OVER_MIN = 15
#: Pain from which it counts as severe: the shipped `severe_pain` rule's threshold (rules.toml).
SEVERE_PAIN_FROM = 7
#: Medians and IQRs are shown only for groups of at least this many subjects (issue 12, item 4).
MIN_SUBJECTS_FOR_QUANTILES = 8
#: Episode rates are expressed per this many logged days.
RATE_PER_DAYS = 30
#: The advisory whose share of subjects the table reports (its rule id in the rule file).
FREQUENT_RULE = "frequent"
NOT_RECORDED = "not recorded"

SECTION_SUBJECTS = "subjects"
SECTION_FACTORS = "daily factors"
SECTION_EPISODES = "episodes"

#: Episode yes/no columns shown as red-flag signs (and the emergency visit), in the rules' order.
SIGN_COLUMNS = ("pain_uncontrolled", "numbness", "swelling", "skin_changes", "sleep_loss",
                "er_visit")

COHORT = declare(OutputTable(
    file="cohort.csv",
    meaning="The cohort table: subjects by age band and sex, days logged and episodes per subject, "
            "the daily factors per logged day, and the characteristics of the episodes. One row "
            "per characteristic and level; missing values are their own level.",
    caution="Counts are disclosure-controlled (1–7 suppressed, others rounded to 5) and percents "
            "computed from the rounded counts, so levels may not add to exactly 100%; medians "
            "and IQRs are left empty for groups of fewer than 8 subjects.",
    columns=(
        OutputColumn("section", pl.String(), "`subjects`, `daily factors` or `episodes`"),
        OutputColumn("characteristic", pl.String(), "what is described (a column or measure)"),
        OutputColumn("level", pl.String(), "the level counted (`not recorded`: missing), or "
                                          "`all` for a distribution"),
        OutputColumn("n", pl.Int64(), "count at this level (subjects, logged days or episodes; "
                                     "for a distribution: the values it is over)"),
        OutputColumn("denominator", pl.Int64(), "the count the percent is of"),
        OutputColumn("percent", pl.Float64(), "100 × n / denominator (from the disclosed counts)"),
        OutputColumn("median", pl.Float64(), "median (distribution rows)"),
        OutputColumn("q1", pl.Float64(), "25th percentile"),
        OutputColumn("q3", pl.Float64(), "75th percentile"),
        OutputColumn("unit", pl.String(), "unit of median, q1 and q3"),
        OutputColumn("note", pl.String(), "what qualifies the row"),
    )))

_LEVELS = {"section": pl.String, "characteristic": pl.String, "level": pl.String, "n": pl.Int64}
_VALUES = {"section": pl.String, "characteristic": pl.String, "value": pl.Float64, "n": pl.Int64}
_CONTRIB = {"section": pl.String, "characteristic": pl.String, "n_subjects": pl.Int64}
_SUBJECT_ROWS = {"age_band": pl.String, "sex": pl.String, "days_logged": pl.Int64,
                 "episodes": pl.Int64, "episodes_on_logged_days": pl.Int64,
                 "frequent": pl.Boolean}


@dataclass(frozen=True)
class CohortParts:
    """What one bucket of subjects contributes; every frame is small and holds no ids."""

    #: One row per subject: age_band, sex, days_logged, episodes (all accepted),
    #: episodes_on_logged_days, frequent (null when the run's rules have no `frequent` rule).
    subjects: pl.DataFrame
    #: section, characteristic, level, n: counts per level (missing: ``NOT_RECORDED``).
    levels: pl.DataFrame
    #: section, characteristic, value, n: histogram of the recorded values of numeric measures.
    values: pl.DataFrame
    #: section, characteristic, n_subjects: subjects with at least one recorded value.
    contributors: pl.DataFrame


def _levels(frame: pl.LazyFrame, section: str, characteristic: str,
            level: pl.Expr) -> pl.LazyFrame:
    """Counts per level of a categorical measure (one group-by)."""
    return (frame.group_by(level.fill_null(NOT_RECORDED).alias("level"))
            .agg(pl.len().cast(pl.Int64).alias("n"))
            .select(pl.lit(section).alias("section"),
                    pl.lit(characteristic).alias("characteristic"), "level", "n"))


def _counted(frame: pl.LazyFrame, section: str,
             counts: Sequence[tuple[str, str, pl.Expr]]) -> pl.LazyFrame:
    """``(characteristic, level, count expression)`` for measures with a few fixed levels (yes/no
    and not recorded, recorded or not), all counted in one pass over ``frame``; a level no row
    has is left out, as a group-by leaves it out."""
    if not counts:
        return pl.LazyFrame(schema=_LEVELS)
    keys = pl.LazyFrame({"key": [str(i) for i in range(len(counts))],
                         "characteristic": [c for c, _, _ in counts],
                         "level": [lv for _, lv, _ in counts]})
    return (frame.select([n.cast(pl.Int64).alias(str(i)) for i, (_, _, n) in enumerate(counts)])
            .unpivot(variable_name="key", value_name="n")
            .join(keys, on="key", maintain_order="left")
            .filter(pl.col("n") > 0)
            .select(pl.lit(section).alias("section"), "characteristic", "level", "n"))


def _binary_counts(characteristic: str, yes: pl.Expr, no: pl.Expr):
    """yes / no / not recorded (anything else, missing included) as counts."""
    n_yes, n_no = yes.sum(), no.sum()
    return [(characteristic, "yes", n_yes), (characteristic, "no", n_no),
            (characteristic, NOT_RECORDED, pl.len() - n_yes - n_no)]


def _values(frame: pl.LazyFrame, section: str, characteristic: str,
            value: pl.Expr) -> pl.LazyFrame:
    return (frame.select(value.cast(pl.Float64).alias("value")).drop_nulls()
            .group_by("value").agg(pl.len().cast(pl.Int64).alias("n"))
            .select(pl.lit(section).alias("section"),
                    pl.lit(characteristic).alias("characteristic"), "value", "n"))


def _contributors(per_subject: pl.LazyFrame, section: str,
                  characteristics: Sequence[str]) -> pl.LazyFrame:
    """Per characteristic: subjects with at least one recorded value, from ``per_subject`` (one
    row per subject, a boolean column per characteristic, in order, named ``_has0``, ...)."""
    if not characteristics:
        return pl.LazyFrame(schema=_CONTRIB)
    keys = pl.LazyFrame({"key": [f"_has{i}" for i in range(len(characteristics))],
                         "characteristic": list(characteristics)})
    return (per_subject.select(pl.col(f"_has{i}").sum().cast(pl.Int64)
                               for i in range(len(characteristics)))
            .unpivot(variable_name="key", value_name="n_subjects")
            .join(keys, on="key", maintain_order="left")
            .select(pl.lit(section).alias("section"), "characteristic", "n_subjects"))


def _has_values(values: Sequence[tuple[str, pl.Expr]]) -> list[pl.Expr]:
    """Aggregations for ``_contributors``: does the subject have a value of each measure?"""
    return [v.is_not_null().any().alias(f"_has{i}") for i, (_, v) in enumerate(values)]


def summarise_bucket(subjects: pl.LazyFrame, panel: pl.LazyFrame, episodes: pl.LazyFrame,
                     features: Sequence[fd.Feature],
                     frequent: pl.LazyFrame | None = None) -> CohortParts:
    """The cohort parts of one bucket of whole subjects.

    ``subjects``, ``episodes``: stored tables (rows of the bucket's subjects); ``panel``: the
    subject-day panel's rows of those subjects (features in model units); ``features``: the daily
    factors to describe (the panel's core and custom features); ``frequent``: ``subject_id`` of
    the subjects who met the ``frequent`` advisory (from ``subject_flags``), or None when the run's
    rules have no such rule.

    Every part is a lazy query and all run together (``collect_all``): the level counts of every
    factor in one pass over the panel, the subjects contributing values in one group-by over
    subjects, and one histogram per numeric measure; likewise for the episodes.
    """
    factor_counts, factor_values, values = [], [], []
    for f in features:
        if f.kind == "binary":
            # The panel holds yes/no factors as 1.0/0.0 (model units).
            factor_counts += _binary_counts(f.name, pl.col(f.name) == 1.0,
                                            pl.col(f.name) == 0.0)
        else:
            source = pl.col(f.name) * f.scale
            recorded = source.is_not_null().sum()
            factor_counts += [(f.name, "recorded", recorded),
                              (f.name, NOT_RECORDED, pl.len() - recorded)]
            factor_values.append((f.name, source))
            values.append(_values(panel, SECTION_FACTORS, f.name, source))

    e = SECTION_EPISODES
    hour = pl.col("started_at").dt.hour()
    duration = pl.col("duration_min")
    long_ = duration > PROLONGED_OVER_MIN
    episode_counts = [
        ("duration_min", f"over {PROLONGED_OVER_MIN} min", long_.sum()),
        ("duration_min", f"{PROLONGED_OVER_MIN} min or less", (~long_).sum()),
        ("duration_min", NOT_RECORDED, duration.is_null().sum()),
    ]
    levels = [
        _counted(panel, SECTION_FACTORS, factor_counts),
        _levels(episodes, e, "hour started", hour.cast(pl.String).str.zfill(2)),
        _levels(episodes, e, "muscle_group", pl.col("muscle_group")),
        _levels(episodes, e, "pain", pl.col("pain").cast(pl.String)),
    ]
    for column in SIGN_COLUMNS:
        if column == "numbness":
            levels.append(_levels(episodes, e, column, pl.col(column)))
        else:
            episode_counts += _binary_counts(column, pl.col(column), ~pl.col(column))
    levels.append(_counted(episodes, e, episode_counts))
    episode_values = [(column, pl.col(column)) for column in ("duration_min", "pain")]
    values += [_values(episodes, e, column, v) for column, v in episode_values]

    # One group-by over subjects per table: the subject rows and the contributing subjects.
    per_day = panel.group_by("subject_id").agg(
        pl.len().cast(pl.Int64).alias("days_logged"),
        pl.col(OUTCOME).sum().cast(pl.Int64).alias("episodes_on_logged_days"),
        *_has_values(factor_values))
    per_subject_episodes = episodes.group_by("subject_id").agg(
        pl.len().cast(pl.Int64).alias("episodes"), *_has_values(episode_values))
    met = (pl.col("subject_id").is_in(frequent.select("subject_id").collect().to_series()
                                      .implode())
           if frequent is not None else pl.lit(None, dtype=pl.Boolean))
    subject_rows = (
        subjects.select("subject_id", "age_band", "sex")
        .join(per_day.select("subject_id", "days_logged", "episodes_on_logged_days"),
              on="subject_id", how="left")
        .join(per_subject_episodes.select("subject_id", "episodes"), on="subject_id", how="left")
        .with_columns(pl.col("days_logged", "episodes", "episodes_on_logged_days").fill_null(0),
                      met.alias("frequent"))
        .select(list(_SUBJECT_ROWS))
    )

    frames = pl.collect_all([
        subject_rows,
        pl.concat(levels, how="vertical"),
        pl.concat(values, how="vertical") if values else pl.LazyFrame(schema=_VALUES),
        pl.concat([_contributors(per_day, SECTION_FACTORS, [c for c, _ in factor_values]),
                   _contributors(per_subject_episodes, e, [c for c, _ in episode_values])],
                  how="vertical"),
    ])
    return CohortParts(*(f.cast(s) for f, s in zip(frames, (_SUBJECT_ROWS, _LEVELS, _VALUES,
                                                             _CONTRIB))))


def combine(parts: Sequence[CohortParts]) -> CohortParts:
    """Add up the parts of several buckets (buckets hold whole subjects, so subject counts add)."""
    def summed(frames, keys, columns):
        return pl.concat(frames).group_by(keys, maintain_order=True).agg(
            pl.col(c).sum().cast(pl.Int64) for c in columns)

    return CohortParts(
        subjects=pl.concat([p.subjects for p in parts]),
        levels=summed([p.levels for p in parts], ["section", "characteristic", "level"], ["n"]),
        values=summed([p.values for p in parts], ["section", "characteristic", "value"], ["n"]),
        contributors=summed([p.contributors for p in parts], ["section", "characteristic"],
                            ["n_subjects"]),
    )


def quantiles_from_counts(values: np.ndarray, counts: np.ndarray,
                          probs=(0.5, 0.25, 0.75)) -> list[float]:
    """Quantiles of the values repeated ``counts`` times, with linear interpolation (numpy's and
    polars' default definition), without expanding them.

    >>> quantiles_from_counts(np.array([1.0, 2.0, 10.0]), np.array([2, 1, 1]))
    [1.5, 1.0, 4.0]
    """
    order = np.argsort(values, kind="stable")
    v, cum = np.asarray(values, float)[order], np.cumsum(np.asarray(counts)[order])
    n = int(cum[-1])
    out = []
    for p in probs:
        h = (n - 1) * p
        lo, hi = int(np.floor(h)), int(np.ceil(h))
        v_lo = v[np.searchsorted(cum, lo, side="right")]
        v_hi = v[np.searchsorted(cum, hi, side="right")]
        out.append(float(v_lo + (h - lo) * (v_hi - v_lo)))
    return out


def cohort_table(parts: CohortParts, features: Sequence[fd.Feature], *,
                 policy: DisclosurePolicy = DEFAULT_POLICY) -> pl.DataFrame:
    """``cohort.csv`` from the (combined) parts: ``COHORT``'s columns, disclosure-controlled."""
    rows: list[dict] = []
    counts = {(r["section"], r["characteristic"], r["level"]): r["n"]
              for r in parts.levels.iter_rows(named=True)}
    contributors = {(r["section"], r["characteristic"]): r["n_subjects"]
                    for r in parts.contributors.iter_rows(named=True)}

    def add(section, characteristic, level, n, denominator, *, dist=None, unit=None, note=None):
        rows.append({"section": section, "characteristic": characteristic, "level": level,
                     "n": n, "denominator": denominator, "dist": dist, "unit": unit,
                     "note": None if note is None else disclose_text(note, policy)})

    def distribution(section, characteristic, values, counts_, n_subjects, unit, note=None):
        """One `all` row with the median and IQR, when enough subjects contribute."""
        n = int(np.sum(counts_)) if len(counts_) else 0
        dist = None
        if n and n_subjects >= MIN_SUBJECTS_FOR_QUANTILES:
            dist = quantiles_from_counts(np.asarray(values), np.asarray(counts_))
        elif n:
            note = "; ".join(x for x in (note, f"median and IQR not shown: fewer than "
                                         f"{MIN_SUBJECTS_FOR_QUANTILES} subjects") if x)
        add(section, characteristic, "all", n, None, dist=dist, unit=unit, note=note)

    def level_rows(section, characteristic, levels, denominator, note=None):
        for level in levels:
            add(section, characteristic, level, counts.get((section, characteristic, level), 0),
                denominator, note=note)

    # --- subjects ---------------------------------------------------------------------------
    s, subj = SECTION_SUBJECTS, parts.subjects
    n_subjects = subj.height
    add(s, "subjects", "all", n_subjects, n_subjects)
    for column, levels in (("age_band", schema.AGE_BANDS), ("sex", schema.SEXES)):
        shown = subj[column].fill_null(NOT_RECORDED).value_counts()
        by_level = dict(zip(shown[column].to_list(), shown["count"].to_list()))
        for level in (*levels, NOT_RECORDED):
            add(s, column, level, int(by_level.get(level, 0)), n_subjects)
    logged = subj.filter(pl.col("days_logged") > 0)
    ones = lambda frame: np.ones(frame.height, dtype=np.int64)  # noqa: E731 - one per subject
    distribution(s, "days logged per subject", logged["days_logged"].to_numpy(), ones(logged),
                 logged.height, "days", note="subjects with at least one logged day")
    add(s, "days logged per subject", "none", n_subjects - logged.height, n_subjects)
    distribution(s, "episodes per subject", subj["episodes"].to_numpy(), ones(subj), n_subjects,
                 "episodes", note="every accepted episode, logged day or not")
    add(s, "episodes per subject", "none", int((subj["episodes"] == 0).sum()), n_subjects)
    rate = (logged["episodes_on_logged_days"] / logged["days_logged"] * RATE_PER_DAYS).to_numpy()
    distribution(s, f"episodes per {RATE_PER_DAYS} logged days", rate, ones(logged),
                 logged.height, "episodes", note="episodes on logged days, per subject")
    if subj["frequent"].null_count() == n_subjects and n_subjects:
        add(s, "frequent cramps advisory", NOT_RECORDED, None, n_subjects,
            note=f"the run's rules have no `{FREQUENT_RULE}` rule")
    else:
        met = int(subj["frequent"].sum())
        note = f"the `{FREQUENT_RULE}` advisory as the run's rules define it (subject_flags.csv)"
        add(s, "frequent cramps advisory", "met", met, n_subjects, note=note)
        add(s, "frequent cramps advisory", "not met", n_subjects - met, n_subjects, note=note)

    # --- daily factors ----------------------------------------------------------------------
    f_section = SECTION_FACTORS
    n_days = int(subj["days_logged"].sum())
    for f in features:
        if f.kind == "binary":
            level_rows(f_section, f.name, ("yes", "no", NOT_RECORDED), n_days)
            continue
        hist = parts.values.filter((pl.col("section") == f_section)
                                   & (pl.col("characteristic") == f.name))
        distribution(f_section, f.name, hist["value"].to_numpy(), hist["n"].to_numpy(),
                     contributors.get((f_section, f.name), 0), f.source_unit,
                     note="per logged day with a value"
                     + ("; 0 on rest days without a rating" if f.name == "exercise_rpe" else ""))
        level_rows(f_section, f.name, ("recorded", NOT_RECORDED), n_days)

    # --- episodes ---------------------------------------------------------------------------
    e = SECTION_EPISODES
    n_episodes = int(subj["episodes"].sum())
    add(e, "episodes", "all", n_episodes, n_episodes)
    add(e, "episodes", "on logged days", int(subj["episodes_on_logged_days"].sum()), n_episodes,
        note="the models' outcome")
    hist = parts.values.filter((pl.col("section") == e) & (pl.col("characteristic")
                                                           == "duration_min"))
    distribution(e, "duration_min", hist["value"].to_numpy(), hist["n"].to_numpy(),
                 contributors.get((e, "duration_min"), 0), "min",
                 note="episodes with a duration recorded")
    level_rows(e, "duration_min", (f"over {PROLONGED_OVER_MIN} min",
                                   f"{PROLONGED_OVER_MIN} min or less", NOT_RECORDED), n_episodes)
    hours = [f"{h:02d}" for h in range(24)]
    by_hour = {h: counts.get((e, "hour started", h), 0) for h in hours}
    night = sum(n for h, n in by_hour.items() if int(h) >= NIGHT_FROM_H or int(h) < NIGHT_UNTIL_H)
    add(e, "time of day", f"night ({NIGHT_FROM_H:02d}:00–{NIGHT_UNTIL_H:02d}:00)", night,
        n_episodes)
    add(e, "time of day", f"day ({NIGHT_UNTIL_H:02d}:00–{NIGHT_FROM_H:02d}:00)",
        n_episodes - night, n_episodes)
    level_rows(e, "muscle_group", schema.MUSCLE_GROUPS, n_episodes)
    hist = parts.values.filter((pl.col("section") == e) & (pl.col("characteristic") == "pain"))
    distribution(e, "pain", hist["value"].to_numpy(), hist["n"].to_numpy(),
                 contributors.get((e, "pain"), 0), "points (0–10)",
                 note="episodes with pain recorded")
    severe = sum(counts.get((e, "pain", str(p)), 0) for p in range(SEVERE_PAIN_FROM, 11))
    add(e, "pain", f"{SEVERE_PAIN_FROM} or more", severe, n_episodes)
    level_rows(e, "pain", [str(p) for p in range(11)] + [NOT_RECORDED], n_episodes)
    for column in SIGN_COLUMNS:
        levels = (*schema.NUMBNESS_LEVELS, NOT_RECORDED) if column == "numbness" else (
            "yes", "no", NOT_RECORDED)
        level_rows(e, column, levels, n_episodes)
    level_rows(e, "hour started", hours, n_episodes, note="for the figure by hour")

    return _disclosed(rows, policy)


def _disclosed(rows: list[dict], policy: DisclosurePolicy) -> pl.DataFrame:
    dist = [r.pop("dist") for r in rows]
    frame = pl.DataFrame(rows, schema={"section": pl.String, "characteristic": pl.String,
                                       "level": pl.String, "n": pl.Int64,
                                       "denominator": pl.Int64, "unit": pl.String,
                                       "note": pl.String})
    frame = disclose_counts(frame, ["n", "denominator"], policy)
    quant = pl.DataFrame([d if d is not None else [None, None, None] for d in dist],
                         schema={"median": pl.Float64, "q1": pl.Float64, "q3": pl.Float64},
                         orient="row")
    frame = pl.concat([frame, quant], how="horizontal").with_columns(
        pl.when(pl.col("denominator") > 0)
        .then((100.0 * pl.col("n") / pl.col("denominator")).round(1))
        .alias("percent"))
    return COHORT.conform(frame)
