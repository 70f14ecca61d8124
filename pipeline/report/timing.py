"""The report's "Timing" section: lag curves, cumulative beside same-day, and plain sentences.

Everything is a pure function of ``lags.csv``, ``effects.csv`` and ``diagnostics.json`` (plus
``refit``, which refits the lag model from the run's store with other choices). The wording names
an onset delay (the lag with the largest effect) only when the joint Wald test rejects a flat lag
curve at ``SIGNIFICANCE``; otherwise it says the data cannot tell the timing apart:

    On the day after 30 more minutes of exercise, the same person had 12% more cramps (95% CI 9%
    to 16%); over the day itself and the three days after, 30% more in all (95% CI 21% to 40%).
    The effect is largest one day after (joint test of a flat lag curve p < 0.001).

Counts of subject-days in the prose go through the disclosure policy (``disclose_text``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from pipeline.disclosure import disclose_text
from pipeline.report.load import EFFECTS_DTYPES, RunOutputs
from pipeline.report.sentences import _change, _digits, _interval, exposure_phrase, \
    feature_label
from pipeline.report.tables import ShownTable

SIGNIFICANCE = 0.05
LAGS_DTYPES = {**{k: v for k, v in EFFECTS_DTYPES.items() if k != "q_value"}, "lag": pl.String}
BAND_COLOR = "#1b6ca8"


def read_lags(run: RunOutputs) -> pl.DataFrame:
    """``lags.csv`` of the run (an empty frame for a run written before the lag model)."""
    path = Path(run.path) / "lags.csv"
    if not path.is_file():
        return pl.DataFrame(schema=LAGS_DTYPES)
    return pl.read_csv(path, schema_overrides=LAGS_DTYPES, infer_schema_length=None)


def per_lag(lags: pl.DataFrame) -> pl.DataFrame:
    """The estimated per-lag rows, with ``lag_days`` as an integer."""
    return (lags.filter(~pl.col("lag").str.contains("-") & pl.col("irr").is_not_null())
            .with_columns(pl.col("lag").cast(pl.Int64).alias("lag_days")))


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten")


def _days(n: int) -> str:
    """"one day", "three days", "14 days": lags in words up to ten, as prose reads (and so that
    the disclosure scan, which looks for small counts of days, does not take a lag for one)."""
    number = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
    return f"{number} day" + ("" if n == 1 else "s")


def _when(lag: int, exposure: str) -> str:
    if lag == 0:
        return f"On days with {exposure}"
    if lag == 1:
        return f"On the day after {exposure}"
    return f"{_days(lag).capitalize()} after {exposure}"


def _window(L: int) -> str:
    return "the day itself" if L == 0 else (
        f"the day itself and the {'day' if L == 1 else _days(L)} after")


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def onset(rows: pl.DataFrame, test: dict | None) -> int | None:
    """The lag with the largest effect, when the joint test rejects a flat curve; else None."""
    if not test or not (test["flat_lag_curve"]["p_value"] < SIGNIFICANCE):
        return None
    log_irr = np.abs(np.log(rows["irr"].to_numpy()))
    return int(rows["lag_days"][int(np.argmax(log_irr))])


def timing_sentence(feature: str, lags: pl.DataFrame, tests: dict) -> str:
    """The plain sentences of one feature (``lags``: its rows of lags.csv)."""
    rows = per_lag(lags).sort("lag_days")
    first = lags.row(0, named=True)
    label = feature_label(feature, first["factor"])
    if rows.is_empty():
        note = (first.get("note") or "no reason recorded").removeprefix("not estimated: ")
        return f"{label}: no timing estimate ({note.rstrip('.')})."
    exposure = exposure_phrase(feature, first["unit"], first["factor"])
    test = tests.get(feature)
    peak = onset(rows, test)
    lead = rows.row(rows["lag_days"].to_list().index(peak if peak is not None else
                                                     min(1, rows.height - 1)), named=True)
    cum = lags.filter(pl.col("lag").str.contains("-")).row(0, named=True)
    L = int(cum["lag"].split("-")[1])
    d = _digits(lead["irr"])
    text = (f"{_when(lead['lag_days'], exposure)}, the same person had {_change(lead['irr'], d)} "
            f"cramps ({_interval(lead['irr'], lead['ci_low'], lead['ci_high'], d)})")
    if cum["irr"] is not None and L > 0:
        dc = _digits(cum["irr"])
        text += (f"; over {_window(L)}, {_change(cum['irr'], dc)} in all "
                 f"({_interval(cum['irr'], cum['ci_low'], cum['ci_high'], dc)})")
    text += "."
    if test is None:
        return text
    flat = test["flat_lag_curve"]["p_value"]
    if peak is None:
        return text + (f" The data cannot tell the timing apart (joint test of a flat lag curve "
                       f"{_p(flat)}).")
    when = "on the day itself" if peak == 0 else f"{_days(peak)} after"
    return text + f" The effect is largest {when} (joint test of a flat lag curve {_p(flat)})."


def timing_sentences(lags: pl.DataFrame, diagnostics: dict) -> "Prose":
    """One bullet per factor, in the order of lags.csv."""
    from pipeline.report.views import Prose

    if lags.is_empty():
        return Prose("This run has no lag model (lags.csv is missing).")
    tests = (diagnostics.get("lags") or {}).get("joint_tests", {})
    features = lags["feature"].unique(maintain_order=True).to_list()
    return Prose("\n".join(
        "- " + timing_sentence(f, lags.filter(pl.col("feature") == f), tests) for f in features))


def design_note(diagnostics: dict) -> "Prose":
    """How the lag model was fitted: strata, adjustment, lags, days dropped for a gap."""
    from pipeline.report.views import Prose

    d = diagnostics.get("lags") or {}
    if not d:
        return Prose("No lag model in this run.")
    a = d["analysis"]
    dropped = d["n_dropped_window_incomplete"] + d["n_dropped_value_missing"]
    from pipeline.models.lags import NOT_LAGGED

    lagged = {k: v for k, v in d["max_lag_days"].items() if k not in NOT_LAGGED}
    by_lag: dict[int, list[str]] = {}
    for k, v in lagged.items():
        by_lag.setdefault(v, []).append(k)
    common = max(by_lag, key=lambda v: len(by_lag[v])) if by_lag else 0
    others = "".join(f", {', '.join(feature_label(k) for k in by_lag[v])} up to {_days(v)}"
                     for v in sorted(by_lag) if v != common)
    same_day = [feature_label(k) for k in d["max_lag_days"] if k in NOT_LAGGED]
    subset = d.get("subset")
    text = (f"Fitted with {a['description']} (robust errors clustered by subject), the day "
            f"itself and up to {_days(common)} before it{others}"
            + (f" ({', '.join(same_day)}: the same day only, as it already covers the previous "
               "30 days)" if same_day else "") + ". Only days whose whole lag window was "
            f"logged enter: {dropped:,} of {d['n_subject_days_panel']:,} subject-days were left "
            f"out ({d['n_dropped_window_incomplete']:,} subject-days because the window reaches a "
            f"day without a diary entry or the time before the first one, "
            f"{d['n_dropped_value_missing']:,} subject-days for a missing value in the window). A missing day is never counted as zero.")
    if subset:
        text += f" To bound run time the model used {subset['n_subjects']:,} of " \
                f"{subset['of_subjects']:,} subjects (chosen by a stable hash of their id)."
    return Prose(disclose_text(text))


def lag_curve_plot(lags: pl.DataFrame, columns: int = 4) -> Figure:
    """IRR by lag with its pointwise 95% band, one small panel per factor (log IRR scale)."""
    from pipeline.report.figures import _log_irr_axis, use_report_style

    use_report_style()
    rows = per_lag(lags)
    features = rows["feature"].unique(maintain_order=True).to_list()
    n = max(len(features), 1)
    ncols = min(columns, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(2.6 * ncols + 0.6, 2.2 * nrows + 0.8))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax in axes.ravel()[len(features):]:
        ax.set_visible(False)
    for ax, feature in zip(axes.ravel(), features):
        r = rows.filter(pl.col("feature") == feature).sort("lag_days")
        x = r["lag_days"].to_numpy()
        irr, low, high = (r[c].to_numpy() for c in ("irr", "ci_low", "ci_high"))
        if x.size > 1:
            ax.fill_between(x, low, high, color=BAND_COLOR, alpha=0.2, linewidth=0)
        else:  # a factor modelled on the same day only: a point with its interval
            ax.errorbar(x, irr, yerr=[irr - low, high - irr], color=BAND_COLOR, capsize=3)
        ax.plot(x, irr, color=BAND_COLOR, marker="o", markersize=3)
        ax.set_title(f"{feature_label(feature, r['factor'][0])} ({r['unit'][0]})", fontsize=9)
        ax.set_xticks(x if x.size <= 8 else x[::max(1, x.size // 6)])
    values = rows["ci_low"].to_list() + rows["ci_high"].to_list()
    for ax in axes.ravel()[:len(features)]:
        _log_irr_axis(ax, values, axis="y")  # shared: the panels compare at a glance
    for ax in axes[-1]:
        ax.set_xlabel("days before the day at risk (lag)")
    for ax in axes[:, 0]:
        ax.set_ylabel("IRR (log scale)")
    fig.suptitle("Lag curves: cramp rate ratio by days since the exposure, 95% band")
    fig.tight_layout()
    return fig


def cumulative_table(lags: pl.DataFrame, effects: pl.DataFrame) -> ShownTable:
    """Per factor: the same-day estimate (effects.csv, within_subject) beside the lag model's
    lag 0 and its cumulative over lags 0..L."""
    def fmt(irr, low, high):
        return None if irr is None else f"{irr:.2f} ({low:.2f}-{high:.2f})"

    same = {r["feature"]: fmt(r["irr"], r["ci_low"], r["ci_high"])
            for r in effects.filter(pl.col("model") == "within_subject").iter_rows(named=True)}
    out = []
    for feature in lags["feature"].unique(maintain_order=True).to_list():
        rows = lags.filter(pl.col("feature") == feature)
        lag0 = rows.filter(pl.col("lag") == "0").row(0, named=True)
        cum = rows.filter(pl.col("lag").str.contains("-")).row(0, named=True)
        out.append({"factor": feature_label(feature, lag0["factor"]), "unit": lag0["unit"],
                    "same day only (effects.csv)": same.get(feature),
                    "lag 0, adjusted for lags": fmt(lag0["irr"], lag0["ci_low"], lag0["ci_high"]),
                    "lags": cum["lag"],
                    "cumulative": fmt(cum["irr"], cum["ci_low"], cum["ci_high"])})
    frame = pl.DataFrame(out, schema={c: pl.String for c in (
        "factor", "unit", "same day only (effects.csv)", "lag 0, adjusted for lags", "lags",
        "cumulative")}, orient="row")
    return ShownTable(frame, "IRR (95% CI): the same-day model beside the lag model's same-day "
                             "term and its cumulative effect (one unit more on every day of the "
                             "window).", null_labels={c: "not estimated" for c in frame.columns})


def refit(run: RunOutputs, *, max_lag_days: int | None = None, strata: str | None = None,
          adjust: tuple[str, ...] | None = None) -> pl.DataFrame:
    """Refit the lag model from the run's store with other ``[analysis]`` choices (validated as
    in dataset.toml); returns the rows of lags.csv it would write. Unset choices keep the run's."""
    from pipeline.analysis_config import AnalysisConfig, parse_analysis
    from pipeline.errors import UserError
    from pipeline.features import build_panel
    from pipeline.models.lags import fit_lags
    from pipeline.store import Store

    if run.store_dir is None:
        raise UserError("the run's store was not found: pass store_dir to refit")
    store = Store(run.store_dir)
    base = AnalysisConfig(**{k: (tuple(v) if k == "adjust" else v) for k, v in
                             run.diagnostics.get("analysis", {}).items()
                             if k in ("max_lag_days", "strata", "adjust")})
    table = {"max_lag_days": max_lag_days if max_lag_days is not None else base.max_lag_days,
             "strata": strata or base.strata,
             "adjust": list(adjust if adjust is not None else base.adjust)}
    analysis = parse_analysis({"analysis": table}, "refit")  # the same validation as the file
    custom = _custom_factors(run)
    injuries = any(f.table == "injuries" for f in store.manifest.files)
    panel = build_panel(store.read("daily"), store.read("episodes"),
                        store.read("injuries") if injuries else None, custom_factors=custom)
    return fit_lags(panel, custom_factors=custom, analysis=analysis).lags


def _custom_factors(run: RunOutputs):
    """The run's custom factor declarations (kept in diagnostics.json by the lag model)."""
    from pipeline.schema import CustomFactor

    declared = (run.diagnostics.get("lags") or {}).get("custom_factors", [])
    return tuple(CustomFactor(**c) for c in declared)
