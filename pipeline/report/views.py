"""What the notebooks call: one function per table, figure or paragraph they show.

Notebooks hold no analysis logic; each cell is one call into this module (or the modules it
re-exports), so the same code is tested here and shown in JupyterLab and in the HTML report.
Research aggregates go through :func:`~pipeline.report.tables.aggregate_table` (disclosure control);
red-flag follow-up lists through :func:`~pipeline.report.tables.follow_up_table` (never suppressed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline import schema
from pipeline.disclosure import DEFAULT_POLICY, disclose_text
from pipeline.report import figures
from pipeline.report.load import RunOutputs, load_run, store_tables
from pipeline.report.sentences import describe_effect, effect_sentences, feature_label
from pipeline.report.tables import (
    MODEL_ORDER,
    ShownTable,
    aggregate_table,
    effects_table,
    flags_by_rule,
    flags_over_time,
    follow_up_table,
    ingest_counts,
    missingness,
    quarantine_by_reason,
    store_counts,
    subjects_by_days_logged,
)

__all__ = [
    "Prose", "RunOutputs", "ShownTable", "open_run", "load_run", "describe_effect",
    "effect_sentences", "feature_label", "figures", "effects_table", "sentences",
    "units_by_feature", "dispersion_table", "calibration_frame", "sufficiency_table",
    "rules_table", "flag_counts_table", "flags_over_time_table", "not_recorded_table",
    "flagged_subjects_table", "flagged_episodes_table", "not_recorded_follow_up_table",
    "ingest_table", "store_totals_table", "quarantine_reasons_table", "missingness_table",
    "days_logged_table",
    "panel_counts_table", "default_subject", "check_subject", "subject_days", "subject_episodes",
    "subject_flags_table", "subject_timeline",
]


@dataclass(frozen=True)
class Prose:
    """Markdown a notebook shows (the same text as plain text for nbval)."""

    text: str

    def _repr_markdown_(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text


def open_run(run_dir: Path | str | None = None, store_dir: Path | str | None = None
             ) -> RunOutputs:
    """The run a notebook shows: ``run_dir``, or the bundled sample's run when it is None."""
    if run_dir in (None, ""):
        from pipeline.report.sample import ensure_sample_run

        run_dir = ensure_sample_run()
    return load_run(run_dir, store_dir=store_dir or None)


# --- effects --------------------------------------------------------------------------------------

def units_by_feature(effects: pl.DataFrame) -> dict[str, str]:
    """``feature -> unit`` as effects.csv states it (``per 1 h``)."""
    return dict(zip(effects["feature"].to_list(), effects["unit"].to_list()))


def sentences(effects: pl.DataFrame, model: str = "within_subject") -> Prose:
    """One bullet per feature of ``model``, in plain words."""
    lines = effect_sentences(effects, model)["sentence"].to_list()
    return Prose("\n".join(f"- {s}" for s in lines) or "_No estimates in this run._")


# --- diagnostics ----------------------------------------------------------------------------------

def _models(diagnostics: dict) -> list[tuple[str, dict]]:
    models = diagnostics.get("models", {})
    order = [m for m in MODEL_ORDER if m in models] + sorted(set(models) - set(MODEL_ORDER))
    return [(m, models[m]) for m in order]


def dispersion_table(diagnostics: dict) -> ShownTable:
    """Per model: fitted, converged, Pearson dispersion (about 1 when Poisson variance holds)."""
    rows = [{
        "model": m,
        "kind": d.get("kind"),
        "fitted": "yes" if d.get("fitted", True) else f"no: {disclose_text(str(d.get('failure')))}",
        "converged": {True: "yes", False: "no"}.get(d.get("converged")),
        "Pearson dispersion": (None if d.get("pearson_dispersion") is None
                               else round(float(d["pearson_dispersion"]), 2)),
    } for m, d in _models(diagnostics)]
    frame = pl.DataFrame(rows, schema={"model": pl.String, "kind": pl.String, "fitted": pl.String,
                                       "converged": pl.String, "Pearson dispersion": pl.Float64})
    return ShownTable(frame, "Model fit. Dispersion well above 1 means more day-to-day variation "
                             "than a Poisson model expects; the robust CIs allow for it.")


def calibration_frame(diagnostics: dict) -> pl.DataFrame:
    """``model, decile, predicted, observed``: mean episodes per subject-day by predicted decile."""
    rows = []
    for m, d in _models(diagnostics):
        for b in d.get("calibration") or []:
            n = b.get("n_subject_days") or 0
            if not n:
                continue
            rows.append({"model": m, "decile": int(b["decile"]),
                         "predicted": float(b["predicted_episodes"]) / n,
                         "observed": float(b["observed_episodes"]) / n})
    return pl.DataFrame(rows, schema={"model": pl.String, "decile": pl.Int64,
                                      "predicted": pl.Float64, "observed": pl.Float64})


def sufficiency_table(diagnostics: dict) -> ShownTable:
    """Features that got no estimate, per model, and why."""
    rows = [{"model": m, "factor": feature_label(f), "status": s.get("status"),
             "reason": disclose_text(s["reason"]) if s.get("reason") else None}
            for m, d in _models(diagnostics)
            for f, s in (d.get("sufficiency") or {}).items()
            if s.get("status") not in (None, "estimated")]
    frame = pl.DataFrame(rows, schema={"model": pl.String, "factor": pl.String,
                                       "status": pl.String, "reason": pl.String})
    return ShownTable(frame, "Features without an estimate (too little data is stated, never "
                             "replaced by a misleading number).")


# --- red flags ------------------------------------------------------------------------------------

def rules_table(run: RunOutputs, rules_path: Path | str | None = None) -> ShownTable:
    """The rules this run applied (``rules_path``, else one recorded in the summary, else the
    shipped rules), with thresholds and their source quotes."""
    from pipeline.redflags import load_rules

    rules_path = rules_path or run.summary.get("rules_path")
    frame = load_rules(Path(rules_path) if rules_path else None).to_frame()
    # Policy text, not data: its numbers are thresholds ("3 episodes a week"), not counts.
    return ShownTable(frame.select("rule_id", "title", "severity", "condition", "parameters",
                                   "source"),
                      "Red-flag rules (red_flag: call your doctor; advisory: worth a look).",
                      css_class="cramp-table rules")


def flag_counts_table(run: RunOutputs, tables_dir=None, policy=DEFAULT_POLICY) -> ShownTable:
    """Flagged episodes and subjects per rule (research aggregate)."""
    return aggregate_table("flags_by_rule", flags_by_rule(run.red_flags),
                           ["episodes", "subjects"], "Flagged episodes and subjects per rule.",
                           tables_dir=tables_dir, policy=policy)


def flags_over_time_table(run: RunOutputs, tables_dir=None, every: str = "1mo",
                          policy=DEFAULT_POLICY) -> ShownTable:
    """Flagged episodes per rule per period (research aggregate)."""
    return aggregate_table("flags_over_time", flags_over_time(run.red_flags, every),
                           ["episodes"], f"Flagged episodes per rule per period ({every}); the first "
                           "and last periods may cover only part of their length.",
                           tables_dir=tables_dir, policy=policy)


def not_recorded_table(run: RunOutputs, tables_dir=None, policy=DEFAULT_POLICY) -> ShownTable:
    """Per rule: episodes it could not assess because a field it reads was empty."""
    nr = run.not_recorded
    frame = (
        nr.lazy().group_by("rule_id")
        .agg(pl.col("n_not_recorded").sum().cast(pl.Int64).alias("episodes_not_recorded"),
             pl.col("subject_id").n_unique().cast(pl.Int64).alias("subjects"),
             # missing_fields reads "pain=1, pain_uncontrolled=2": field=episodes per subject
             pl.col("missing_fields").str.extract_all(r"[A-Za-z0-9_]+=")
             .list.explode(keep_nulls=False, empty_as_null=False).str.strip_chars_end("=")
             .unique().sort().str.join(", ").alias("fields"))
        .sort("rule_id").collect()
    )
    return aggregate_table(
        "flags_not_recorded", frame, ["episodes_not_recorded", "subjects"],
        "Not recorded is not negative: episodes each rule could not assess because a field it "
        "reads was empty.", tables_dir=tables_dir, policy=policy)


