"""Figures for the notebooks and report (matplotlib + seaborn), each a pure function returning a
``Figure`` from frames, with labelled axes and units.

Aggregate figures are drawn from disclosure-controlled tables, never from raw counts, so that a
picture cannot show what a table suppresses.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib as mpl
import numpy as np
import polars as pl
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from pipeline.report.sentences import feature_label, model_label

#: One look and one name per model in every figure (names from ``sentences.MODEL_LABELS``, the
#: same as the effects table's headings).
MODEL_STYLE = {
    "within_subject": {"label": model_label("within_subject"), "color": "#1b6ca8",
                       "marker": "o"},
    "population": {"label": model_label("population"), "color": "#d9822b", "marker": "s"},
    "within_subject_lagged": {"label": model_label("within_subject_lagged"), "color": "#5a9e6f",
                              "marker": "^"},
    "within_subject_thresholds": {"label": model_label("within_subject_thresholds"),
                                  "color": "#8e6bb8", "marker": "v"},
}


def model_style(model: str) -> dict:
    return MODEL_STYLE.get(model, {"label": model_label(model), "color": "0.4", "marker": "D"})
IRR_TICKS = (0.25, 0.33, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0)
FLAG_COLOR = "#c0392b"


def use_report_style() -> None:
    """One look for every figure: white grid, readable font sizes, fixed size and resolution."""
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)
    mpl.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "figure.autolayout": False})


@dataclass(frozen=True)
class Picture:
    """A figure as a notebook shows it: a PNG (with alt text) and a one-line text form.

    Figures are built with matplotlib's object API (no pyplot), so nothing depends on the kernel's
    backend and no figure is left open between cells or tests.
    """

    figure: Figure
    alt: str

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", metadata={"Software": None})
        return buffer.getvalue()

    def _repr_png_(self):
        return self.png(), {"alt": self.alt}

    def __repr__(self) -> str:
        return f"[figure: {self.alt}]"


def show(figure: Figure, alt: str | None = None) -> Picture:
    """Wrap a figure for display; ``alt`` defaults to the figure's title."""
    if alt is None:
        title = figure._suptitle.get_text() if figure._suptitle is not None else ""
        alt = title or next((ax.get_title() for ax in figure.axes if ax.get_title()), "figure")
    return Picture(figure, alt)


def _log_irr_axis(ax, values: list[float], axis: str = "x") -> None:
    finite = [v for v in values if v is not None and np.isfinite(v) and v > 0]
    low, high = (min(finite + [0.8]), max(finite + [1.25])) if finite else (0.8, 1.25)
    low, high = low / 1.1, high * 1.1
    ticks = [t for t in IRR_TICKS if low <= t <= high]
    if axis == "x":
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.axvline(1.0, color="0.3", lw=1, ls="--", zorder=0)
    else:
        ax.set_yscale("log")
        ax.set_ylim(low, high)
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_yticklabels([f"{t:g}" for t in ticks])
        ax.axhline(1.0, color="0.3", lw=1, ls="--", zorder=0)


