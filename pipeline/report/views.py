"""What the notebooks call: one function per table, figure or paragraph they show.

Notebooks hold no analysis logic; each cell is one call into this module (or the modules it
re-exports), so the same code is tested here and shown in JupyterLab and in the HTML report.
Research aggregates go through :func:`~pipeline.report.tables.aggregate_table`: exact in the
care-team report, disclosure-controlled in the shareable one (``policy``, from
:func:`disclosure_policy`); red-flag follow-up lists through
:func:`~pipeline.report.tables.follow_up_table` (never suppressed, only in the care-team report).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline import schema
from pipeline.disclosure import DEFAULT_POLICY, disclose_text
from pipeline.report import figures
from pipeline.report.load import RunOutputs, load_run, store_tables
from pipeline.report.sentences import describe_effect, effect_sentences, feature_label
from pipeline.report.sentences import model_label
from pipeline.report.tables import (EXACT_COUNTS, NULL_TEXT, SEVERITY_ORDER, TableGroup,
                                    disclosure_policy)
from pipeline.report.tables import (
    MODEL_ORDER,
    ShownTable,
    aggregate_table,
    effects_table,
    flags_by_rule,
    flags_over_time,
    FOLLOW_UP_ROWS,
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
    "flagged_episodes_table", "not_recorded_follow_up_table",
    "ingest_table", "store_totals_table", "quarantine_reasons_table", "missingness_table",
    "days_logged_table", "disclosure_policy", "EXACT_COUNTS", "TableGroup", "model_label",
    "worklist", "worklist_table", "new_flags", "flags_over_time_by_rule", "rules_frame",
    "condition_in_words",
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


def dispersion_table(diagnostics: dict, policy=DEFAULT_POLICY) -> ShownTable:
    """Per model: fitted, converged, Pearson dispersion (about 1 when Poisson variance holds)."""
    rows = [{
        "model": model_label(m),
        "kind": d.get("kind"),
        "fitted": ("yes" if d.get("fitted", True)
                   else f"no: {disclose_text(str(d.get('failure')), policy)}"),
        "converged": {True: "yes", False: "no"}.get(d.get("converged")),
        "Pearson dispersion": (None if d.get("pearson_dispersion") is None
                               else f"{float(d['pearson_dispersion']):.2f}"),
    } for m, d in _models(diagnostics)]
    frame = pl.DataFrame(rows, schema={"model": pl.String, "kind": pl.String, "fitted": pl.String,
                                       "converged": pl.String, "Pearson dispersion": pl.String})
    return ShownTable(frame, "Model fit. Dispersion well above 1 means more day-to-day variation "
                             "than a Poisson model expects; the robust CIs allow for it.",
                      numeric_text=("Pearson dispersion",))


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


def sufficiency_table(diagnostics: dict, policy=DEFAULT_POLICY) -> ShownTable:
    """Features that got no estimate, per model, and why."""
    rows = [{"model": model_label(m), "factor": feature_label(f), "status": s.get("status"),
             "reason": disclose_text(s["reason"], policy) if s.get("reason") else None}
            for m, d in _models(diagnostics)
            for f, s in (d.get("sufficiency") or {}).items()
            if s.get("status") not in (None, "estimated")]
    frame = pl.DataFrame(rows, schema={"model": pl.String, "factor": pl.String,
                                       "status": pl.String, "reason": pl.String})
    return ShownTable(frame, "Features without an estimate (too little data is stated, never "
                             "replaced by a misleading number).")


# --- red flags ------------------------------------------------------------------------------------

#: How a condition clause's SQL reads in the rules table (display only; evaluation reads the SQL).
_CONDITION_WORDS = ((" >= ", " ≥ "), (" <= ", " ≤ "), (" != ", " ≠ "),
                    (" IN ", " is one of "), (" AND ", " and "), (" NOT ", " not "))
#: A rationale's own closing disclaimer; the table states "toolkit rationale" once, in front.
_RATIONALE_DISCLAIMER = re.compile(r"\s*\(Toolkit rationale[^)]*\)\s*$", re.I)


def condition_in_words(rule) -> str:
    """When a rule fires, as the rules table states it: the condition clauses with their
    thresholds filled in ("pain ≥ 7, or pain_uncontrolled is yes"); a ``frequency`` rule, which
    has no clause, in words from its parameters."""
    if rule.kind == "frequency":
        n, weeks = (int(rule.parameter(p)) for p in ("min_episodes_per_week",
                                                     "consecutive_weeks"))
        return (f"at least {n} episodes in each of {weeks} back-to-back 7-day windows "
                "(any start day; several cramps on one day each count)")
    clauses = []
    for clause in rule.resolved_condition():
        text = re.sub(r"\((-?[\d.]+)\)", r"\1", clause.strip())
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
            text += " is yes"
        for sql, words in _CONDITION_WORDS:
            text = text.replace(sql, words)
        clauses.append(text)
    return ", or ".join(clauses)


def rules_frame(rules) -> pl.DataFrame:
    """``rule_id, title, severity, fires when, source`` for a RuleSet: the guidance quote of a
    red-flag rule verbatim, a toolkit rationale labelled once as such."""
    def source(rule) -> str:
        if rule.source_kind == "guidance_quote":
            return f"Guidance (verbatim): \u201c{rule.source}\u201d"
        return ("Toolkit rationale (not a quote from the guidance): "
                + _RATIONALE_DISCLAIMER.sub("", rule.source))

    return pl.DataFrame({
        "rule_id": [r.id for r in rules.rules],
        "title": [r.title for r in rules.rules],
        "severity": [r.severity for r in rules.rules],
        "fires when": [condition_in_words(r) for r in rules.rules],
        "source": [source(r) for r in rules.rules],
    }, schema={c: pl.String for c in ("rule_id", "title", "severity", "fires when", "source")})


def rules_table(run: RunOutputs, rules_path: Path | str | None = None) -> ShownTable:
    """The rules this run applied (``rules_path``, else one recorded in the summary, else the
    shipped rules), with thresholds and their source quotes."""
    from pipeline.redflags import load_rules

    rules_path = rules_path or run.summary.get("rules_path")
    frame = rules_frame(load_rules(Path(rules_path) if rules_path else None))
    # Policy text, not data: its numbers are thresholds ("3 episodes a week"), not counts.
    return ShownTable(frame, "Red-flag rules (red_flag: call your doctor; advisory: worth a "
                             "look). An empty field never fires a rule: it is counted as not "
                             "recorded.", css_class="cramp-table rules")


def flag_counts_table(run: RunOutputs, tables_dir=None, policy=DEFAULT_POLICY) -> ShownTable:
    """Flagged episodes and subjects per rule: exact in the care-team report (``policy`` =
    :data:`EXACT_COUNTS`), disclosure-controlled in the shareable one."""
    return aggregate_table("flags_by_rule", flags_by_rule(run.red_flags),
                           ["episodes", "subjects"], "Flagged episodes and subjects per rule.",
                           tables_dir=tables_dir, policy=policy)


def flags_over_time_table(run: RunOutputs, tables_dir=None, every: str = "1mo",
                          policy=DEFAULT_POLICY) -> ShownTable:
    """Flagged episodes per rule per period; ``coverage`` marks a first or last period the diary
    covers only in part (the chart draws those hollow)."""
    first, last = run.panel.get("first_date"), run.panel.get("last_date")
    frame = flags_over_time(run.red_flags, every, first, last)
    partial = frame.filter(pl.col("coverage") != "full")["period"].unique().sort().to_list()
    # Dates, not "4 of 30 days": a day count in prose would read as a small count of people.
    first = first or (f"{run.red_flags['started_at'].min():%Y-%m-%d}" if partial else None)
    last = last or (f"{run.red_flags['started_at'].max():%Y-%m-%d}" if partial else None)
    start, end = (frame["period"].min(), frame["period"].max()) if frame.height else (None, None)

    def why(period) -> str:
        if period == start == end:
            return f"the diary runs {first} to {last}"
        return f"the diary starts {first}" if period == start else f"the diary ends {last}"

    periods = ", ".join(f"{d:%Y-%m-%d} ({why(d)})" for d in partial)
    note = (f" Partial periods (the diary covers only part of them, so their counts are not "
            f"comparable with the others; drawn hollow and dotted): {periods}." if partial
            else " Every period is fully covered by the diary.")
    return aggregate_table("flags_over_time", frame, ["episodes"],
                           f"Flagged episodes per rule per period ({_period_name(every)})."
                           + note, tables_dir=tables_dir, policy=policy)


def flags_over_time_by_rule(run: RunOutputs, over_time: ShownTable) -> ShownTable:
    """:func:`flags_over_time_table` as a reader scans it: one row per period, one column per rule
    (red-flag rules first), the period's coverage last. Same disclosed counts, same caption."""
    frame = over_time.frame
    rules = flags_by_rule(run.red_flags)["rule_id"].to_list()
    rules = [r for r in rules if r in set(frame["rule_id"].to_list())]
    if not rules:
        return ShownTable(pl.DataFrame(schema={"period": pl.Date, "coverage": pl.String}),
                          over_time.caption)
    wide = frame.pivot(on="rule_id", index=["period", "coverage"], values="episodes",
                       aggregate_function=None).sort("period")
    label = next(iter(over_time.null_labels.values()), NULL_TEXT)
    return ShownTable(wide.select("period", *rules, "coverage"), over_time.caption,
                      {r: label for r in rules}, nowrap=("period", "coverage"))


