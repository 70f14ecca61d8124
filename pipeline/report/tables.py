"""The tables the notebooks show: built from a run's outputs, disclosure-controlled where they are
aggregates, and displayed with deterministic text and HTML (so nbval can compare them).

Every table a notebook shows goes through :func:`aggregate_table` (research aggregates: counts
suppressed and rounded by :mod:`pipeline.disclosure`) or :func:`follow_up_table` (red-flag follow-up:
never suppressed, labelled as listing pseudonymous ids). With ``tables_dir`` set, each is also written
as CSV under ``aggregate/`` or ``follow_up/``, so a test can scan exactly what the report shows.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline import csvsafe
from pipeline.disclosure import DEFAULT_POLICY, DisclosurePolicy, disclose_counts, disclose_text
from pipeline.report.sentences import feature_label, model_label

NULL_TEXT = "—"
MODEL_ORDER = ("within_subject", "population", "within_subject_lagged",
               "within_subject_thresholds")
SEVERITY_ORDER = ("red_flag", "advisory")
#: Rows a follow-up list shows in the report (most severe and most recent first); every row is in
#: the CSV beside it. 10,000 subjects flag about 180,000 episodes: a page holding them all is
#: 26 MB and takes a browser 46 s to show, so nobody would read past the first screen anyway.
FOLLOW_UP_ROWS = 100
#: No suppression. The care-team report lists every flagged subject by id, so suppressing its
#: counts protects no one and would misstate red flags (293 shown as 295); disclosure control
#: applies to the shareable report (``identifiers=False``) only.
EXACT_COUNTS = DisclosurePolicy(threshold=0, rounding_multiple=1)


def disclosure_policy(identifiers: bool) -> DisclosurePolicy:
    """The care-team report (identifiers) shows exact counts; the shareable one applies
    :data:`~pipeline.disclosure.DEFAULT_POLICY` (1–7 suppressed, others rounded to 5)."""
    return EXACT_COUNTS if identifiers else DEFAULT_POLICY


def _cell(value, column: str, null_labels: dict[str, str]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return null_labels.get(column, NULL_TEXT)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


@dataclass(frozen=True)
class ShownTable:
    """A frame as a notebook shows it: a caption, fixed formatting, nulls spelled out.

    In HTML the caption is a paragraph above the table (it wraps to the page, not to the table's
    width) and numeric columns are right-aligned under right-aligned headers.
    """

    frame: pl.DataFrame
    caption: str
    null_labels: dict[str, str] = field(default_factory=dict)
    css_class: str = "cramp-table"
    #: Columns kept on one line (ids, dates); other text may wrap.
    nowrap: tuple[str, ...] = ()
    #: Text columns that hold numbers (formatted as text) and so align right, like numeric ones.
    numeric_text: tuple[str, ...] = ()
    #: Columns of long unbroken tokens (episode ids) that may break anywhere to fit the page.
    break_anywhere: tuple[str, ...] = ()

    def _rows(self) -> list[list[str]]:
        return [[_cell(v, c, self.null_labels) for c, v in zip(self.frame.columns, row)]
                for row in self.frame.iter_rows()]

    def _text_body(self) -> list[str]:
        header = list(self.frame.columns)
        rows = self._rows()
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
        body = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
        if not rows:
            body.append("(no rows)")
        return body

    def __repr__(self) -> str:
        return "\n".join([self.caption] + self._text_body())

    def _table_html(self) -> str:
        esc = html.escape
        columns = self.frame.columns
        numeric = [t.is_numeric() or c in self.numeric_text
                   for c, t in zip(columns, self.frame.dtypes)]
        classes = [" ".join(k for k, on in (("num", n), ("nw", c in self.nowrap),
                                            ("ba", c in self.break_anywhere)) if on)
                   for c, n in zip(columns, numeric)]
        attr = [f' class="{k}"' if k else "" for k in classes]
        # "latest_episode_id" reads, and wraps, as "latest episode id" (the CSV keeps the name).
        head = "".join(f"<th{a}>{esc(c.replace('_', ' '))}</th>" for c, a in zip(columns, attr))
        body = "".join(
            "<tr>" + "".join(f"<td{a}>{esc(v)}</td>" for v, a in zip(row, attr)) + "</tr>"
            for row in self._rows()
        )
        if not body:
            body = f'<tr><td colspan="{max(1, self.frame.width)}">(no rows)</td></tr>'
        return (f'<div class="table-scroll"><table class="{self.css_class}">'
                f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")

    def _repr_html_(self) -> str:
        kind = " follow-up" if "follow-up" in self.css_class else ""
        return (f'<div class="cramp-shown"><p class="table-caption{kind}">'
                f"{html.escape(self.caption)}</p>{self._table_html()}</div>")


@dataclass(frozen=True)
class TableGroup:
    """Several tables under one caption, each with a heading (the effects table, one per model):
    every row is shown, none in a scroll box."""

    caption: str
    parts: tuple[tuple[str, ShownTable], ...]

    def __repr__(self) -> str:
        lines = [self.caption]
        for heading, table in self.parts:
            lines += ["", heading, *table._text_body()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        parts = "".join(f'<h3 class="table-heading">{esc(h)}</h3>{t._table_html()}'
                        for h, t in self.parts)
        return (f'<div class="cramp-shown"><p class="table-caption">{esc(self.caption)}</p>'
                f"{parts}</div>")


def _write(tables_dir: Path | str | None, kind: str, name: str, frame: pl.DataFrame) -> None:
    if tables_dir is not None:
        csvsafe.write_csv(Path(tables_dir) / kind / f"{name}.csv", frame)


def counts_note(policy: DisclosurePolicy) -> str:
    """What a table's caption says about its counts."""
    if policy == EXACT_COUNTS:
        return (" Counts are exact (care-team report; the shareable report suppresses counts of "
                f"1–{DEFAULT_POLICY.threshold} and rounds others to the nearest "
                f"{DEFAULT_POLICY.rounding_multiple}).")
    return (f" Counts of 1–{policy.threshold} shown as {policy.suppressed_label}; others rounded "
            f"to the nearest {policy.rounding_multiple}.")


def aggregate_table(
    name: str,
    frame: pl.DataFrame,
    count_columns: list[str],
    caption: str,
    *,
    tables_dir: Path | str | None = None,
    policy: DisclosurePolicy = DEFAULT_POLICY,
) -> ShownTable:
    """A research aggregate: counts suppressed (1–threshold) and rounded before anyone sees them,
    unless ``policy`` is :data:`EXACT_COUNTS` (the care-team report)."""
    disclosed = disclose_counts(frame, count_columns, policy)
    _write(tables_dir, "aggregate", name, disclosed)
    labels = {c: policy.suppressed_label for c in count_columns}
    return ShownTable(disclosed, caption + counts_note(policy), labels)


def follow_up_table(
    name: str, frame: pl.DataFrame, caption: str, *, tables_dir: Path | str | None = None,
    top: int | None = FOLLOW_UP_ROWS, full_list: str | None = None, nowrap: tuple[str, ...] = (),
) -> ShownTable:
    """A red-flag follow-up list: pseudonymous ids, never suppressed, labelled as such.

    ``frame`` comes in the order a clinician works through it; the report shows its first ``top``
    rows and says where every row is: ``full_list`` (a file beside the report), and the whole
    frame is written to ``tables_dir/follow_up/NAME.csv``.
    """
    _write(tables_dir, "follow_up", name, frame)
    text = "For clinical follow-up; lists pseudonymous subject ids. " + caption
    if top is not None and frame.height > top:
        where = full_list or (f"report_tables/follow_up/{name}.csv" if tables_dir is not None
                              else "the run directory")
        text += (f" Showing the first {top:,} of {frame.height:,} rows; every row is in "
                 f"{where}.")
        frame = frame.head(top)
    ids = tuple(c for c in frame.columns if c.endswith("episode_id"))
    return ShownTable(frame, text, css_class="cramp-table follow-up", nowrap=nowrap,
                      break_anywhere=ids)


# --- effects --------------------------------------------------------------------------------------

#: Decimals of an IRR in a table: at least this many, at most ``MAX_IRR_DIGITS``.
MIN_IRR_DIGITS = 2
MAX_IRR_DIGITS = 4


def ci_digits(irr: float, low: float, high: float) -> int:
    """Decimals for an IRR and its interval, chosen from the interval's width: the fewest (at least
    two) at which estimate and bounds read as three different numbers and a bound other than 1
    does not read as 1 (so "1.00 (1.00 to 1.01)" cannot hide which side of 1 the interval lies)."""
    for digits in range(MIN_IRR_DIGITS, MAX_IRR_DIGITS):
        shown = [f"{v:.{digits}f}" for v in (low, irr, high)]
        one = f"{1:.{digits}f}"
        bounds_off_one = all(s != one or v == 1 for s, v in ((shown[0], low), (shown[2], high)))
        if len(set(shown)) == 3 and bounds_off_one:
            return digits
    return MAX_IRR_DIGITS


def _fmt_ci(irr, low, high) -> str | None:
    """``1.04 (1.03 to 1.05)``; a narrow interval gets more decimals: ``1.041 (1.040 to 1.042)``."""
    if irr is None or low is None or high is None or any(math.isnan(v) for v in (irr, low, high)):
        return None
    d = ci_digits(irr, low, high)
    return f"{irr:.{d}f} ({low:.{d}f} to {high:.{d}f})"


def _fmt_p(p) -> str | None:
    if p is None or math.isnan(p):
        return None
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def effects_frame(effects: pl.DataFrame) -> pl.DataFrame:
    """The effects table as a clinician reads it: within-subject first, one row per model and
    feature, IRR with its 95% CI as text, counts kept as integers for disclosure control."""
    rank = {m: i for i, m in enumerate(MODEL_ORDER)}
    rows = effects.with_row_index("_order").with_columns(
        pl.col("model").replace_strict(rank, default=len(rank), return_dtype=pl.Int64)
        .alias("_model_rank")
    ).sort("_model_rank", "_order")
    return pl.DataFrame({
        "model": rows["model"],
        "factor": [feature_label(f, c) for f, c in zip(rows["feature"], rows["factor"])],
        "unit": rows["unit"],
        "IRR (95% CI)": [_fmt_ci(*v) for v in rows.select("irr", "ci_low", "ci_high").iter_rows()],
        "p": [_fmt_p(p) for p in rows["p_value"]],
        "q (BH)": [_fmt_p(q) for q in rows["q_value"]],
        "subjects": rows["n_subjects"],
        "subject-days": rows["n_subject_days"],
        "episodes": rows["n_episodes"],
        "note": rows["note"],
    }, schema_overrides={"subjects": pl.Int64, "subject-days": pl.Int64, "episodes": pl.Int64})


def footnote_notes(frame: pl.DataFrame, column: str = "note") -> tuple[pl.DataFrame, str]:
    """Replace repeated long notes by markers ``[1]``, ``[2]``… and return the footnote text."""
    notes = [n for n in dict.fromkeys(frame[column].to_list()) if n]
    marker = {n: f"[{i}]" for i, n in enumerate(notes, start=1)}
    marked = frame.with_columns(pl.col(column).replace_strict(marker, default=None,
                                                              return_dtype=pl.String))
    text = " ".join(f"{marker[n]} {n.rstrip('.')}." for n in notes)
    return marked, text


def effects_table(effects: pl.DataFrame, *, tables_dir=None,
                  policy: DisclosurePolicy = DEFAULT_POLICY) -> TableGroup:
    """The effects table, one table per model under its name (every row shown, within-subject
    first): estimates as fitted, the group sizes disclosure-controlled by ``policy``, long notes as
    footnotes. The CSV written to ``tables_dir`` holds every model's rows."""
    frame = effects_frame(effects)
    notes = {n: disclose_text(n, policy) for n in frame["note"].drop_nulls().unique()}
    frame = frame.with_columns(pl.col("note").replace_strict(notes, default=None,
                                                             return_dtype=pl.String))
    frame, notes = footnote_notes(frame)
    shown = aggregate_table(
        "effects", frame, ["subjects", "subject-days", "episodes"],
        "Incidence rate ratios (IRR) per documented unit, 95% CIs from subject-clustered robust "
        "errors; q is the Benjamini–Hochberg false discovery rate within each model.",
        tables_dir=tables_dir, policy=policy,
    )
    caption = f"{shown.caption} Notes: {notes}" if notes else shown.caption
    models = list(dict.fromkeys(shown.frame["model"].to_list()))
    parts = tuple(
        (model_label(m), ShownTable(shown.frame.filter(pl.col("model") == m).drop("model"),
                                    model_label(m), shown.null_labels, "cramp-table effects"))
        for m in models)
    return TableGroup(caption, parts)


# --- data quality ---------------------------------------------------------------------------------

def ingest_counts(summary: dict) -> pl.DataFrame:
    """Rows read, accepted, quarantined and duplicated per table, from ``summary.json``."""
    tables = summary.get("tables", {})
    names = sorted(tables)
    return pl.DataFrame({
        "table": names,
        **{k: [int(tables[n][k]) for n in names]
           for k in ("read", "accepted", "quarantined", "duplicates")},
    }, schema={"table": pl.String, "read": pl.Int64, "accepted": pl.Int64,
               "quarantined": pl.Int64, "duplicates": pl.Int64})


def store_counts(summary: dict) -> pl.DataFrame:
    """Rows and accepted rows per table over every file in the store, from ``summary.json``
    (``store_totals``); empty for runs written before it existed."""
    totals = summary.get("store_totals") or {}
    names = sorted(totals)
    return pl.DataFrame({
        "table": names,
        **{k: [int(totals[n][k]) for n in names] for k in ("rows", "accepted")},
    }, schema={"table": pl.String, "rows": pl.Int64, "accepted": pl.Int64})


def quarantine_by_reason(summary: dict) -> pl.DataFrame:
    """Quarantined rows by table and reason code, from ``summary.json``."""
    rows = [(t, r, int(n)) for t, v in summary.get("tables", {}).items()
            for r, n in v.get("quarantined_by_reason", {}).items()]
    return pl.DataFrame(rows, schema={"table": pl.String, "reason": pl.String, "rows": pl.Int64},
                        orient="row").sort("table", "reason")


def missingness(store_tables: dict[str, pl.LazyFrame]) -> pl.DataFrame:
    """Percent of accepted rows with no value, per table and schema column (provenance excluded)."""
    from pipeline.schema import PROVENANCE_SCHEMA, TABLES

    parts = []
    for name in sorted(store_tables):
        lazy = store_tables[name]
        columns = [c for c in lazy.collect_schema().names() if c not in PROVENANCE_SCHEMA]
        declared = set(TABLES[name].column_names) if name in TABLES else set(columns)
        columns = [c for c in columns if c in declared or name == "daily"]
        if not columns:
            continue
        stats = lazy.select(
            [pl.len().alias("__n")] + [pl.col(c).null_count().alias(c) for c in columns]
        ).collect()
        n = stats["__n"][0]
        parts.append(pl.DataFrame({
            "table": [name] * len(columns),
            "column": columns,
            "missing_pct": [round(100 * stats[c][0] / n, 1) if n else None for c in columns],
        }, schema={"table": pl.String, "column": pl.String, "missing_pct": pl.Float64}))
    if not parts:
        return pl.DataFrame(schema={"table": pl.String, "column": pl.String,
                                    "missing_pct": pl.Float64})
    return pl.concat(parts)


#: Bins (in days) for "subjects by days logged".
DAYS_LOGGED_BINS = (7, 14, 30, 60, 90, 180, 365)


def subjects_by_days_logged(daily: pl.LazyFrame, bins: tuple[int, ...] = DAYS_LOGGED_BINS
                            ) -> pl.DataFrame:
    """How many subjects logged how many days, in bins ("1–7", "8–14", ..., "366+")."""
    edges = [0, *bins]
    labels = [f"{lo + 1}–{hi}" for lo, hi in zip(edges, edges[1:])] + [f"{bins[-1] + 1}+"]
    per_subject = daily.group_by("subject_id").agg(pl.len().alias("days")).collect()
    bin_index = pl.sum_horizontal([(pl.col("days") > b).cast(pl.Int64) for b in bins])
    binned = per_subject.with_columns(
        bin_index.replace_strict(dict(enumerate(labels)), return_dtype=pl.String)
        .alias("days_logged")
    ).group_by("days_logged").agg(pl.len().cast(pl.Int64).alias("subjects"))
    frame = pl.DataFrame({"days_logged": labels}).join(binned, on="days_logged", how="left",
                                                       maintain_order="left")
    return frame.with_columns(pl.col("subjects").fill_null(0))


# --- red flags ------------------------------------------------------------------------------------

def flags_by_rule(red_flags: pl.DataFrame) -> pl.DataFrame:
    """Rule firings and distinct subjects per rule, red flags first."""
    rank = {s: i for i, s in enumerate(SEVERITY_ORDER)}
    return (
        red_flags.lazy()
        .group_by("rule_id", "severity")
        .agg(pl.len().cast(pl.Int64).alias("episodes"),
             pl.col("subject_id").n_unique().cast(pl.Int64).alias("subjects"))
        .with_columns(pl.col("severity").replace_strict(rank, default=len(rank),
                                                        return_dtype=pl.Int64).alias("_rank"))
        .sort("_rank", "rule_id")
        .drop("_rank")
        .collect()
    )


def flags_over_time(red_flags: pl.DataFrame, every: str = "1mo", first_day=None, last_day=None
                    ) -> pl.DataFrame:
    """Episodes flagged per rule per calendar period (``every``: a polars interval such as "1mo" or
    "1w"; weeks start on Monday), with every period × rule present so that zeros show.

    ``coverage`` says whether the diary (``first_day`` to ``last_day``, the panel's date range;
    by default the flags' own range) covers the whole period ("full") or only part of it
    ("partial: 4 of 31 days"): a last period cut short by the export date would otherwise read
    as a drop in red flags.
    """
    schema = {"period": pl.Date, "rule_id": pl.String, "episodes": pl.Int64,
              "coverage": pl.String}
    counted = (
        red_flags.lazy()
        .with_columns(pl.col("started_at").dt.truncate(every).dt.date().alias("period"))
        .group_by("period", "rule_id")
        .agg(pl.len().cast(pl.Int64).alias("episodes"))
        .collect()
    )
    if counted.height == 0:
        return pl.DataFrame(schema=schema)
    days = red_flags["started_at"].dt.date()
    first = _as_date(first_day) or days.min()
    last = _as_date(last_day) or days.max()
    start = pl.select(pl.lit(min(first, days.min())).dt.truncate(every)).item()
    periods = pl.date_range(start, max(last, days.max()), every, eager=True)
    period_end = pl.col("period").dt.offset_by(every).dt.offset_by("-1d")
    length = (period_end - pl.col("period")).dt.total_days() + 1
    covered = ((pl.min_horizontal(period_end, pl.lit(last))
                - pl.max_horizontal(pl.col("period"), pl.lit(first))).dt.total_days() + 1
               ).clip(lower_bound=0)
    coverage = (pl.when(covered >= length).then(pl.lit("full"))
                .otherwise(pl.format("partial: {} of {} days", covered, length)))
    grid = (pl.DataFrame({"period": periods}).with_columns(coverage.alias("coverage"))
            .join(pl.DataFrame({"rule_id": sorted(counted["rule_id"].unique().to_list())}),
                  how="cross"))
    return (grid.join(counted, on=["period", "rule_id"], how="left")
            .with_columns(pl.col("episodes").fill_null(0))
            .select(list(schema)).sort("period", "rule_id"))


def _as_date(value):
    import datetime as dt

    if value in (None, ""):
        return None
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