def forest_plot(effects: pl.DataFrame, models: tuple[str, ...] = ("within_subject", "population")
                ) -> Figure:
    """IRRs with 95% CIs for every feature, one marker per model side by side, log IRR axis."""
    use_report_style()
    shown = effects.filter(pl.col("model").is_in(models))
    features = list(dict.fromkeys(shown["feature"].to_list()))
    units = dict(zip(shown["feature"], shown["unit"]))
    factors = dict(zip(shown["feature"], shown["factor"])) if "factor" in shown.columns else {}
    fig = Figure(figsize=(8.5, 0.5 * max(len(features), 1) + 1.8))
    ax = fig.subplots()
    offsets = np.linspace(-0.18, 0.18, len(models)) if len(models) > 1 else [0.0]
    all_values: list[float] = []
    for model, offset in zip(models, offsets):
        style = model_style(model)
        rows = {r["feature"]: r for r in shown.filter(pl.col("model") == model).to_dicts()}
        ys, irr, lo, hi = [], [], [], []
        for i, feature in enumerate(features):
            r = rows.get(feature)
            if r is None or r["irr"] is None or math.isnan(r["irr"]):
                ax.text(1.0, i + offset, "  no estimate", va="center", fontsize=8, color="0.45")
                continue
            ys.append(i + offset)
            irr.append(r["irr"])
            lo.append(r["ci_low"])
            hi.append(r["ci_high"])
        all_values += irr + lo + hi
        if ys:
            ax.errorbar(irr, ys, xerr=[np.subtract(irr, lo), np.subtract(hi, irr)], fmt=style["marker"],
                        color=style["color"], ecolor=style["color"], capsize=3, ms=6, lw=1.5,
                        label=style["label"])
    _log_irr_axis(ax, all_values, "x")
    ax.set_yticks(range(len(features)))
    ax.set_yticklabels([f"{feature_label(f, factors.get(f))} ({units.get(f) or 'unit'})"
                        for f in features])
    ax.set_ylim(len(features) - 0.5, -0.5)
    ax.set_xlabel("Incidence rate ratio, 95% CI (log scale; <1 fewer cramps, >1 more cramps)")
    ax.set_title("Each factor's association with daily cramp frequency")
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


#: Accepted spellings of the dose-response columns (``dose_response.csv``).
DOSE_ALIASES = {
    "x": ("value", "x", "exposure", "level"),
    "irr": ("irr",),
    "ci_low": ("ci_low", "lower"),
    "ci_high": ("ci_high", "upper"),
    "reference": ("reference", "reference_x", "reference_value"),
}


def dose_frame(dose_response: pl.DataFrame) -> pl.DataFrame:
    """``dose_response.csv`` with canonical column names (feature, x, irr, ci_low, ci_high, ...)."""
    rename = {}
    for canonical, aliases in DOSE_ALIASES.items():
        found = next((a for a in aliases if a in dose_response.columns), None)
        if found is None and canonical != "reference":
            raise KeyError(f"dose_response.csv has no column for {canonical!r} "
                           f"(looked for {', '.join(aliases)})")
        if found is not None and found != canonical:
            rename[found] = canonical
    return dose_response.rename(rename)