def _period_name(every: str) -> str:
    return {"1mo": "calendar month", "1w": "week from Monday", "1d": "day",
            "1q": "quarter"}.get(every, every)


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


# --- the follow-up worklist -----------------------------------------------------------------------

#: Follow-up columns kept on one line; evidence, rule lists and long episode ids wrap.
_NOWRAP = ("subject_id", "severity", "new", "latest_started_at", "started_at", "rule_id")


def _previous_flags(previous_run) -> pl.DataFrame | None:
    """The previous report's ``red_flags.csv`` (a run directory or a loaded run), or None."""
    if previous_run in (None, ""):
        return None
    if isinstance(previous_run, RunOutputs):
        return previous_run.red_flags
    from pipeline.errors import UserError
    from pipeline.report.load import RED_FLAG_DTYPES, _read_csv

    path = Path(previous_run) / "red_flags.csv"
    if not path.is_file():
        raise UserError("the previous report's red_flags.csv was not found", path=str(path))
    return _read_csv(path, RED_FLAG_DTYPES)


def new_flags(flags: pl.DataFrame, previous: pl.DataFrame | None) -> pl.DataFrame:
    """``flags`` with ``is_new`` (``pipeline.report.changes.mark_new``, the comparison the
    scheduled job counts with)."""
    from pipeline.report.changes import mark_new

    return mark_new(flags, previous)


