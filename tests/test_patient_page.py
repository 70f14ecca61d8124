"""The patient page (``pipeline/report/patient.py``): sentences, ranking, cohort comparison,
red flags newest first, lag profile, unknown subjects, and the controls outside JupyterLab.

Spec tests use hand-made rows; the page tests use the bundled sample's run (built once, cached).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import polars as pl
import pytest

from pipeline.errors import UserError
from pipeline.report import patient, views


def row(**kw) -> dict:
    base = {"subject_id": "S1", "factor": "dehydration", "feature": "fluid_l", "unit": "per 1 L",
            "irr": 0.75, "ci_low": 0.6, "ci_high": 0.9, "weight_own": 0.5}
    return {**base, **kw}


def het(**kw) -> dict:
    base = {"feature": "fluid_l", "tau": 0.2, "within_subject_irr": 0.85, "range_low": 0.57,
            "range_high": 1.27}
    return {**base, **kw}


@pytest.mark.parametrize("given, expected", [
    (row(), "On days with one more litre of fluid, this person had about 25% fewer cramps "
            "(95% CI 10% to 40%)."),
    (row(irr=1.2, ci_low=0.9, ci_high=1.6),
     "On days with one more litre of fluid, this person had about 20% more cramps, but the data "
     "are compatible with no difference (95% CI from 10% fewer to 60% more)."),
    (row(feature="electrolytes", factor="low_electrolytes", unit="yes vs no", irr=0.5,
         ci_low=0.3, ci_high=0.8),
     "On days with an electrolyte drink or supplement (compared with days without), this person "
     "had about 50% fewer cramps (95% CI 20% to 70%)."),
])
def test_person_sentence(given, expected):
    assert patient.person_sentence(given) == expected


@pytest.mark.parametrize("given, h, expected", [
    # no heterogeneity: the page says people do not differ
    (row(), het(tau=0.0), "the data show no sign that people differ in this, so this person's "
                          "estimate is the cohort's (with a wider interval"),
    # log(0.75/0.85)/0.2 = -0.626, Phi = 0.266: below about 73% of people
    (row(), het(), "this person's rate ratio is lower than that of about 73% of people."),
    (row(irr=0.95), het(), "higher than that of about 71% of people"),
    (row(weight_own=0.1), het(), "Their own diary says little about this: 10% of the estimate"),
    (row(), None, "No comparison with the cohort"),
])
def test_cohort_sentence(given, h, expected):
    assert expected in patient.cohort_sentence(given, h)


@pytest.mark.parametrize("z, label", [(4.0, "strong"), (3.29, "strong"), (2.0, "clear"),
                                      (1.5, "weak (compatible with no difference)")])
def test_evidence_labels(z, label):
    assert patient.evidence_label(z) == label


@pytest.fixture(scope="module")
def data():
    return patient.load_patient_data(views.open_run(None))


@pytest.fixture(scope="module")
def subject(data):
    return views.default_subject(data.run)


def test_findings_are_ranked_by_strength_of_evidence(data, subject):
    found = patient.findings(data, subject)
    assert found.height >= 3
    z = found["z"].to_list()
    assert z == sorted(z, reverse=True)
    assert found["sentence"].str.contains("this person had about").all()


def test_factor_picker_limits_findings_to_one_factor(data, subject):
    found = patient.findings(data, subject, "dehydration")
    assert set(found["factor"]) <= {"dehydration"} and found.height >= 1


def test_page_has_every_section_and_red_flags_newest_first(data, subject):
    page = patient.patient_page(data, subject)
    titles = [s.title for s in page.sections]
    assert titles == ["", "Timeline", "What goes with this person's cramps", "Red flags",
                      "Lag profile"]
    text = repr(page)
    assert f"Subject {subject} (pseudonymous id" in text
    # The sample run has lags.csv (the distributed-lag model): the profile is shown, not "n/a".
    assert "Lag profile\nNot available" not in text and "joint tests:" in text
    flags = data.run.red_flags.filter(pl.col("subject_id") == subject)
    shown = patient._flags_section(data.run, subject, None, None)
    assert flags.height >= 1
    times = [line.split()[2] + " " + line.split()[3] for line in shown.text.splitlines()[3:]]
    assert times == sorted(times, reverse=True) and len(times) == flags.height
    assert "<img alt=" in page._repr_html_()


def test_date_range_limits_the_timeline_and_flags(data, subject):
    flags = data.run.red_flags.filter(pl.col("subject_id") == subject).sort("started_at")
    last = flags["started_at"][-1].date()
    after = patient._flags_section(data.run, subject, last + dt.timedelta(days=1), None)
    assert "(no rows)" in after.text
    page = patient.patient_page(data, subject, start=last + dt.timedelta(days=1),
                                end=last + dt.timedelta(days=2))
    assert f"{last + dt.timedelta(days=1)} to {last + dt.timedelta(days=2)}" in repr(page)


def test_an_unknown_subject_is_a_clear_message(data):
    page = patient.patient_page(data, "S99999")
    assert repr(page) == ("subject 'S99999' is not in this run's data (200 subjects, e.g. "
                          "S00001, S00002, S00003)")
    with pytest.raises(UserError, match="not in this run's data"):
        patient.require_subject(data, "nope")


def test_lag_profile_is_shown_when_the_run_has_lags(data, subject):
    lags = pl.DataFrame({"model": ["within_subject_lags"] * 2, "factor": ["dehydration"] * 2,
                         "feature": ["fluid_l"] * 2, "unit": ["per 1 L"] * 2, "lag": ["0", "1"],
                         "irr": [0.9, 0.95], "ci_low": [0.8, 0.85], "ci_high": [1.0, 1.05],
                         "note": [None, None]})
    section = patient._lags_section(dataclasses.replace(data, lags=lags), subject, None)
    assert "the cohort's (the distributed-lag model estimates one profile" in section.text
    assert "fluid_l" in section.text and "0.95" in section.text


def test_a_run_without_per_person_estimates_is_a_user_error(tmp_path):
    from pipeline.report.demo import write_demo_run
    from pipeline.report.load import load_run

    run = load_run(write_demo_run(tmp_path / "run"))
    with pytest.raises(UserError, match="no per-person estimates"):
        patient.load_patient_data(run)


def test_controls_show_the_static_page_without_a_widget_front_end_and_follow_the_pickers(
        data, subject):
    controls = patient.PatientControls(data, subject)
    bundle = controls._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith(f"Subject {subject} ")
    assert "cramp-patient-page" in bundle["text/html"]
    other = next(s for s in data.subjects if s != subject)
    controls.subject.value = other
    assert controls.page.subject_id == other
    assert f"Subject {other} " in controls.page_html.value
    controls.factor.value = "dehydration"
    assert "Showing one factor: Dehydration" in controls.page_html.value
    unknown = patient.PatientControls(data, "nobody")
    assert unknown.subject.value is None and "is not in this run's data" in repr(unknown.page)


def test_a_run_without_lags_says_the_profile_is_not_available(data, subject):
    section = patient._lags_section(dataclasses.replace(data, lags=None), subject, None)
    assert section.text.startswith("Not available: this run has no lags.csv")
