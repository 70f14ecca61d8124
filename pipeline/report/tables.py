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
from pipeline.report.sentences import feature_label

NULL_TEXT = "—"
MODEL_ORDER = ("within_subject", "population")
SEVERITY_ORDER = ("red_flag", "advisory")


def _cell(value, column: str, null_labels: dict[str, str]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return null_labels.get(column, NULL_TEXT)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


@dataclass(frozen=True)
class ShownTable:
    """A frame as a notebook shows it: a caption, fixed formatting, nulls spelled out."""

    frame: pl.DataFrame
    caption: str
    null_labels: dict[str, str] = field(default_factory=dict)
    css_class: str = "cramp-table"

    def _rows(self) -> list[list[str]]:
        return [[_cell(v, c, self.null_labels) for c, v in zip(self.frame.columns, row)]
                for row in self.frame.iter_rows()]

    def __repr__(self) -> str:
        header = list(self.frame.columns)
        rows = self._rows()
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
        body = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
        if not rows:
            body.append("(no rows)")
        return "\n".join([self.caption] + body)

    def _repr_html_(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(c)}</th>" for c in self.frame.columns)
        numeric = [t.is_numeric() for t in self.frame.dtypes]
        body = "".join(
            "<tr>" + "".join(
                f'<td class="num">{esc(v)}</td>' if num else f"<td>{esc(v)}</td>"
                for v, num in zip(row, numeric)
            ) + "</tr>"
            for row in self._rows()
        )
        if not body:
            body = f'<tr><td colspan="{max(1, self.frame.width)}">(no rows)</td></tr>'
        return (f'<table class="{self.css_class}"><caption>{esc(self.caption)}</caption>'
                f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _write(tables_dir: Path | str | None, kind: str, name: str, frame: pl.DataFrame) -> None:
    if tables_dir is not None:
        csvsafe.write_csv(Path(tables_dir) / kind / f"{name}.csv", frame)


def aggregate_table(
    name: str,
    frame: pl.DataFrame,
    count_columns: list[str],
    caption: str,
    *,
    tables_dir: Path | str | None = None,
    policy: DisclosurePolicy = DEFAULT_POLICY,
) -> ShownTable:
    """A research aggregate: counts suppressed (1–threshold) and rounded before anyone sees them."""
    disclosed = disclose_counts(frame, count_columns, policy)
    _write(tables_dir, "aggregate", name, disclosed)
    labels = {c: policy.suppressed_label for c in count_columns}
    note = f" Counts of 1–{policy.threshold} shown as {policy.suppressed_label}; others rounded " \
           f"to the nearest {policy.rounding_multiple}."
    return ShownTable(disclosed, caption + note, labels)


def follow_up_table(
    name: str, frame: pl.DataFrame, caption: str, *, tables_dir: Path | str | None = None
) -> ShownTable:
    """A red-flag follow-up list: pseudonymous ids, never suppressed, labelled as such."""
    _write(tables_dir, "follow_up", name, frame)
    return ShownTable(frame, "For clinical follow-up; lists pseudonymous subject ids. " + caption,
                      css_class="cramp-table follow-up")


# --- effects --------------------------------------------------------------------------------------

def _fmt_ci(irr, low, high) -> str | None:
    if irr is None or low is None or high is None or math.isnan(irr):
        return None
    return f"{irr:.2f} ({low:.2f} to {high:.2f})"


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
                  policy: DisclosurePolicy = DEFAULT_POLICY) -> ShownTable:
    """The effects table (estimates as fitted; the group sizes disclosure-controlled)."""
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
    if not notes:
        return shown
    return ShownTable(shown.frame, f"{shown.caption} Notes: {notes}", shown.null_labels)


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


def flags_over_time(red_flags: pl.DataFrame, every: str = "1mo") -> pl.DataFrame:
    """Episodes flagged per rule per calendar period (``every``: a polars interval such as "1mo" or
    "1w"; weeks start on Monday), with every period × rule present so that zeros show."""
    counted = (
        red_flags.lazy()
        .with_columns(pl.col("started_at").dt.truncate(every).dt.date().alias("period"))
        .group_by("period", "rule_id")
        .agg(pl.len().cast(pl.Int64).alias("episodes"))
        .collect()
    )
    if counted.height == 0:
        return pl.DataFrame(schema={"period": pl.Date, "rule_id": pl.String, "episodes": pl.Int64})
    periods = pl.date_range(counted["period"].min(), counted["period"].max(), every, eager=True)
    grid = pl.DataFrame({"period": periods}).join(
        pl.DataFrame({"rule_id": sorted(counted["rule_id"].unique().to_list())}), how="cross")
    return (grid.join(counted, on=["period", "rule_id"], how="left")
            .with_columns(pl.col("episodes").fill_null(0)).sort("period", "rule_id"))