def dose_response_plot(dose_response: pl.DataFrame, units: dict[str, str] | None = None,
                       model: str | None = "within_subject") -> Figure:
    """One panel per continuous feature: the spline IRR curve with its pointwise 95% band."""
    use_report_style()
    frame = dose_frame(dose_response)
    if model is not None and "model" in frame.columns and model in frame["model"].to_list():
        frame = frame.filter(pl.col("model") == model)
    features = list(dict.fromkeys(frame["feature"].to_list()))
    ncols = 3
    nrows = max(1, math.ceil(len(features) / ncols))
    fig = Figure(figsize=(11, 3.0 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(features):]:
        ax.set_visible(False)
    for ax, feature in zip(axes.flat, features):
        part = frame.filter(pl.col("feature") == feature).sort("x")
        x = part["x"].to_numpy()
        ax.fill_between(x, part["ci_low"].to_numpy(), part["ci_high"].to_numpy(),
                        color=MODEL_STYLE["within_subject"]["color"], alpha=0.2, lw=0)
        ax.plot(x, part["irr"].to_numpy(), color=MODEL_STYLE["within_subject"]["color"], lw=2)
        _log_irr_axis(ax, part["ci_low"].to_list() + part["ci_high"].to_list(), "y")
        if "reference" in part.columns and part["reference"].drop_nulls().len():
            ref = part["reference"].drop_nulls()[0]
            ax.axvline(ref, color="0.5", lw=1, ls=":")
        unit = (units or {}).get(feature) or ("unit" in part.columns and part["unit"][0]) or ""
        ax.set_xlabel(axis_label(feature, unit))
        ax.set_ylabel("IRR vs reference")
        ax.set_title(feature_label(feature), fontsize=10)
    fig.suptitle(f"Dose-response, {model_label(model or 'within_subject')}: cramp rate relative "
                 "to the reference value (dotted line), 95% band", fontsize=11)
    fig.tight_layout()
    return fig


def axis_label(feature: str, unit: str | None) -> str:
    """"Magnesium (mg)": the feature's label and the unit its values are in, stated once
    (``per 100 mg`` -> ``mg``)."""
    unit_text = str(unit).removeprefix("per ").lstrip("0123456789. ") if unit else ""
    return feature_label(feature) + (f" ({unit_text})" if unit_text else "")


def calibration_plot(calibration: pl.DataFrame) -> Figure:
    """Observed versus predicted episodes per subject-day by decile of predicted rate, per model.

    ``calibration`` has columns ``model, decile, predicted, observed`` (mean episodes per day).
    """
    use_report_style()
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    present = set(calibration["model"].to_list())
    for model in [m for m in MODEL_STYLE if m in present] + sorted(present - set(MODEL_STYLE)):
        part = calibration.filter(pl.col("model") == model).sort("decile")
        style = model_style(model)
        ax.plot(part["predicted"].to_numpy(), part["observed"].to_numpy(), marker=style["marker"],
                color=style["color"], label=style["label"], lw=1)
    top = float(max(calibration["predicted"].max() or 0, calibration["observed"].max() or 0)) * 1.05
    ax.plot([0, top or 1], [0, top or 1], color="0.4", ls="--", lw=1, label="perfect calibration")
    ax.set_xlabel("Predicted episodes per subject-day (decile mean)")
    ax.set_ylabel("Observed episodes per subject-day")
    ax.set_title("Calibration by decile of predicted rate")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


#: How a period the diary covers only in part is drawn (``coverage`` != "full").
PARTIAL_LABEL = "partial period"


def counts_over_time_plot(disclosed: pl.DataFrame, *, time: str = "period", group: str = "rule_id",
                          count: str = "episodes", title: str = "") -> Figure:
    """Disclosure-controlled counts per group over time; suppressed counts are gaps, not zeros.

    A period whose ``coverage`` is not "full" (the first or last, cut by the diary's dates) is
    drawn with a hollow marker on a dotted line, and the legend says so: its lower count is the
    calendar, not fewer red flags.
    """
    from matplotlib.lines import Line2D

    use_report_style()
    fig = Figure(figsize=(9, 3.8))
    ax = fig.subplots()
    groups = sorted(disclosed[group].unique().to_list())
    palette = sns.color_palette("colorblind", max(len(groups), 1))
    has_coverage = "coverage" in disclosed.columns
    any_partial = False
    for color, g in zip(palette, groups):
        part = disclosed.filter(pl.col(group) == g).sort(time)
        x = part[time].to_list()
        y = part[count].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        partial = ((part["coverage"] != "full").to_numpy() if has_coverage
                   else np.zeros(len(y), bool))
        if partial.any():
            any_partial = True
            ax.plot(x, y, ls=":", lw=1.2, color=color)
            drawn = partial & ~np.isnan(y)  # a suppressed count stays a gap
            ax.scatter([v for v, p in zip(x, drawn) if p], y[drawn], s=28, marker="o",
                       facecolors="white", edgecolors=[color], linewidths=1.5, zorder=3,
                       label="_partial")
        ax.plot(x, np.where(partial, np.nan, y), marker="o", ms=4, lw=1.5, color=color, label=g)
    periods = sorted(disclosed[time].unique().to_list())
    if 0 < len(periods) <= 24:
        ax.set_xticks(periods)  # one tick per period start, not matplotlib's mid-period dates
    ax.set_xlabel("Period starting")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("Flagged episodes")
    suppressed = disclosed[count].null_count() > 0  # only the shareable report suppresses
    ax.set_title(title or "Flagged episodes per rule over time"
                 + (" (suppressed counts not drawn)" if suppressed else ""))
    if groups:
        handles, labels = ax.get_legend_handles_labels()
        if any_partial:
            handles.append(Line2D([], [], ls=":", color="0.35", marker="o", mfc="white",
                                  mec="0.35"))
            labels.append(PARTIAL_LABEL)
        ax.legend(handles, labels, frameon=False, fontsize=8, ncol=1, loc="upper left",
                  bbox_to_anchor=(1.0, 1.0))
    if any_partial:
        fig.text(0.01, 0.01, "Hollow markers on dotted lines: a period the diary covers only in "
                 "part (its count is not comparable with the others).", fontsize=8, color="0.35")
    fig.autofmt_xdate()
    fig.tight_layout(rect=(0, 0.05 if any_partial else 0, 1, 1))
    return fig


def bar_plot(disclosed: pl.DataFrame, category: str, count: str, *, xlabel: str, ylabel: str,
             title: str) -> Figure:
    """A bar chart of a disclosure-controlled count per category (suppressed bars left empty)."""
    use_report_style()
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    values = disclosed[count].cast(pl.Float64).fill_null(0.0).to_numpy()
    labels = disclosed[category].cast(pl.String).to_list()
    ax.bar(labels, values, color=MODEL_STYLE["within_subject"]["color"])
    for i, v in enumerate(disclosed[count].to_list()):
        if v is None:
            ax.text(i, 0, "≤7", ha="center", va="bottom", fontsize=8, color="0.4")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def subject_timeline_plot(days: pl.DataFrame, episodes: pl.DataFrame, flags: pl.DataFrame,
                          factors: list[str], *, subject_id: str = "",
                          units: dict[str, str] | None = None) -> Figure:
    """One subject over time: episodes per day (flagged ones marked), then one row per factor.

    ``days`` has ``date`` and the factor columns; ``episodes`` has ``started_at``; ``flags`` has
    ``started_at`` and ``rule_id`` (the subject's rows of ``red_flags.csv``).
    """
    use_report_style()
    shown = [f for f in factors if f in days.columns and days[f].drop_nulls().len() > 0]
    fig = Figure(figsize=(10, 1.9 * (1 + len(shown)) + 0.6))
    axes = fig.subplots(1 + len(shown), 1, sharex=True, squeeze=False)
    axes = axes[:, 0]
    per_day = (episodes.with_columns(pl.col("started_at").dt.date().alias("date"))
               .group_by("date").agg(pl.len().alias("n")).sort("date"))
    ax = axes[0]
    ax.bar(per_day["date"].to_list(), per_day["n"].to_list(), width=0.9, color="0.35",
           label="episodes")
    if flags.height:
        # One marker per flagged day; which rules fired is in the table beside the figure
        # (labels here would overlap on busy weeks).
        flagged = (flags.with_columns(pl.col("started_at").dt.date().alias("date"))
                   .select("date").unique().sort("date"))
        top = max(per_day["n"].max() or 1, 1)
        ax.scatter(flagged["date"].to_list(), [top + 0.8] * flagged.height, marker="v", s=60,
                   color=FLAG_COLOR, zorder=3, label="day with a flagged episode")
        ax.set_ylim(0, top + 1.6)
    ax.set_ylabel("Episodes")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    logged = days["date"].to_list()
    ax.plot(logged, [0] * len(logged), "|", color="0.6", ms=6)
    for ax, f in zip(axes[1:], shown):
        part = days.select("date", f).sort("date")
        y = part[f].cast(pl.Float64).to_numpy()
        if days.schema[f] == pl.Boolean:
            ax.plot(part["date"].to_list(), y, marker=".", lw=0, color="#1b6ca8")
            ax.set_yticks([0, 1])
            ax.set_yticklabels(["no", "yes"])
            ax.set_ylim(-0.4, 1.4)
        else:
            ax.plot(part["date"].to_list(), y, marker=".", lw=1, color="#1b6ca8")
        unit = (units or {}).get(f, "")
        ax.set_ylabel(feature_label(f) + (f"\n({unit})" if unit else ""), fontsize=8)
    axes[-1].set_xlabel("Date (ticks on the top row: logged days)")
    fig.suptitle(f"Subject {subject_id}: daily factors and cramp episodes" if subject_id
                 else "Daily factors and cramp episodes", fontsize=11)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig
