"""The tables and figures the notebooks show: small tables in, expected tables out."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pytest

from pipeline.errors import UserError
from pipeline.report import figures, tables, views
from pipeline.report.demo import write_demo_run
from pipeline.report.load import load_run


def flags(*rows):
    """Red-flag rows: (subject_id, started_at 'YYYY-MM-DD HH:MM', rule_id, severity)."""
    return pl.DataFrame(
        [{"episode_id": f"E{i}", "subject_id": s, "started_at": dt.datetime.fromisoformat(t),
          "rule_id": r, "severity": sev, "evidence": ""} for i, (s, t, r, sev) in enumerate(rows)],
        schema={"episode_id": pl.String, "subject_id": pl.String,
                "started_at": pl.Datetime("us"), "rule_id": pl.String, "severity": pl.String,
                "evidence": pl.String})


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    return load_run(write_demo_run(tmp_path_factory.mktemp("run")))


def test_flags_by_rule_counts_episodes_and_distinct_subjects_red_flags_first():
    given = flags(
        ("S1", "2026-01-05 08:00", "prolonged", "advisory"),
        ("S1", "2026-01-05 08:00", "numbness", "red_flag"),
        ("S1", "2026-01-09 08:00", "numbness", "red_flag"),
        ("S2", "2026-01-10 08:00", "numbness", "red_flag"),
    )
    assert tables.flags_by_rule(given).rows() == [
        ("numbness", "red_flag", 3, 2),
        ("prolonged", "advisory", 1, 1),
    ]


def test_flags_over_time_fills_every_period_and_rule_with_zeros():
    given = flags(
        ("S1", "2026-01-05 08:00", "numbness", "red_flag"),   # Monday
        ("S1", "2026-01-20 08:00", "swelling", "red_flag"),   # two weeks later
    )
    out = tables.flags_over_time(given, every="1w")
    # Without the diary's dates the flags' own range is the window: the last week is cut short.
    assert out.rows() == [
        (dt.date(2026, 1, 5), "numbness", 1, "full"), (dt.date(2026, 1, 5), "swelling", 0, "full"),
        (dt.date(2026, 1, 12), "numbness", 0, "full"),
        (dt.date(2026, 1, 12), "swelling", 0, "full"),
        (dt.date(2026, 1, 19), "numbness", 0, "partial: 2 of 7 days"),
        (dt.date(2026, 1, 19), "swelling", 1, "partial: 2 of 7 days"),
    ]


@pytest.mark.parametrize("first_day, last_day, every, coverage", [
    # diary window           period   coverage per period, first to last
    ("2026-01-01", "2026-03-31", "1mo", ["full", "full", "full"]),
    ("2026-01-10", "2026-03-31", "1mo", ["partial: 22 of 31 days", "full", "full"]),
    ("2026-01-01", "2026-03-04", "1mo", ["full", "full", "partial: 4 of 31 days"]),
    ("2025-12-30", "2026-03-04", "1mo", ["partial: 2 of 31 days", "full", "full",
                                         "partial: 4 of 31 days"]),
    # weeks start on Monday: Wednesday 14 January leaves 5 of its week's days, 4 March 3
    ("2026-01-14", "2026-03-04", "1w", ["partial: 5 of 7 days"] + ["full"] * 6 + [
        "partial: 3 of 7 days"]),
])
def test_flags_over_time_marks_periods_the_diary_covers_only_in_part(first_day, last_day, every,
                                                                     coverage):
    given = flags(("S1", "2026-01-15 08:00", "numbness", "red_flag"),
                  ("S1", "2026-03-02 08:00", "numbness", "red_flag"))
    out = tables.flags_over_time(given, every, first_day, last_day)
    assert out["coverage"].to_list() == coverage
    assert out["episodes"].sum() == 2


def test_flags_over_time_chart_draws_partial_periods_hollow_and_says_so(demo_run):
    shown = views.flags_over_time_table(demo_run)
    frame = shown.frame
    partial = frame.filter(pl.col("coverage") != "full")
    # The demo diary runs 2026-01-05 to 2026-04-04: January and April are partial months.
    assert partial["period"].unique().sort().to_list() == [dt.date(2026, 1, 1),
                                                          dt.date(2026, 4, 1)]
    assert ("2026-01-01 (the diary starts 2026-01-05), 2026-04-01 (the diary ends 2026-04-04)"
            in shown.caption)
    assert partial["coverage"].unique().sort().to_list() == ["partial: 27 of 31 days",
                                                            "partial: 4 of 30 days"]
    fig = figures.counts_over_time_plot(frame)
    ax = fig.axes[0]
    hollow = [c for c in ax.collections if c.get_label() == "_partial"]
    assert sum(len(c.get_offsets()) for c in hollow) == partial["episodes"].is_not_null().sum()
    assert figures.PARTIAL_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]


def test_subjects_by_days_logged_bins_every_subject_once():
    daily = pl.LazyFrame({"subject_id": ["a"] * 3 + ["b"] * 8 + ["c"] * 100})
    out = tables.subjects_by_days_logged(daily)
    assert dict(out.rows()) == {"1–7": 1, "8–14": 1, "15–30": 0, "31–60": 0, "61–90": 0,
                                "91–180": 1, "181–365": 0, "366+": 0}


def test_missingness_is_percent_of_accepted_rows_per_schema_column():
    daily = pl.LazyFrame({"subject_id": ["a", "a", "b", "b"], "date": [dt.date(2026, 1, d)
                                                                        for d in (1, 2, 1, 2)],
                          "fluid_l": [1.0, None, None, None], "source_file": ["x"] * 4,
                          "source_line": [1, 2, 3, 4]})
    out = tables.missingness({"daily": daily})
    assert out.rows() == [("daily", "subject_id", 0.0), ("daily", "date", 0.0),
                          ("daily", "fluid_l", 75.0)]


def test_aggregate_table_suppresses_and_writes_what_it_shows(tmp_path):
    frame = pl.DataFrame({"rule_id": ["a", "b", "c"], "episodes": [0, 3, 12]})
    shown = tables.aggregate_table("by_rule", frame, ["episodes"], "Flags.", tables_dir=tmp_path)
    assert shown.frame["episodes"].to_list() == [0, None, 10]
    assert "≤7" in repr(shown) and "≤7" in shown._repr_html_()
    written = pl.read_csv(tmp_path / "aggregate" / "by_rule.csv")
    assert written["episodes"].to_list() == [0, None, 10]


def test_follow_up_table_is_never_suppressed_and_says_it_lists_ids(tmp_path):
    frame = pl.DataFrame({"subject_id": ["S1"], "total_flags": [1]})
    shown = tables.follow_up_table("subjects", frame, "Subjects.", tables_dir=tmp_path)
    assert shown.frame["total_flags"].to_list() == [1]
    assert "pseudonymous subject ids" in shown.caption
    assert (tmp_path / "follow_up" / "subjects.csv").is_file()


def test_shown_table_text_and_html_are_deterministic_and_escaped():
    shown = tables.ShownTable(pl.DataFrame({"x": ["<b>"], "n": [1.23456], "k": [12345]}),
                              "Cap & more")
    assert repr(shown) == "Cap & more\nx    n     k\n---  ----  ------\n<b>  1.23  12,345"
    page = shown._repr_html_()
    assert "&lt;b&gt;" in page and "Cap &amp; more" in page
    # Numbers sit under their headers: both right-aligned; the caption wraps as a paragraph.
    assert '<th class="num">n</th>' in page and '<td class="num">1.23</td>' in page
    assert '<th>x</th>' in page and '<p class="table-caption">Cap &amp; more</p>' in page


def test_effects_table_leads_with_within_subject_and_keeps_estimates_as_fitted(demo_run):
    shown = views.effects_table(demo_run.effects)
    headings = [h for h, _ in shown.parts]
    assert headings == ["Within-subject (lead estimate)", "Population"]
    within = shown.parts[0][1].frame
    sitting = within.filter(pl.col("factor") == "Sitting")
    assert sitting["IRR (95% CI)"][0] == "1.04 (1.03 to 1.05)"
    assert sitting["episodes"][0] == 610  # 612 rounded to the nearest 5 (default policy)
    alcohol = within.filter(pl.col("factor") == "Alcohol")
    assert alcohol["IRR (95% CI)"].to_list() == [None]
    # Long notes become footnotes so the table stays readable.
    assert alcohol["note"].to_list() == ["[1]"]
    assert shown.caption.endswith("Notes: [1] no within-subject variation.")
    # Every row is shown, one table per model, under the model's heading.
    page = shown._repr_html_()
    assert page.count("<table") == 2 and page.count("<tr>") == 2 * (1 + 6)
    assert '<h3 class="table-heading">Population</h3>' in page


def test_the_care_team_report_shows_exact_counts_and_says_so(demo_run):
    exact = views.disclosure_policy(identifiers=True)
    shown = views.flag_counts_table(demo_run, policy=exact)
    expected = demo_run.red_flags.group_by("rule_id").len().sort("rule_id")
    got = shown.frame.select("rule_id", "episodes").sort("rule_id")
    assert got["episodes"].to_list() == expected["len"].to_list()  # 9, 8, ...: not rounded
    assert "Counts are exact (care-team report" in shown.caption
    effects = views.effects_table(demo_run.effects, policy=exact)
    assert effects.parts[0][1].frame["episodes"][0] == 612
    shareable = views.flag_counts_table(demo_run, policy=views.disclosure_policy(False))
    assert "Counts of 1–7 shown as ≤7" in shareable.caption
    assert all(n is None or n % 5 == 0 for n in shareable.frame["episodes"])


def test_not_recorded_table_sums_per_rule_and_lists_the_fields(demo_run):
    out = views.not_recorded_table(demo_run).frame
    assert out.rows() == [("numbness", 10, None, "numbness"),
                          ("severe_pain", None, None, "pain"),
                          ("swelling", None, None, "swelling")]


def test_calibration_frame_is_mean_episodes_per_subject_day(demo_run):
    out = views.calibration_frame(demo_run.diagnostics)
    first = out.filter((pl.col("model") == "within_subject") & (pl.col("decile") == 1)).row(0)
    assert first[2] == pytest.approx(0.07) and first[3] == pytest.approx(26 / 360)


def test_default_subject_is_the_one_with_most_red_flags():
    run_flags = flags(("S2", "2026-01-05 08:00", "prolonged", "advisory"),
                      ("S2", "2026-01-06 08:00", "prolonged", "advisory"),
                      ("S1", "2026-01-05 08:00", "numbness", "red_flag"))
    run = views.RunOutputs(path=None, summary={}, quarantine=None, effects=None,
                           dose_response=None, diagnostics={}, red_flags=run_flags,
                           subject_flags=None, not_recorded=None, store_dir=None)
    assert views.default_subject(run) == "S1"


def test_load_run_names_missing_files(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"tables": {}}))
    with pytest.raises(UserError, match="missing quarantine.csv, effects.csv"):
        load_run(tmp_path)
    with pytest.raises(UserError, match="run directory not found"):
        load_run(tmp_path / "nope")


def test_figures_render_with_titles_as_alt_text(demo_run):
    forest = figures.show(figures.forest_plot(demo_run.effects))
    assert forest.alt == "Each factor's association with daily cramp frequency"
    png = forest.png()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    for fig in (figures.dose_response_plot(demo_run.dose_response),
                figures.calibration_plot(views.calibration_frame(demo_run.diagnostics)),
                figures.counts_over_time_plot(views.flags_over_time_table(demo_run).frame)):
        assert figures.show(fig).png().startswith(b"\x89PNG")


def test_forest_plot_uses_a_log_axis_and_labels_units(demo_run):
    fig = figures.forest_plot(demo_run.effects)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "Sitting (per 1 h)" in labels and "Electrolyte drink (yes vs no)" in labels
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {
        views.model_label("within_subject"), views.model_label("population")}


def test_subject_timeline_marks_flagged_days():
    days = pl.DataFrame({"date": [dt.date(2026, 1, d) for d in range(1, 11)],
                         "sitting_h": [float(d) for d in range(10)],
                         "fluid_l": [None] * 10})
    episodes = pl.DataFrame({"started_at": [dt.datetime(2026, 1, 3, 7), dt.datetime(2026, 1, 3, 9),
                                            dt.datetime(2026, 1, 8, 22)]})
    flagged = flags(("S1", "2026-01-08 22:00", "numbness", "red_flag"))
    fig = figures.subject_timeline_plot(days, episodes, flagged, ["sitting_h", "fluid_l"],
                                        subject_id="S1", units={"sitting_h": "h"})
    assert len(fig.axes) == 2  # episodes + sitting; the all-empty fluid column is left out
    markers = [c for c in fig.axes[0].collections if c.get_label() == "day with a flagged episode"]
    assert len(markers) == 1 and len(markers[0].get_offsets()) == 1


def test_a_run_with_no_flags_and_no_curves_still_shows_every_table_and_figure(tmp_path):
    run_dir = write_demo_run(tmp_path / "run")
    header_only = {"red_flags.csv": "episode_id,subject_id,started_at,rule_id,severity,evidence\n",
                   "dose_response.csv": "model,feature,unit,x,reference_x,irr,ci_low,ci_high\n",
                   "red_flags_not_recorded.csv":
                       "rule_id,severity,subject_id,n_episodes,n_not_recorded,missing_fields\n"}
    for name, text in header_only.items():
        (run_dir / name).write_text(text)
    run = load_run(run_dir)
    assert views.flag_counts_table(run).frame.height == 0
    assert views.flags_over_time_table(run).frame.height == 0
    assert views.flags_over_time_by_rule(run, views.flags_over_time_table(run)).frame.height == 0
    assert views.worklist_table(run).frame.height == 0
    assert views.flagged_episodes_table(run).frame.height == 0
    assert "(no rows)" in repr(views.worklist_table(run))
    assert views.not_recorded_table(run).frame.height == 0
    assert views.default_subject(run) is None
    figures.show(figures.counts_over_time_plot(views.flags_over_time_table(run).frame)).png()
    figures.show(figures.dose_response_plot(run.dose_response)).png()
    no_estimates = run.effects.with_columns(pl.lit(None, pl.Float64).alias(c)
                                            for c in ("irr", "ci_low", "ci_high"))
    figures.show(figures.forest_plot(no_estimates)).png()
    assert "no estimate" in views.sentences(no_estimates).text


def test_rules_table_shows_the_rule_file_the_run_used(demo_run, tmp_path):
    from importlib import resources

    shipped = resources.files("pipeline.redflags").joinpath("rules.toml").read_text()
    assert "pain_threshold = { value = 7" in shipped
    custom = tmp_path / "rules.toml"
    custom.write_text(shipped.replace("pain_threshold = { value = 7", "pain_threshold = { value = 8"))
    assert "pain ≥ 7, or pain_uncontrolled is yes" in repr(views.rules_table(demo_run))
    assert "pain ≥ 8, or pain_uncontrolled is yes" in repr(views.rules_table(demo_run, custom))


def test_store_totals_count_every_file_in_the_store_not_only_this_runs(tmp_path):
    from pipeline.report.tables import store_counts

    summary = {
        "tables": {"daily": {"read": 0, "accepted": 0, "quarantined": 0, "duplicates": 0}},
        "store_totals": {"daily": {"files": 2, "rows": 120, "accepted": 118}},
    }
    frame = store_counts(summary)
    assert frame.to_dicts() == [{"table": "daily", "rows": 120, "accepted": 118}]
    assert store_counts({"tables": {}}).height == 0


def test_a_subject_not_in_the_data_is_a_clear_error_not_an_empty_timeline(tmp_path):
    """Notebook 04 with a mistyped subject id says so (the store is the sample's)."""
    from pipeline.errors import UserError
    from pipeline.report import views
    from pipeline.report.sample import ensure_sample_run

    run = load_run(ensure_sample_run())
    known = run.red_flags["subject_id"][0]
    assert views.check_subject(run, known) == known
    assert views.subject_days(run, known).height > 0
    for call in (views.subject_days, views.subject_episodes, views.subject_flags_table,
                 views.subject_timeline):
        with pytest.raises(UserError, match=r"subject 'S99999' is not in this run's data"):
            call(run, "S99999")


def test_a_run_without_its_store_is_an_error_in_the_data_quality_tables(tmp_path):
    """A store that cannot be found must not turn into an empty days-logged table."""
    import shutil

    from pipeline.errors import UserError
    from pipeline.report import views
    from pipeline.report.sample import ensure_sample_run

    run_dir = tmp_path / "run"
    shutil.copytree(ensure_sample_run(), run_dir, ignore=shutil.ignore_patterns("store"))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["store_dir"] = str(tmp_path / "gone")
    (run_dir / "summary.json").write_text(json.dumps(summary))
    run = load_run(run_dir)
    for call in (views.days_logged_table, views.missingness_table):
        with pytest.raises(UserError, match="the run's store was not found"):
            call(run)
    (tmp_path / "empty-store").mkdir()
    with pytest.raises(UserError, match="the run's store is empty"):
        views.days_logged_table(load_run(run_dir, store_dir=tmp_path / "empty-store"))
    with pytest.raises(UserError, match="store directory was not found"):
        load_run(run_dir, store_dir=tmp_path / "nope")


def test_flags_over_time_reads_one_row_per_period_with_red_flag_rules_first(demo_run):
    over_time = views.flags_over_time_table(demo_run, policy=views.EXACT_COUNTS)
    wide = views.flags_over_time_by_rule(demo_run, over_time)
    assert wide.frame.columns == ["period", "numbness", "severe_pain", "skin_changes",
                                  "sleep_loss", "swelling", "emergency_visit", "prolonged",
                                  "coverage"]
    assert wide.frame.height == over_time.frame["period"].n_unique() == 4
    assert wide.frame.select(pl.sum_horizontal(pl.exclude("period", "coverage"))).sum().item() \
        == demo_run.red_flags.height
    assert wide.frame["coverage"].to_list()[0] == "partial: 27 of 31 days"
    assert wide.caption == over_time.caption