def flagged_subjects_table(run: RunOutputs, tables_dir=None) -> ShownTable:
    """Every subject with a flag (red_flag subjects first): for follow-up, never suppressed."""
    return follow_up_table("subject_flags", run.subject_flags, "Subjects with any flag.",
                           tables_dir=tables_dir)


def flagged_episodes_table(run: RunOutputs, tables_dir=None) -> ShownTable:
    """Every flagged episode with the evidence that fired its rule: never suppressed."""
    frame = run.red_flags.with_columns(pl.col("started_at").dt.strftime("%Y-%m-%d %H:%M"))
    return follow_up_table("red_flags", frame, "Every flagged episode and the values that fired "
                           "the rule.", tables_dir=tables_dir)


def not_recorded_follow_up_table(run: RunOutputs, tables_dir=None) -> ShownTable:
    """Per subject and rule, episodes that could not be assessed: ask the subject."""
    return follow_up_table("red_flags_not_recorded", run.not_recorded,
                           "Episodes each rule could not assess, per subject (ask about them).",
                           tables_dir=tables_dir)


# --- data quality ---------------------------------------------------------------------------------

def ingest_table(run: RunOutputs, tables_dir=None, policy=DEFAULT_POLICY) -> ShownTable:
    return aggregate_table("ingest_rows", ingest_counts(run.summary),
                           ["read", "accepted", "quarantined", "duplicates"],
                           "Rows read per table: each is accepted, quarantined, or an exact "
                           "duplicate of an accepted row.", tables_dir=tables_dir, policy=policy)


def store_totals_table(run: RunOutputs, tables_dir=None, policy=DEFAULT_POLICY) -> ShownTable:
    return aggregate_table("store_rows", store_counts(run.summary), ["rows", "accepted"],
                           "Everything the models use: every file in the store, from this run and "
                           "earlier ones (a scheduled report reads only new files, so the table "
                           "above may count fewer rows).", tables_dir=tables_dir, policy=policy)


def quarantine_reasons_table(run: RunOutputs, tables_dir=None, policy=DEFAULT_POLICY
                             ) -> ShownTable:
    frame = quarantine_by_reason(run.summary).with_columns(
        pl.col("reason").replace_strict(schema.REASONS, default="").alias("meaning"))
    return aggregate_table("quarantine_by_reason", frame, ["rows"],
                           "Quarantined rows by reason (details per row in quarantine.csv).",
                           tables_dir=tables_dir, policy=policy)


def _store_tables(run: RunOutputs) -> dict[str, pl.LazyFrame]:
    # A store that is missing, unreadable or empty is a UserError, never an empty table.
    return store_tables(run)


def missingness_table(run: RunOutputs) -> ShownTable:
    """Percent of accepted rows with an empty value, per table and column."""
    frame = missingness(_store_tables(run)).filter(pl.col("missing_pct") > 0)
    caption = "Missing values among accepted rows (percent); columns not listed are complete."
    if run.store_dir is None:
        caption += " The run's store was not found, so this table is empty."
    return ShownTable(frame, caption)


def days_logged_table(run: RunOutputs, tables_dir=None, policy=DEFAULT_POLICY) -> ShownTable:
    """Subjects by number of days logged (research aggregate)."""
    daily = _store_tables(run).get("daily")
    frame = (subjects_by_days_logged(daily) if daily is not None else
             pl.DataFrame(schema={"days_logged": pl.String, "subjects": pl.Int64}))
    return aggregate_table("subjects_by_days_logged", frame, ["subjects"],
                           "Subjects by number of days logged.", tables_dir=tables_dir,
                           policy=policy)


