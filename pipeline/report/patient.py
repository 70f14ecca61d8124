"""The patient page (notebook 04): one person's timeline, findings, red flags and lag profile.

For the care team, with a pseudonymous id: never part of the shareable report. Everything the page
shows is built here from a run directory (``subject_effects.csv``, ``heterogeneity.csv``, the red
flags, the store's diary rows, and ``lags.csv`` when the run has one); the notebook holds one call.

- :func:`patient_page` is the static page for given parameters (papermill, nbval, HTML export);
- :func:`patient_controls` wraps it in ipywidgets controls (subject, factor, date range) that
  rebuild the page in JupyterLab without editing code. Its display carries the static page as
  ``text/plain`` and ``text/html`` beside the widget view, so a front end without widgets
  (papermill, nbconvert, nbval) still shows, and checks, the page for the parameters.

Findings are ranked by the strength of evidence of the person's partially pooled estimate
(|log IRR| / SE), and read as plain sentences; the comparison with the cohort places the person in
the estimated distribution of people's rate ratios (normal, SD tau, around the cohort's
within_subject estimate), or says that the data show no sign that people differ.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from datetime import date

import ipywidgets as widgets
import polars as pl
from scipy import stats

from pipeline import schema
from pipeline.errors import UserError
from pipeline.report import figures
from pipeline.report.load import RunOutputs, _read_csv
from pipeline.report.sentences import (
    _change,
    _digits,
    _interval,
    exposure_phrase,
    feature_label,
    is_binary_unit,
)
from pipeline.report.tables import ShownTable

Z95 = 1.959963984540054
#: |log IRR| / SE at or above which the evidence reads as strong (two-sided p < 0.001) / clear
#: (p < 0.05); below, the interval includes no difference.
STRONG_Z = 3.29
CLEAR_Z = Z95
#: A person whose own data carry less than this share of their estimate is told that it leans on
#: the cohort.
LEANS_ON_COHORT_BELOW = 0.2
#: tau below this counts as "no sign that people differ" (as in ``subject_effects.py``).
NO_HETEROGENEITY_TAU = 1e-6
ALL_FACTORS = "all factors"

SUBJECT_EFFECTS_DTYPES = {
    "subject_id": pl.String, "factor": pl.String, "feature": pl.String, "unit": pl.String,
    "irr": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "own_irr": pl.Float64,
    "own_ci_low": pl.Float64, "own_ci_high": pl.Float64, "weight_own": pl.Float64,
    "n_days": pl.Int64, "n_episodes": pl.Int64, "note": pl.String,
}
HETEROGENEITY_DTYPES = {
    "factor": pl.String, "feature": pl.String, "unit": pl.String, "n_subjects": pl.Int64,
    "tau": pl.Float64, "tau_ci_low": pl.Float64, "tau_ci_high": pl.Float64, "q": pl.Float64,
    "p_value": pl.Float64, "mean_irr": pl.Float64, "mean_ci_low": pl.Float64,
    "mean_ci_high": pl.Float64, "range_low": pl.Float64, "range_high": pl.Float64,
    "within_subject_irr": pl.Float64, "note": pl.String,
}


@dataclass(frozen=True)
class PatientData:
    """The per-person outputs of a run (read once; the controls reuse them)."""

    run: RunOutputs
    subject_effects: pl.DataFrame
    heterogeneity: pl.DataFrame
    #: ``lags.csv`` when the run has one (the distributed-lag model), else None.
    lags: pl.DataFrame | None
    subjects: tuple[str, ...]


def load_patient_data(run: RunOutputs) -> PatientData:
    """Read subject_effects.csv, heterogeneity.csv and (if present) lags.csv of ``run``."""
    path = run.path / "subject_effects.csv"
    if not path.is_file():
        raise UserError("this run has no per-person estimates (subject_effects.csv); re-run "
                        "`cramp run` with this version", path=str(run.path))
    effects = _read_csv(path, SUBJECT_EFFECTS_DTYPES)
    het = _read_csv(run.path / "heterogeneity.csv", HETEROGENEITY_DTYPES)
    lags_path = run.path / "lags.csv"
    lags = _read_csv(lags_path) if lags_path.is_file() else None
    known = set(effects["subject_id"].to_list()) | set(run.red_flags["subject_id"].to_list())
    if run.store_dir is not None:
        from pipeline.report.load import read_store_table

        known |= set(read_store_table(run.store_dir, "subjects").select("subject_id")
                     .collect()["subject_id"].to_list())
    return PatientData(run, effects, het, lags, tuple(sorted(known)))


def require_subject(data: PatientData, subject_id: str | None) -> str:
    """``subject_id`` if the run knows it; else a ``UserError`` that says what it does know."""
    if subject_id in data.subjects:
        return subject_id
    if not data.subjects:
        raise UserError("this run has no subjects")
    sample = ", ".join(data.subjects[:3])
    raise UserError(f"subject {subject_id!r} is not in this run's data "
                    f"({len(data.subjects):,} subjects, e.g. {sample})")


# --- findings -------------------------------------------------------------------------------------

def _se(low: float, high: float) -> float:
    return (math.log(high) - math.log(low)) / (2 * Z95)


def evidence_label(z: float) -> str:
    if z >= STRONG_Z:
        return "strong"
    if z >= CLEAR_Z:
        return "clear"
    return "weak (compatible with no difference)"


def person_sentence(row: dict) -> str:
    """"On days with one more litre of fluid, this person had about 25% fewer cramps (95% CI …)"."""
    feature, unit, factor = row["feature"], row.get("unit"), row.get("factor")
    irr, low, high = row["irr"], row["ci_low"], row["ci_high"]
    opening = f"On days with {exposure_phrase(feature, unit, factor)}" + (
        " (compared with days without)" if is_binary_unit(unit) else "")
    digits = _digits(irr)
    interval = _interval(irr, low, high, digits)
    if low <= 1 <= high:
        return (f"{opening}, this person had about {_change(irr, digits)} cramps, but the data "
                f"are compatible with no difference ({interval}).")
    return f"{opening}, this person had about {_change(irr, digits)} cramps ({interval})."


def cohort_sentence(row: dict, het: dict | None) -> str:
    """How the person compares with the cohort for one feature."""
    if het is None or het.get("tau") is None or het.get("within_subject_irr") is None:
        return "No comparison with the cohort: too few people had enough data to compare."
    cohort = het["within_subject_irr"]
    digits = _digits(cohort)
    average = f"on average {_change(cohort, digits)} cramps"
    if het["tau"] < NO_HETEROGENEITY_TAU:
        return (f"In the cohort, people had {average}; the data show no sign that people differ "
                "in this, so this person's estimate is the cohort's (with a wider interval: the "
                "data cannot rule out that people differ somewhat).")
    share = stats.norm.cdf((math.log(row["irr"]) - math.log(cohort)) / het["tau"])
    side, pct = ("higher", share) if share >= 0.5 else ("lower", 1 - share)
    text = (f"In the cohort, people had {average} (people differ: 95% of them between "
            f"{het['range_low']:.2f} and {het['range_high']:.2f} as a rate ratio); this person's "
            f"rate ratio is {side} than that of about {round(100 * pct)}% of people.")
    weight = row.get("weight_own")
    if weight is not None and weight < LEANS_ON_COHORT_BELOW:
        text += (f" Their own diary says little about this: {weight:.0%} of the estimate comes "
                 "from their own days, the rest from the cohort.")
    return text


def findings(data: PatientData, subject_id: str, factor: str | None = None) -> pl.DataFrame:
    """The person's estimated features ranked by strength of evidence, with their sentences.

    Columns: factor, feature, label, irr, ci_low, ci_high, own_irr, own_ci_low, own_ci_high,
    weight_own, z, evidence, sentence, comparison."""
    rows = data.subject_effects.filter((pl.col("subject_id") == subject_id)
                                       & pl.col("irr").is_not_null())
    if factor not in (None, ALL_FACTORS):
        rows = rows.filter(pl.col("factor") == factor)
    het = {r["feature"]: r for r in data.heterogeneity.to_dicts()}
    out = []
    for r in rows.to_dicts():  # a dozen features of one person
        z = abs(math.log(r["irr"])) / _se(r["ci_low"], r["ci_high"])
        out.append({**r, "label": feature_label(r["feature"], r["factor"]), "z": z,
                    "evidence": evidence_label(z), "sentence": person_sentence(r),
                    "comparison": cohort_sentence(r, het.get(r["feature"]))})
    schema_ = {**SUBJECT_EFFECTS_DTYPES, "label": pl.String, "z": pl.Float64,
               "evidence": pl.String, "sentence": pl.String, "comparison": pl.String}
    frame = pl.DataFrame(out, schema=schema_, orient="row") if out else pl.DataFrame(
        schema=schema_)
    return frame.sort(["z", "feature"], descending=[True, False])


def not_estimated(data: PatientData, subject_id: str, factor: str | None = None) -> pl.DataFrame:
    """``label, reason`` for the person's features without an estimate."""
    rows = data.subject_effects.filter((pl.col("subject_id") == subject_id)
                                       & pl.col("irr").is_null())
    if factor not in (None, ALL_FACTORS):
        rows = rows.filter(pl.col("factor") == factor)
    labels = [feature_label(f, c) for f, c in zip(rows["feature"], rows["factor"])]  # a dozen
    return pl.DataFrame({"factor": labels,
                         "why not": rows["note"].str.strip_prefix("not estimated: ")},
                        schema={"factor": pl.String, "why not": pl.String})