def worklist(run: RunOutputs, previous_run=None) -> pl.DataFrame:
    """The red-flag follow-up as a worklist: one row per flagged subject, most severe first, then
    the most recent flagged episode first.

    Per subject: ``severity`` (the highest of its flags), ``new`` ("NEW" when any flag is not in
    ``previous_run``'s red_flags.csv, else ""), its latest flagged episode (``latest_episode_id``,
    ``latest_started_at``, the rules it met and their evidence), ``flagged_episodes`` and
    ``new_episodes`` (episodes with a flag not in the previous report). ``previous_run``: the
    previous report's run directory (or loaded run); None means no previous report, so every flag
    is new.
    """
    rank = {s: i for i, s in enumerate(SEVERITY_ORDER)}
    flags = new_flags(run.red_flags, _previous_flags(previous_run)).lazy().with_columns(
        pl.col("severity").replace_strict(rank, default=len(rank), return_dtype=pl.Int64)
        .alias("_rank"))
    latest = (flags.sort("started_at", "episode_id", "rule_id")
              .group_by("subject_id", "episode_id", "started_at")
              .agg(pl.col("rule_id").str.join(", ").alias("latest_rules"),
                   pl.col("evidence").str.join("; ").alias("latest_evidence"))
              .sort("started_at", "episode_id", descending=True)
              .group_by("subject_id", maintain_order=True).first())
    per_subject = flags.group_by("subject_id").agg(
        pl.col("_rank").min(),
        pl.col("is_new").any().alias("_any_new"),
        pl.col("episode_id").n_unique().cast(pl.Int64).alias("flagged_episodes"),
        pl.col("episode_id").filter(pl.col("is_new")).n_unique().cast(pl.Int64)
        .alias("new_episodes"))
    severity = {i: s for s, i in rank.items()}
    return (
        per_subject.join(latest, on="subject_id")
        .sort(["_rank", "started_at", "subject_id"], descending=[False, True, False])
        .select(
            "subject_id",
            pl.col("_rank").replace_strict(severity, default="other", return_dtype=pl.String)
            .alias("severity"),
            pl.when(pl.col("_any_new")).then(pl.lit("NEW")).otherwise(pl.lit(""))
            .alias("new"),
            pl.col("started_at").dt.strftime("%Y-%m-%d %H:%M").alias("latest_started_at"),
            "latest_rules", "latest_evidence", "flagged_episodes", "new_episodes",
            pl.col("episode_id").alias("latest_episode_id"))
        .collect()
    )