def panel_counts_table(run: RunOutputs, tables_dir=None, policy=DEFAULT_POLICY) -> ShownTable:
    """The panel's totals, including episodes that fell outside logged days."""
    panel = run.panel
    labels = {
        "n_subjects": "subjects in the panel",
        "n_subject_days": "subject-days (logged days at risk)",
        "n_episodes": "accepted episodes",
        "n_episodes_on_logged_days": "episodes on logged days (modelled)",
        "episodes_outside_logged_days": "episodes outside logged days (not modelled)",
    }
    rows = [(text, int(panel[key])) for key, text in labels.items() if panel.get(key) is not None]
    frame = pl.DataFrame(rows, schema={"measure": pl.String, "count": pl.Int64}, orient="row")
    return aggregate_table("panel_counts", frame, ["count"],
                           "The subject-day panel the models use.", tables_dir=tables_dir,
                           policy=policy)


# --- subject timeline -----------------------------------------------------------------------------

def default_subject(run: RunOutputs) -> str | None:
    """The subject with the most red_flag firings (then most flags, then id): a useful default."""
    flags = run.red_flags
    if flags.height == 0:
        return None
    ranked = (flags.group_by("subject_id")
              .agg((pl.col("severity") == "red_flag").sum().alias("red"), pl.len().alias("all"))
              .sort(["red", "all", "subject_id"], descending=[True, True, False]))
    return ranked["subject_id"][0]


def check_subject(run: RunOutputs, subject_id: str | None) -> str:
    """``subject_id`` if the run's store holds that subject; otherwise a UserError saying so (an
    unknown id must not draw an empty timeline and "(no rows)")."""
    from pipeline.errors import UserError

    if subject_id in (None, ""):
        raise UserError("no subject to show: this run has no flagged subject to default to; set "
                        "subject_id to one of the run's subjects")
    subjects = _store_tables(run)["subjects"]
    if subjects.filter(pl.col("subject_id") == subject_id).select(pl.len()).collect().item() == 0:
        n = subjects.select(pl.len()).collect().item()
        raise UserError(f"subject {subject_id!r} is not in this run's data ({n:,} subjects "
                        "accepted; ids are case-sensitive)", path=str(run.path))
    return subject_id


def subject_days(run: RunOutputs, subject_id: str) -> pl.DataFrame:
    """One subject's daily rows (without provenance), by date."""
    check_subject(run, subject_id)
    daily = _store_tables(run).get("daily")
    if daily is None:
        return pl.DataFrame(schema={"subject_id": pl.String, "date": pl.Date})
    return (daily.filter(pl.col("subject_id") == subject_id)
            .drop(list(schema.PROVENANCE_SCHEMA), strict=False).sort("date").collect())


def subject_episodes(run: RunOutputs, subject_id: str) -> pl.DataFrame:
    """One subject's episodes (without provenance), by start time."""
    check_subject(run, subject_id)
    episodes = _store_tables(run).get("episodes")
    if episodes is None:
        return pl.DataFrame(schema={"subject_id": pl.String, "started_at": pl.Datetime("us")})
    return (episodes.filter(pl.col("subject_id") == subject_id)
            .drop(list(schema.PROVENANCE_SCHEMA), strict=False).sort("started_at").collect())


def subject_flags_table(run: RunOutputs, subject_id: str) -> ShownTable:
    """One subject's flagged episodes (identifying: for clinical review)."""
    check_subject(run, subject_id)
    frame = (run.red_flags.filter(pl.col("subject_id") == subject_id)
             .with_columns(pl.col("started_at").dt.strftime("%Y-%m-%d %H:%M")))
    return follow_up_table("subject_timeline_flags", frame, f"Flagged episodes of {subject_id}.")


def subject_timeline(run: RunOutputs, subject_id: str):
    """The timeline figure for one subject: factors per day, episodes, flagged episodes marked."""
    days = subject_days(run, subject_id)
    factors = [c for c in days.columns if c in schema.FACTOR_COLUMNS]
    units = {c: schema.FACTOR_COLUMNS[c].unit or "" for c in factors}
    flags = run.red_flags.filter(pl.col("subject_id") == subject_id)
    return figures.subject_timeline_plot(days, subject_episodes(run, subject_id), flags, factors,
                                         subject_id=subject_id, units=units)