def findings_table(found: pl.DataFrame) -> ShownTable:
    def ci(rows, prefix):
        return [f"{r[prefix + 'irr']:.2f} ({r[prefix + 'ci_low']:.2f} to "
                f"{r[prefix + 'ci_high']:.2f})" if r[prefix + "irr"] is not None else None
                for r in rows]

    rows = found.to_dicts()  # a dozen features of one person
    frame = pl.DataFrame({
        "factor": found["label"],
        "this person, IRR (95% CI)": ci(rows, ""),
        "own days only": ci(rows, "own_"),
        "% from own days": (found["weight_own"] * 100).round(0).cast(pl.Int64),
        "evidence": found["evidence"],
    }, schema_overrides={"this person, IRR (95% CI)": pl.String, "own days only": pl.String})
    return ShownTable(frame, "This person's rate ratios per documented unit, strongest evidence "
                             "first. 'This person' is shrunk toward the cohort by as much as their "
                             "own data are uncertain; '% from own days' is the weight of their "
                             "own estimate.")


# --- the page -------------------------------------------------------------------------------------

@dataclass
class Section:
    title: str
    text: str
    html: str


@dataclass
class PatientPage:
    """The page as sections, shown as HTML in a notebook and as text by nbval."""

    subject_id: str | None
    sections: list[Section] = field(default_factory=list)

    def __repr__(self) -> str:
        return "\n\n".join(f"## {s.title}\n{s.text}" if s.title else s.text
                           for s in self.sections)

    def _repr_html_(self) -> str:
        parts = [f"<h3>{html.escape(s.title)}</h3>{s.html}" if s.title else s.html
                 for s in self.sections]
        return '<div class="cramp-patient-page">' + "".join(parts) + "</div>"


