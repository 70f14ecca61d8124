"""The cohort and subgroup section of the report: the sentence appears only for interactions that
survive the FDR correction; otherwise it says no difference was found."""

from __future__ import annotations

import polars as pl

from pipeline.models.subgroups import SUBGROUPS
from pipeline.report.cohort_views import subgroup_sentences


def _rows(q_age: float | None) -> pl.DataFrame:
    rows = []
    for sg, irr in (("18-59", 1.01), ("60+", 1.16)):
        rows.append({"model": "within_subject", "factor": "sitting_posture",
                     "feature": "sitting_h", "unit": "per 1 h", "subgroup_variable": "age_band",
                     "subgroup": sg, "irr": irr, "ci_low": irr - 0.04, "ci_high": irr + 0.05,
                     "p_interaction": 0.0001, "q_interaction": q_age, "n_subjects": 60,
                     "n_subject_days": 3000, "n_episodes": 500, "note": None})
    return pl.DataFrame(rows, schema=SUBGROUPS.schema())


def test_an_interaction_surviving_the_fdr_gets_a_sentence_naming_the_strongest_subgroup():
    text = subgroup_sentences(_rows(0.003))
    assert "differed by age group (interaction q = 0.003)" in text
    assert "strongest in 60+" in text and "IRR 1.16 (1.12 to 1.21) in 60+" in text
    assert "not the study's primary question" in text
    assert "No difference" not in text


def test_without_a_surviving_interaction_no_difference_is_reported():
    for q in (0.2, None):
        text = subgroup_sentences(_rows(q))
        assert text.startswith("- No difference between subgroups was found")
        assert "differed" not in text and "not the study's primary question" in text
