"""What the cohort section of the report shows ("Who is in the data"): the cohort table, the
episode characteristics, the figure by hour, and the subgroup forest plots with their sentence.

Reads ``cohort.csv`` and ``subgroups.csv`` of a run (already disclosure-controlled when written);
tables still pass through :func:`~pipeline.report.tables.aggregate_table`, which is idempotent on
disclosed counts and writes what is shown to ``report_tables/`` for the disclosure scan.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from pipeline.describe.cohort import COHORT, SECTION_EPISODES, SECTION_FACTORS, SECTION_SUBJECTS
from pipeline.disclosure import DEFAULT_POLICY
from pipeline.errors import UserError
from pipeline.models.subgroups import FDR_LEVEL, SUBGROUPS, VARIABLES
from pipeline.report import figures
from pipeline.report.load import RunOutputs
from pipeline.report.sentences import feature_label
from pipeline.report.tables import ShownTable, aggregate_table

VARIABLE_LABELS = {"age_band": "age group", "sex": "sex", "muscle_group": "muscle group"}
#: Rows of the figure by hour, not of the shown table.
_HOUR = "hour started"


def _read(run: RunOutputs, table) -> pl.DataFrame:
    path = run.path / table.file
    if not path.is_file():
        raise UserError(f"the run directory has no {table.file} (re-run `cramp run`)",
                        path=str(path))
    return pl.read_csv(path, schema=table.schema())


def load_cohort(run: RunOutputs) -> pl.DataFrame:
    """``cohort.csv`` of the run, with its declared dtypes."""
    return _read(run, COHORT)


def load_subgroups(run: RunOutputs) -> pl.DataFrame:
    """``subgroups.csv`` of the run, with its declared dtypes."""
    return _read(run, SUBGROUPS)


def _median_iqr(frame: pl.DataFrame) -> pl.Series:
    def text(m, a, b):
        return None if m is None else f"{m:.3g} ({a:.3g}–{b:.3g})"
    return pl.Series("median (IQR)", [text(*r) for r in frame.select("median", "q1", "q3").rows()],
                     dtype=pl.String)


def cohort_section_table(run: RunOutputs, section: str = SECTION_SUBJECTS, tables_dir=None,
                         policy=DEFAULT_POLICY) -> ShownTable:
    """One section of the cohort table as the report shows it (characteristic, level, n, %,
    median (IQR), unit)."""
    frame = load_cohort(run).filter((pl.col("section") == section)
                                    & (pl.col("characteristic") != _HOUR))
    shown = frame.select("characteristic", "level", "n", "percent").with_columns(
        _median_iqr(frame), frame["unit"])
    captions = {
        SECTION_SUBJECTS: "Who is in the data: subjects, their diaries and their cramps.",
        SECTION_FACTORS: "The daily factors per logged day, in their own units (what \"per 1 h "
                         "of sitting\" means in this cohort).",
        SECTION_EPISODES: "The cramps: duration, time of day, muscle group, pain and red-flag "
                          "signs. Not recorded is its own level, never counted as no.",
    }
    return aggregate_table(f"cohort_{section.replace(' ', '_')}", shown, ["n"],
                           captions.get(section, section) + " Percent of the denominator "
                           "(missing included), from the rounded counts; medians and IQRs only "
                           "for groups of at least 8 subjects.",
                           tables_dir=tables_dir, policy=policy)


def hour_frame(run: RunOutputs) -> pl.DataFrame:
    """``hour, episodes``: episodes by the hour they started (disclosed counts)."""
    frame = load_cohort(run).filter((pl.col("section") == SECTION_EPISODES)
                                    & (pl.col("characteristic") == _HOUR))
    return frame.select(pl.col("level").alias("hour"), pl.col("n").alias("episodes"))


def hour_figure(run: RunOutputs) -> Figure:
    """Bar chart of episodes by starting hour (the night, 22:00–06:00, is the cramp peak in many
    cohorts)."""
    return figures.bar_plot(hour_frame(run), "hour", "episodes", xlabel="Hour the episode started",
                            ylabel="Episodes", title="Episodes by time of day")


def pain_figure(run: RunOutputs) -> Figure:
    """Bar chart of episodes by pain score (0–10; disclosed counts; not recorded left out)."""
    frame = load_cohort(run).filter((pl.col("section") == SECTION_EPISODES)
                                    & (pl.col("characteristic") == "pain")
                                    & pl.col("level").str.contains(r"^\d+$"))
    return figures.bar_plot(frame.select(pl.col("level").alias("pain"), pl.col("n")
                                         .alias("episodes")), "pain", "episodes",
                            xlabel="Pain at its worst (0 none – 10 worst imaginable)",
                            ylabel="Episodes", title="Episodes by pain score")


def subgroup_forest(run: RunOutputs, variable: str) -> Figure:
    """A compact forest plot for one subgrouping variable: per feature, one marker per subgroup
    (IRR and 95% CI on a log axis); features without any subgroup estimate are left out."""
    figures.use_report_style()
    frame = load_subgroups(run).filter(pl.col("subgroup_variable") == variable)
    estimated = frame.filter(pl.col("irr").is_not_null())
    features = list(dict.fromkeys(estimated["feature"].to_list()))
    subgroups = list(dict.fromkeys(frame["subgroup"].to_list()))
    factors = dict(zip(frame["feature"], frame["factor"]))
    fig = Figure(figsize=(8.5, 0.42 * max(len(features), 1) + 1.9))
    ax = fig.subplots()
    palette = ["#1b6ca8", "#d9822b", "#2a9d5b", "#8e44ad", "#c0392b", "#7f8c8d", "#16a085"]
    offsets = np.linspace(-0.3, 0.3, len(subgroups)) if len(subgroups) > 1 else [0.0]
    values: list[float] = []
    for k, (sg, offset) in enumerate(zip(subgroups, offsets)):
        rows = {r["feature"]: r for r in estimated.filter(pl.col("subgroup") == sg).to_dicts()}
        ys = [i + offset for i, f in enumerate(features) if f in rows]
        irr = [rows[f]["irr"] for f in features if f in rows]
        lo = [rows[f]["ci_low"] for f in features if f in rows]
        hi = [rows[f]["ci_high"] for f in features if f in rows]
        values += irr + lo + hi
        if ys:
            color = palette[k % len(palette)]
            ax.errorbar(irr, ys, xerr=[np.subtract(irr, lo), np.subtract(hi, irr)], fmt="o",
                        color=color, ecolor=color, ms=4, lw=1.2, capsize=2, label=sg)
    figures._log_irr_axis(ax, values, "x")
    ax.set_yticks(range(len(features)))
    ax.set_yticklabels([feature_label(f, factors.get(f)) for f in features])
    ax.set_ylim(len(features) - 0.5, -0.5)
    ax.set_xlabel("Incidence rate ratio within the subgroup, 95% CI (log scale)")
    label = VARIABLE_LABELS.get(variable, variable)
    ax.set_title(f"Within-subject associations by {label}")
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="lower center", ncol=min(len(subgroups), 5), frameon=False, fontsize=8,
                   title=label.capitalize(), title_fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def _interval(r: dict) -> str:
    return f"IRR {r['irr']:.2f} ({r['ci_low']:.2f} to {r['ci_high']:.2f}) in {r['subgroup']}"


def subgroup_sentences(subgroups: pl.DataFrame, level: float = FDR_LEVEL) -> str:
    """A sentence for each interaction that survives the FDR correction (q < ``level``), else
    that no difference was found; always that subgroups were not the primary question."""
    found = (subgroups.filter(pl.col("q_interaction") < level)
             .unique(["subgroup_variable", "feature"], maintain_order=True))
    lines = []
    for key in found.select("subgroup_variable", "feature", "factor", "unit",
                            "q_interaction").to_dicts():
        rows = subgroups.filter((pl.col("subgroup_variable") == key["subgroup_variable"])
                                & (pl.col("feature") == key["feature"])
                                & pl.col("irr").is_not_null()).to_dicts()
        strongest = max(rows, key=lambda r: abs(math.log(r["irr"])))
        label = feature_label(key["feature"], key["factor"]).lower()
        variable = VARIABLE_LABELS.get(key["subgroup_variable"], key["subgroup_variable"])
        lines.append(
            f"- The association of {label} ({key['unit']}) with cramps differed by {variable} "
            f"(interaction q = {key['q_interaction']:.3g}); it was strongest in "
            f"{strongest['subgroup']}: " + "; ".join(_interval(r) for r in rows) + ".")
    if not lines:
        lines.append(f"- No difference between subgroups was found: no interaction test survived "
                     f"the false-discovery-rate correction (Benjamini–Hochberg q < {level:g}).")
    lines.append("- Subgroups were not the study's primary question: many tests were run, so "
                 "the within-subject estimates of the whole cohort remain the main result.")
    return "\n".join(lines)


def subgroup_prose(run: RunOutputs):
    """:func:`subgroup_sentences` of the run as notebook markdown."""
    from pipeline.report.views import Prose

    return Prose(subgroup_sentences(load_subgroups(run)))


def subgroup_tests_table(run: RunOutputs, tables_dir=None, policy=DEFAULT_POLICY) -> ShownTable:
    """One row per feature and subgrouping variable: the interaction p and q."""
    tests = (load_subgroups(run).unique(["subgroup_variable", "feature"], maintain_order=True)
             .filter(pl.col("p_interaction").is_not_null()))
    labels = {f: feature_label(f, c) for f, c in zip(tests["feature"], tests["factor"])}
    frame = tests.select(
        pl.col("subgroup_variable").replace(VARIABLE_LABELS).alias("by"),
        pl.col("feature").replace(labels).alias("factor"),
        "unit", "p_interaction", "q_interaction")
    return ShownTable(frame, "Interaction tests: is the association the same in every subgroup? "
                             "(Wald test, subject-clustered; q: Benjamini–Hochberg across all "
                             "tests.)")


__all__ = ["VARIABLES", "cohort_section_table", "hour_figure", "hour_frame", "load_cohort",
           "pain_figure",
           "load_subgroups", "subgroup_forest", "subgroup_prose", "subgroup_sentences",
           "subgroup_tests_table"]