def _prose(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _bullets(lines: list[str]) -> tuple[str, str]:
    return ("\n".join(f"- {line}" for line in lines),
            "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")


def _as_date(value) -> date | None:
    if value in (None, ""):
        return None
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def patient_page(data: PatientData | RunOutputs, subject_id: str | None,
                 factor: str | None = None, start=None, end=None) -> PatientPage:
    """The whole page for one subject; an unknown subject gives a one-section page saying so."""
    from pipeline.report import views

    if isinstance(data, RunOutputs):
        data = load_patient_data(data)
    try:
        subject_id = require_subject(data, subject_id)
    except UserError as exc:
        return PatientPage(None, [Section("", str(exc), _prose(str(exc)))])
    start, end = _as_date(start), _as_date(end)
    page = PatientPage(subject_id)
    run = data.run
    days = views.subject_days(run, subject_id)
    episodes = views.subject_episodes(run, subject_id)
    header = (f"Subject {subject_id} (pseudonymous id; a care-team page, not for sharing): "
              f"{days.height:,} logged day(s), {episodes.height:,} episode(s)")
    if days.height:
        header += f", {days['date'].min()} to {days['date'].max()}"
    page.sections.append(Section("", header + ".",
                                 f"<p><strong>{html.escape(header)}.</strong></p>"))
    page.sections.append(_timeline(run, subject_id, days, episodes, start, end))
    page.sections.append(_findings_section(data, subject_id, factor))
    page.sections.append(_flags_section(run, subject_id, start, end))
    page.sections.append(_lags_section(data, subject_id, factor))
    return page


def _in_range(frame: pl.DataFrame, column: str, start, end) -> pl.DataFrame:
    if column not in frame.columns:
        return frame
    col = pl.col(column).cast(pl.Date) if frame.schema[column] != pl.Date else pl.col(column)
    if start is not None:
        frame = frame.filter(col >= start)
    if end is not None:
        frame = frame.filter(col <= end)
    return frame


def _timeline(run, subject_id, days, episodes, start, end) -> Section:
    days, episodes = _in_range(days, "date", start, end), _in_range(episodes, "started_at",
                                                                   start, end)
    flags = _in_range(run.red_flags.filter(pl.col("subject_id") == subject_id), "started_at",
                      start, end)
    span = ("the whole diary" if start is None and end is None
            else f"{start or 'the start'} to {end or 'the end'}")
    if days.height == 0:
        text = f"No logged days in {span}."
        return Section("Timeline", text, _prose(text))
    factors = [c for c in days.columns if c in schema.FACTOR_COLUMNS]
    units = {c: schema.FACTOR_COLUMNS[c].unit or "" for c in factors}
    picture = figures.show(figures.subject_timeline_plot(days, episodes, flags, factors,
                                                         subject_id=subject_id, units=units))
    png = base64.b64encode(picture.png()).decode("ascii")
    text = f"{picture!r} ({span})"
    image = f'<img alt="{html.escape(picture.alt)}" src="data:image/png;base64,{png}"/>'
    return Section("Timeline", text, f"{image}<p>{html.escape(span)}</p>")


def _findings_section(data, subject_id, factor) -> Section:
    title = "What goes with this person's cramps"
    found = findings(data, subject_id, factor)
    missing = not_estimated(data, subject_id, factor)
    note = ("Estimates use the person's whole diary (not only the dates shown) and are "
            "associations, not causes.")
    if factor not in (None, ALL_FACTORS):
        note = f"Showing one factor: {schema.FACTORS.get(factor, factor)}. " + note
    if found.height == 0:
        text = ("No factor has an estimate for this person"
                + (f" ({missing['why not'][0]})" if missing.height else "") + ".")
        if factor not in (None, ALL_FACTORS):
            text = f"Showing one factor: {schema.FACTORS.get(factor, factor)}. " + text
        return Section(title, text, _prose(text))
    lines = [f"{r['sentence']} Evidence: {r['evidence']}. {r['comparison']}"
             for r in found.to_dicts()]
    text, bullets = _bullets(lines)
    table = findings_table(found)
    parts_text = [note, text, repr(table)]
    parts_html = [_prose(note), bullets, table._repr_html_()]
    if missing.height:
        gaps = ShownTable(missing, "Not estimated for this person, and why.")
        parts_text.append(repr(gaps))
        parts_html.append(gaps._repr_html_())
    return Section(title, "\n".join(parts_text), "".join(parts_html))


def _flags_section(run, subject_id, start, end) -> Section:
    from pipeline.report.tables import follow_up_table

    frame = _in_range(run.red_flags.filter(pl.col("subject_id") == subject_id), "started_at",
                      start, end).sort("started_at", descending=True)
    frame = frame.with_columns(pl.col("started_at").dt.strftime("%Y-%m-%d %H:%M"))
    table = follow_up_table("patient_flags", frame, f"Red flags of {subject_id}, newest first.")
    return Section("Red flags", repr(table), table._repr_html_())


def _lags_section(data: PatientData, subject_id: str, factor) -> Section:
    title = "Lag profile"
    if data.lags is None:
        text = ("Not available: this run has no lags.csv (the distributed-lag model was not "
                "run).")
        return Section(title, text, _prose(text))
    lags = data.lags
    who = "this person's"
    if "subject_id" in lags.columns:
        lags = lags.filter(pl.col("subject_id") == subject_id)
    else:
        who = "the cohort's (the distributed-lag model estimates one profile for everyone)"
    if factor not in (None, ALL_FACTORS) and "factor" in lags.columns:
        lags = lags.filter(pl.col("factor") == factor)
    keep = [c for c in ("factor", "feature", "unit", "lag", "irr", "ci_low", "ci_high", "note")
            if c in lags.columns] or lags.columns
    floats = [c for c in keep if lags.schema[c].is_float()]
    table = ShownTable(lags.select(keep).with_columns(pl.col(floats).round(3)),
                       f"Lag profile: {who} rate ratios by days since exposure (lags.csv).")
    return Section(title, repr(table), table._repr_html_())


# --- controls (JupyterLab) ------------------------------------------------------------------------

def factor_options(data: PatientData) -> list[tuple[str, str]]:
    """``(label, factor)`` choices for the factor picker: every factor with a row."""
    factors = data.subject_effects.select("factor").unique(maintain_order=True)["factor"]
    return [(ALL_FACTORS, ALL_FACTORS)] + [
        (schema.FACTORS.get(f, f.replace("_", " ").capitalize()), f) for f in factors]


def patient_controls(run: RunOutputs, subject_id: str | None = None, factor: str | None = None,
                     start=None, end=None) -> "PatientControls":
    """The page with ipywidgets controls: subject, factor and date range rebuild it in place."""
    return PatientControls(load_patient_data(run), subject_id, factor, _as_date(start),
                           _as_date(end))


class PatientControls(widgets.VBox):
    """Controls and the page. Its display carries the static page (text and HTML) beside the
    widget view, for front ends without widgets."""

    def __init__(self, data: PatientData, subject_id=None, factor=None, start=None, end=None):
        self.data = data
        self.subject = widgets.Dropdown(
            options=list(data.subjects), description="Subject",
            value=subject_id if subject_id in data.subjects else None)
        options = factor_options(data)
        self.factor = widgets.Dropdown(
            options=options, description="Factor",
            value=factor if factor in {v for _, v in options} else ALL_FACTORS)
        self.start = widgets.DatePicker(value=start, description="From")
        self.end = widgets.DatePicker(value=end, description="To")
        self.page_html = widgets.HTML()
        self.page: PatientPage | None = None
        # The subject asked for, even when unknown (the page then says so).
        self.requested = subject_id
        super().__init__([widgets.HBox([self.subject, self.factor]),
                          widgets.HBox([self.start, self.end]), self.page_html])
        self.add_class("cramp-patient-controls")
        self.subject.observe(self._subject_changed, names="value")
        for w in (self.factor, self.start, self.end):
            w.observe(lambda _change: self.refresh(), names="value")
        self.refresh()

    def _subject_changed(self, change) -> None:
        self.requested = change["new"]
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the page for the controls' current values."""
        self.page = patient_page(self.data, self.requested, self.factor.value,
                                 self.start.value, self.end.value)
        self.page_html.value = self.page._repr_html_()

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = repr(self.page)
        bundle["text/html"] = self.page._repr_html_()
        return bundle
