"""Every aggregate table the shareable report writes passes small-number suppression: no count
from 1 to 7. The care-team report (identifiers) shows exact counts: it lists every flagged subject
by id, so suppression there would protect no one and would misstate red flags.

The notebooks write each aggregate they show to ``report_tables/aggregate/`` (and follow-up lists,
which are never suppressed, to ``report_tables/follow_up/``), so this scans exactly what the report
shows.
"""

from __future__ import annotations

import html
import re

import polars as pl
import pytest

from pipeline.disclosure import disclose_text, text_violations, violations
from tests.test_report_render import rendered_reports

pytestmark = pytest.mark.xdist_group("report")


@pytest.fixture(scope="session")
def rendered(tmp_path_factory):
    return rendered_reports(tmp_path_factory)

#: Aggregates the report must show (so the scan cannot pass by finding nothing).
EXPECTED_AGGREGATES = {"effects", "flags_by_rule", "flags_over_time", "flags_not_recorded",
                       "ingest_rows", "quarantine_by_reason", "subjects_by_days_logged",
                       "panel_counts"}


def test_no_aggregate_table_in_the_shareable_report_holds_a_count_from_1_to_7(rendered):
    directory = rendered["shareable"] / "report_tables" / "aggregate"
    paths = sorted(directory.glob("*.csv"))
    assert {p.stem for p in paths} >= EXPECTED_AGGREGATES
    for path in paths:
        frame = pl.read_csv(path, infer_schema_length=None)
        bad = violations(frame)
        assert bad.height == 0, f"{path.name} shows small counts:\n{bad}"


def test_the_scan_would_catch_a_small_count():
    assert violations(pl.DataFrame({"rule_id": ["x"], "episodes": [3]})).height == 1


def _research_text(page: str) -> str:
    """The report's prose and captions outside the follow-up section and the rule definitions
    (table cells are scanned as the CSVs above)."""
    page = re.sub(r'<section id="red-flag-follow-up">.*?</section>', "", page, flags=re.S)
    page = re.sub(r'<table class="cramp-table rules">.*?</table>', "", page, flags=re.S)
    page = re.sub(r"<details class=\"code\">.*?</details>", "", page, flags=re.S)
    page = re.sub(r"<tbody>.*?</tbody>", "", page, flags=re.S)
    page = re.sub(r'src="data:[^"]*"', "", page)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_no_count_from_1_to_7_is_written_in_the_shareable_reports_prose(rendered):
    text = _research_text((rendered["shareable"] / "report.html").read_text(encoding="utf-8"))
    assert "subject-days" in text  # the notes were scanned, not stripped
    assert text_violations(text) == []


def test_the_care_team_report_counts_red_flags_exactly_and_says_so(rendered):
    flags = pl.read_csv(rendered["full"] / "red_flags.csv", infer_schema_length=None)
    expected = (flags.group_by("rule_id")
                .agg(pl.len().alias("episodes"), pl.col("subject_id").n_unique().alias("subjects"))
                .sort("rule_id"))
    shown = pl.read_csv(rendered["full"] / "report_tables" / "aggregate" / "flags_by_rule.csv")
    assert shown.select("rule_id", "episodes", "subjects").sort("rule_id").rows() == \
        expected.rows()
    assert any(n % 5 for n in expected["episodes"]), "the sample should have counts rounding hides"
    over_time = pl.read_csv(rendered["full"] / "report_tables" / "aggregate" /
                            "flags_over_time.csv")
    assert over_time["episodes"].sum() == flags.height
    page = (rendered["full"] / "report.html").read_text(encoding="utf-8")
    assert "Counts are exact (care-team report" in page
    red = flags.filter(pl.col("severity") == "red_flag")
    assert f"{red['episode_id'].n_unique():,} episode(s)" in page  # the header's callout
    shareable = (rendered["shareable"] / "report.html").read_text(encoding="utf-8")
    assert "Counts are exact" not in shareable and "Counts of 1–7 shown as ≤7" in shareable


def test_counts_in_prose_are_disclosed():
    assert text_violations("3 subject(s) without episodes; 12 episodes") == ["3 subject(s)"[:1]]
    assert disclose_text("3 subject(s) without episodes") == "≤7 subject(s) without episodes"
