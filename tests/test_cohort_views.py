"""The cohort and subgroup section of the report: the sentence appears only for interactions that
survive the FDR correction; otherwise it says no difference was found."""

from __future__ import annotations

import polars as pl
import pytest

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


@pytest.mark.slow
@pytest.mark.xdist_group("report")
def test_the_report_opens_with_the_cohort_section_and_shows_subgroups_after_the_effects(
        tmp_path_factory):
    """On the bundled sample's rendered report (shared with tests/test_report_render.py)."""
    import re

    from tests.test_report_render import rendered_reports

    html = (rendered_reports(tmp_path_factory)["shareable"] / "report.html").read_text(
        encoding="utf-8")
    ids = re.findall(r'<section id="([a-z0-9-]+)">', html)
    assert ids[0] == "who-is-in-the-data"
    assert ids.index("effects") < ids.index("subgroups") < ids.index("data-quality")
    cohort = html.split('<section id="who-is-in-the-data">')[1].split("</section>")[0]
    assert "frequent cramps advisory" in cohort and "night (22:00–06:00)" in cohort
    assert "Episodes by time of day" in cohort  # the figure by hour (alt text)


def test_figures_read_the_disclosed_cohort_table_and_a_missing_one_is_a_user_error(tmp_path):
    from types import SimpleNamespace

    from pipeline import atomic
    from pipeline.disclosure import DEFAULT_POLICY
    from pipeline.errors import UserError
    from pipeline.report.cohort_views import hour_frame, load_cohort, pain_figure
    from tests.test_cohort import _cohort

    run = SimpleNamespace(path=tmp_path)
    with pytest.raises(UserError, match="no cohort.csv"):
        load_cohort(run)
    atomic.write_csv(tmp_path / "cohort.csv", _cohort(policy=DEFAULT_POLICY))
    hours = hour_frame(run)
    assert hours["hour"].to_list() == [f"{h:02d}" for h in range(24)]
    # five episodes in all, each hour holds 0 or 1 of them: shown as 0 or suppressed, never 1
    assert set(hours["episodes"].to_list()) <= {0, None}
    assert pain_figure(run).axes[0].get_title() == "Episodes by pain score"