def worklist_table(run: RunOutputs, previous_run=None, tables_dir=None,
                   top: int | None = FOLLOW_UP_ROWS) -> ShownTable:
    """:func:`worklist` as the report shows it: the first ``top`` subjects, the full list written
    to ``tables_dir/follow_up/worklist.csv``."""
    frame = worklist(run, previous_run)
    since = ("the previous report" if previous_run not in (None, "") else
             "the previous report (there is none, so every flag counts as new)")
    return follow_up_table(
        "worklist", frame, "Worklist: one row per flagged subject, red flags first, then the "
        f"most recent flagged episode first. NEW: a flag not in {since}; \u201cflagged episodes\u201d "
        "counts the subject's flagged episodes, \u201cnew episodes\u201d those with a new flag.",
        tables_dir=tables_dir, top=top, nowrap=_NOWRAP)


def flagged_episodes_table(run: RunOutputs, tables_dir=None, top: int | None = FOLLOW_UP_ROWS
                           ) -> ShownTable:
    """Flagged episodes with the evidence that fired each rule, most severe and most recent first:
    never suppressed; the report shows the first ``top``, red_flags.csv holds every one."""
    rank = {s: i for i, s in enumerate(SEVERITY_ORDER)}
    frame = (run.red_flags.lazy()
             .with_columns(pl.col("severity").replace_strict(rank, default=len(rank),
                                                             return_dtype=pl.Int64).alias("_rank"))
             .sort(["_rank", "started_at", "subject_id", "rule_id"],
                   descending=[False, True, False, False])
             .drop("_rank")
             .with_columns(pl.col("started_at").dt.strftime("%Y-%m-%d %H:%M"))
             .collect())
    return follow_up_table("red_flags", frame, "Flagged episodes and the values that fired the "
                           "rule, red flags first, most recent first.", tables_dir=tables_dir,
                           top=top, full_list="red_flags.csv beside the report", nowrap=_NOWRAP)


def not_recorded_follow_up_table(run: RunOutputs, tables_dir=None,
                                 top: int | None = FOLLOW_UP_ROWS) -> ShownTable:
    """Per subject and rule, episodes that could not be assessed (ask the subject): red-flag rules
    first, then the subjects with most unassessed episodes."""
    rank = {s: i for i, s in enumerate(SEVERITY_ORDER)}
    frame = (run.not_recorded
             .with_columns(pl.col("severity").replace_strict(rank, default=len(rank),
                                                             return_dtype=pl.Int64).alias("_rank"))
             .sort(["_rank", "n_not_recorded", "subject_id", "rule_id"],
                   descending=[False, True, False, False])
             .drop("_rank"))
    return follow_up_table("red_flags_not_recorded", frame,
                           "Episodes each rule could not assess, per subject (ask about them), "
                           "red-flag rules first, most unassessed first.", tables_dir=tables_dir,
                           top=top, full_list="red_flags_not_recorded.csv beside the report",
                           nowrap=_NOWRAP)


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
