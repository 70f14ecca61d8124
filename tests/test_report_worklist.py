"""The red-flag follow-up as a worklist: one row per flagged subject, most severe first, then most
recent; the latest flagged episode, counts, and whether anything is NEW since the previous report.
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from pipeline.errors import UserError
from pipeline.report import views
from pipeline.report.demo import write_demo_run
from pipeline.report.load import load_run
from pipeline.report.tables import FOLLOW_UP_ROWS


def flags(*rows):
    """Red-flag rows: (episode_id, subject_id, started_at, rule_id, severity, evidence)."""
    return pl.DataFrame(
        [{"episode_id": e, "subject_id": s, "started_at": dt.datetime.fromisoformat(t),
          "rule_id": r, "severity": sev, "evidence": ev} for e, s, t, r, sev, ev in rows],
        schema={"episode_id": pl.String, "subject_id": pl.String,
                "started_at": pl.Datetime("us"), "rule_id": pl.String, "severity": pl.String,
                "evidence": pl.String})


def run_with(red_flags: pl.DataFrame) -> views.RunOutputs:
    return views.RunOutputs(path=None, summary={}, quarantine=None, effects=None,
                            dose_response=None, diagnostics={}, red_flags=red_flags,
                            subject_flags=None, not_recorded=None, store_dir=None)


PREVIOUS = flags(
    ("E1", "S1", "2026-01-05 08:00", "prolonged", "advisory", "duration_min=20"),
    ("E2", "S2", "2026-01-06 08:00", "numbness", "red_flag", "numbness=one_leg"),
    ("E3", "S3", "2026-01-07 08:00", "severe_pain", "red_flag", "pain=8"),
)
CURRENT = PREVIOUS.vstack(flags(
    ("E4", "S1", "2026-01-20 08:00", "prolonged", "advisory", "duration_min=25"),
    ("E5", "S2", "2026-01-09 21:00", "numbness", "red_flag", "numbness=both_legs"),
    ("E5", "S2", "2026-01-09 21:00", "swelling", "red_flag", "swelling=true"),
    ("E6", "S4", "2026-01-08 09:00", "emergency_visit", "advisory", "er_visit=true"),
))

COLUMNS = ["subject_id", "severity", "new", "latest_started_at", "latest_rules",
           "latest_evidence", "flagged_episodes", "new_episodes", "latest_episode_id"]


def test_worklist_is_red_flags_first_then_most_recent_with_what_is_new():
    out = views.worklist(run_with(CURRENT), run_with(PREVIOUS))
    assert out.columns == COLUMNS
    assert out.rows() == [
        # S2's latest episode met two rules; it is the one new episode
        ("S2", "red_flag", "NEW", "2026-01-09 21:00", "numbness, swelling",
         "numbness=both_legs; swelling=true", 2, 1, "E5"),
        # S3 has nothing new since the previous report
        ("S3", "red_flag", "", "2026-01-07 08:00", "severe_pain", "pain=8", 1, 0, "E3"),
        # advisories after every red flag, however recent
        ("S1", "advisory", "NEW", "2026-01-20 08:00", "prolonged", "duration_min=25", 2, 1, "E4"),
        ("S4", "advisory", "NEW", "2026-01-08 09:00", "emergency_visit", "er_visit=true", 1, 1,
         "E6"),
    ]


def test_with_no_previous_report_every_flag_is_new():
    out = views.worklist(run_with(CURRENT))
    assert out["new"].to_list() == ["NEW"] * 4
    assert out["new_episodes"].sum() == CURRENT["episode_id"].n_unique()


def test_a_new_rule_firing_on_a_known_episode_is_new():
    previous = flags(("E5", "S2", "2026-01-09 21:00", "numbness", "red_flag", ""))
    current = previous.vstack(flags(("E5", "S2", "2026-01-09 21:00", "swelling", "red_flag", "")))
    out = views.worklist(run_with(current), run_with(previous))
    assert out.select("new", "flagged_episodes", "new_episodes").row(0) == ("NEW", 1, 1)


def test_the_previous_report_is_read_from_its_run_directory(tmp_path):
    previous_dir = write_demo_run(tmp_path / "previous")
    run = load_run(write_demo_run(tmp_path / "current"))
    assert views.worklist(run, previous_dir)["new"].to_list() == [""] * run.red_flags[
        "subject_id"].n_unique()
    with pytest.raises(UserError, match="previous report's red_flags.csv"):
        views.worklist(run, tmp_path / "nowhere")


def test_worklist_table_shows_the_top_rows_and_writes_every_row(tmp_path):
    many = flags(*[(f"E{i}", f"S{i:05d}", f"2026-01-01 {i % 24:02d}:00", "numbness", "red_flag",
                    "") for i in range(FOLLOW_UP_ROWS + 50)])
    shown = views.worklist_table(run_with(many), tables_dir=tmp_path)
    assert shown.frame.height == FOLLOW_UP_ROWS
    assert f"Showing the first {FOLLOW_UP_ROWS} of {FOLLOW_UP_ROWS + 50} rows" in shown.caption
    written = pl.read_csv(tmp_path / "follow_up" / "worklist.csv")
    assert written.height == FOLLOW_UP_ROWS + 50
    assert "there is none, so every flag counts as new" in shown.caption


def test_flagged_episodes_are_most_severe_then_most_recent_first(tmp_path):
    shown = views.flagged_episodes_table(run_with(CURRENT), tables_dir=tmp_path, top=3)
    assert shown.frame.select("episode_id", "rule_id").rows() == [
        ("E5", "numbness"), ("E5", "swelling"), ("E3", "severe_pain")]
    assert "every row is in red_flags.csv beside the report" in shown.caption
    assert pl.read_csv(tmp_path / "follow_up" / "red_flags.csv").height == CURRENT.height


def test_notebook_03_marks_what_is_new_since_the_previous_report(tmp_path):
    """The scheduled job passes papermill ``previous_run_dir``; the worklist then marks NEW exactly
    the subjects with a flag the previous report did not have."""
    import nbformat

    from pipeline.report.render import NOTEBOOKS_DIR, execute_notebook

    nb = nbformat.read(NOTEBOOKS_DIR / "03-red-flags.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "previous_run_dir = None" in params.source

    current = write_demo_run(tmp_path / "current")
    previous = write_demo_run(tmp_path / "previous")
    flags = pl.read_csv(previous / "red_flags.csv", infer_schema_length=None)
    dropped = flags.filter(pl.col("subject_id").is_in(["S000", "S007"]))
    flags.join(dropped, on=["episode_id", "rule_id"], how="anti").write_csv(
        previous / "red_flags.csv")
    tables = tmp_path / "tables"
    execute_notebook("03-red-flags", tmp_path / "03.ipynb", {
        "run_dir": str(current), "tables_dir": str(tables), "identifiers": True,
        "previous_run_dir": str(previous)})
    worklist = pl.read_csv(tables / "follow_up" / "worklist.csv", infer_schema_length=None)
    new = worklist.filter(pl.col("new") == "NEW")["subject_id"].sort().to_list()
    assert new == ["S000", "S007"]
    assert worklist.filter(pl.col("new") == "NEW")["new_episodes"].sum() == \
        dropped["episode_id"].n_unique()
