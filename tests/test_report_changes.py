"""What is new since the previous report: a rule firing is new unless the previous report had the
same subject, episode and rule. Spec tables: previous report's flags, current report's flags, what
counts as new."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.report.changes import change_summary, new_flags, read_changes, write_changes

HEADER = "episode_id,subject_id,started_at,rule_id,severity,evidence"

PREVIOUS = """
E1,S1,2026-03-01T08:00:00,severe_pain,red_flag,pain=8
E1,S1,2026-03-01T08:00:00,numbness,red_flag,numbness=one_leg
E2,S2,2026-03-02T21:00:00,prolonged,advisory,duration_min=20
"""

CURRENT = """
E1,S1,2026-03-01T08:00:00,severe_pain,red_flag,pain=8
E1,S1,2026-03-01T08:00:00,numbness,red_flag,numbness=one_leg
E2,S2,2026-03-02T21:00:00,prolonged,advisory,duration_min=20
E2,S2,2026-03-02T21:00:00,swelling,red_flag,swelling=true
E3,S1,2026-03-05T07:30:00,sleep_loss,red_flag,sleep_loss=true
E4,S3,2026-03-06T12:00:00,prolonged,advisory,duration_min=30
"""

#: (episode_id, rule_id) of the firings that are new in CURRENT.
EXPECTED_NEW = [("E2", "swelling"), ("E3", "sleep_loss"), ("E4", "prolonged")]


def _run(root: Path, name: str, rows: str) -> Path:
    run = root / name
    run.mkdir()
    (run / "red_flags.csv").write_text(HEADER + "\n" + rows.strip() + "\n")
    return run


def test_new_flags_are_the_firings_the_previous_report_did_not_have(tmp_path):
    previous, current = _run(tmp_path, "prev", PREVIOUS), _run(tmp_path, "cur", CURRENT)
    fresh = new_flags(current, previous)
    assert list(zip(fresh["episode_id"], fresh["rule_id"])) == EXPECTED_NEW
    assert fresh.columns == HEADER.split(",")
    assert fresh.schema["started_at"] == pl.Datetime("us")


def test_with_no_previous_report_every_flag_is_new(tmp_path):
    current = _run(tmp_path, "cur", CURRENT)
    assert new_flags(current, None).height == 6


def test_the_same_episode_id_of_another_subject_is_another_episode(tmp_path):
    previous = _run(tmp_path, "prev", "\nE1,S9,2026-03-01T08:00:00,severe_pain,red_flag,pain=8\n")
    current = _run(tmp_path, "cur", "\nE1,S1,2026-03-01T08:00:00,severe_pain,red_flag,pain=8\n")
    assert new_flags(current, previous).height == 1


def test_change_summary_counts_new_red_flags_and_newly_flagged_subjects(tmp_path):
    previous, current = _run(tmp_path, "2026-03-01", PREVIOUS), _run(tmp_path, "cur", CURRENT)
    summary = change_summary(current, previous)
    assert summary == {
        "previous_report": "2026-03-01",
        "new_flags": 3,
        "new_red_flag_firings": 2,    # E2 swelling, E3 sleep_loss (E4 is an advisory)
        "new_red_flags": 2,           # in episodes: E2, E3
        "new_red_flag_subjects": 2,   # S2, S1
        "new_flagged_subjects": 1,    # S3 had no flag before
    }
    write_changes(current, previous)
    assert read_changes(current) == summary
    assert read_changes(tmp_path) == {}


def test_new_red_flags_count_episodes_as_the_report_header_does(tmp_path):
    current = _run(tmp_path, "cur", CURRENT)  # E1 fires two red-flag rules: one episode
    summary = change_summary(current, None)
    assert (summary["new_red_flag_firings"], summary["new_red_flags"]) == (4, 3)


def test_an_empty_previous_report_makes_every_flag_new(tmp_path):
    previous, current = _run(tmp_path, "prev", ""), _run(tmp_path, "cur", CURRENT)
    assert new_flags(current, previous).height == 6
    assert change_summary(current, previous)["new_flagged_subjects"] == 3
