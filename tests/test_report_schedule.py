"""`cramp report`, the scheduled job: dated reports published atomically, an index of every
report, failures that leave everything as it was, and a lock against overlapping runs."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import json
import re

import polars as pl
from pathlib import Path

import pytest

import pipeline.report.render as render_module
import pipeline.run as run_module
from pipeline.errors import UserError
from pipeline.report.demo import write_demo_run
from pipeline.report.schedule import FAILED_NAME, LOCK_NAME, list_reports, scheduled_report

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture
def fake_job(monkeypatch):
    """run_job writes the demo run; render_report writes a one-line report. Records calls."""
    calls = []

    def run_job(data_dir, out_dir, *, store_dir=None, rules_path=None, report=True,
                identifiers=True, progress=False, **_):
        calls.append({"data_dir": Path(data_dir), "out_dir": Path(out_dir),
                      "store_dir": store_dir, "report": report})
        write_demo_run(Path(out_dir))
        return {"summary": {}, "messages": []}

    def render_report(run_dir, *, identifiers=True, store_dir=None, rules_path=None, **_):
        path = Path(run_dir) / "report.html"
        path.write_text(f"<html>report identifiers={identifiers}</html>")
        return path

    monkeypatch.setattr(run_module, "run_job", run_job)
    monkeypatch.setattr(render_module, "render_report", render_report)
    return calls


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def day(d: int) -> dt.datetime:
    return dt.datetime(2026, 3, d, 6, 0)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME and FAILED_NAME not in p.parts}


def test_publishes_a_dated_report_and_an_index_of_every_report(tmp_path, fake_job):
    reports = tmp_path / "reports"
    first = scheduled_report(SAMPLE, reports, now=day(1))
    second = scheduled_report(SAMPLE, reports, now=day(2))
    assert first == reports / "2026-03-01" and second == reports / "2026-03-02"
    assert (second / "report.html").is_file() and (second / "effects.csv").is_file()
    index = (reports / "index.html").read_text()
    assert index.index("2026-03-02/report.html") < index.index("2026-03-01/report.html")
    assert "2026-01-05 to 2026-04-04" in index
    # The store lives inside the reports directory, so each run only ingests what is new.
    assert {c["store_dir"] for c in fake_job} == {reports / "store"}
    # Published files follow the umask (temporary files start private).
    assert (second / "report.html").stat().st_mode & 0o777 == 0o666 & ~current_umask()
    # Nothing half-built is left behind.
    assert [p.name for p in reports.iterdir() if p.name.startswith(".building")] == []


def test_a_second_run_on_the_same_day_replaces_that_days_report(tmp_path, fake_job):
    reports = tmp_path / "reports"
    scheduled_report(SAMPLE, reports, now=day(1), identifiers=True)
    scheduled_report(SAMPLE, reports, now=day(1), identifiers=False)
    assert [p.name for p in list_reports(reports)] == ["2026-03-01"]
    assert "identifiers=False" in (reports / "2026-03-01" / "report.html").read_text()
    assert [p.name for p in reports.iterdir() if p.name.startswith(".")] == [LOCK_NAME]


def test_a_failed_run_raises_and_leaves_previous_reports_and_index_intact(
        tmp_path, fake_job, monkeypatch):
    reports = tmp_path / "reports"
    scheduled_report(SAMPLE, reports, now=day(1))
    before = snapshot(reports)

    def broken(run_dir, **_):
        (Path(run_dir) / "partial.html").write_text("half")
        raise RuntimeError("notebook 02-factor-associations failed in cell 7")

    monkeypatch.setattr(render_module, "render_report", broken)
    with pytest.raises(RuntimeError, match="failed in cell 7"):
        scheduled_report(SAMPLE, reports, now=day(2))
    assert snapshot(reports) == before
    assert not (reports / "2026-03-02").exists()
    # The failed build is kept aside for diagnosis, never listed.
    assert (reports / FAILED_NAME / "partial.html").read_text() == "half"
    assert FAILED_NAME not in (reports / "index.html").read_text()


def test_a_missing_dataset_is_a_user_error(tmp_path, fake_job):
    with pytest.raises(UserError, match="dataset directory not found"):
        scheduled_report(tmp_path / "nope", tmp_path / "reports", now=day(1))


def _hold_lock(reports: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from filelock import FileLock; "
         f"l = FileLock({str(reports / LOCK_NAME)!r}); l.acquire(); print('held', flush=True); "
         "time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_an_overlapping_run_stops_with_a_clear_message_and_changes_nothing(tmp_path, fake_job):
    reports = tmp_path / "reports"
    scheduled_report(SAMPLE, reports, now=day(1))
    before = snapshot(reports)
    holder = _hold_lock(reports)
    try:
        with pytest.raises(UserError, match="another `cramp report` is already writing"):
            scheduled_report(SAMPLE, reports, now=day(2))
        # The CLI maps it to one message and exit 2.
        started = time.monotonic()
        cli = subprocess.run([sys.executable, "-m", "pipeline", "report", "--data", str(SAMPLE),
                              "--reports", str(reports)], capture_output=True, text=True,
                             timeout=60)
        assert cli.returncode == 2
        assert "already writing" in cli.stderr and "Traceback" not in cli.stderr
        assert time.monotonic() - started < 30  # it did not wait for the lock
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(reports) == before
    # Once the first run is gone the lock is free again.
    scheduled_report(SAMPLE, reports, now=day(2))


@pytest.mark.slow
def test_real_job_twice_ingests_each_file_once(tmp_path, monkeypatch):
    """The real pipeline (report rendering stubbed): the second run finds every file already in
    the store (same sha256) and the stored rows do not double."""
    from pipeline.store import Store

    monkeypatch.setattr(render_module, "render_report",
                        lambda run_dir, **_: (Path(run_dir) / "report.html").write_text("r"))
    reports = tmp_path / "reports"
    scheduled_report(SAMPLE, reports, now=day(1))
    rows_first = Store(reports / "store").read("episodes").collect().height
    scheduled_report(SAMPLE, reports, now=day(2))
    rows_second = Store(reports / "store").read("episodes").collect().height
    assert rows_first == rows_second > 0
    assert [p.name for p in list_reports(reports)] == ["2026-03-02", "2026-03-01"]
    # The second day read nothing new, yet its summary still states what the models used.
    second = json.loads((reports / "2026-03-02" / "summary.json").read_text())
    assert second["tables"]["episodes"]["read"] == 0
    assert second["store_totals"]["episodes"]["accepted"] == rows_first


# --- what changed, and what the job says ------------------------------------------------------------

def test_leftovers_of_a_killed_run_are_removed_under_the_lock(tmp_path, fake_job):
    reports = tmp_path / "reports"
    reports.mkdir()
    for name in (".building-2026-03-01-abc123", ".replaced-2026-03-01-4242"):
        (reports / name).mkdir()
        (reports / name / "summary.json").write_text("{}")
    scheduled_report(SAMPLE, reports, now=day(2))
    assert sorted(p.name for p in reports.iterdir() if p.name.startswith(".")) == [LOCK_NAME]


def test_the_previous_dated_report_is_passed_to_the_notebooks_and_changes_are_kept(
        tmp_path, fake_job, monkeypatch):
    from pipeline.report.changes import read_changes

    seen = []

    def render_report(run_dir, *, previous_run_dir=None, **_):
        seen.append(previous_run_dir)
        (Path(run_dir) / "report.html").write_text("<html>r</html>")
        return Path(run_dir) / "report.html"

    monkeypatch.setattr(render_module, "render_report", render_report)
    reports = tmp_path / "reports"
    scheduled_report(SAMPLE, reports, now=day(1))
    scheduled_report(SAMPLE, reports, now=day(2))
    scheduled_report(SAMPLE, reports, now=day(2))  # a same-day re-run compares with the day before
    assert seen == [None, reports / "2026-03-01", reports / "2026-03-01"]
    first, second = read_changes(reports / "2026-03-01"), read_changes(reports / "2026-03-02")
    flags = pl.read_csv(reports / "2026-03-01" / "red_flags.csv")
    assert first["previous_report"] is None
    assert first["new_flags"] == flags.height > 0  # the first report: everything is new
    assert second == {"previous_report": "2026-03-01", "new_flags": 0, "new_red_flag_firings": 0,
                      "new_red_flags": 0, "new_red_flag_subjects": 0, "new_flagged_subjects": 0}


def test_the_index_lists_per_report_its_days_counts_new_red_flags_and_the_previous_one(
        tmp_path, fake_job):
    reports = tmp_path / "reports"
    scheduled_report(SAMPLE, reports, now=day(1))
    scheduled_report(SAMPLE, reports, now=day(2))
    index = (reports / "index.html").read_text()
    rows = re.findall(r"<tr>(.*?)</tr>", index)
    header, newest, oldest = (re.findall(r"<t[hd]>(.*?)</t[hd]>", r) for r in rows)
    assert header == ["report", "diary days", "subjects", "episodes", "red flags",
                      "new red flags", "previous"]
    summary = json.loads((reports / "2026-03-02" / "summary.json").read_text())
    flags = pl.read_csv(reports / "2026-03-02" / "red_flags.csv")
    red = flags.filter(pl.col("severity") == "red_flag").select("subject_id", "episode_id") \
        .n_unique()
    assert newest == ['<a href="2026-03-02/report.html">2026-03-02</a>',
                      f"{summary['panel']['first_date']} to {summary['panel']['last_date']}",
                      f"{summary['panel']['n_subjects']:,}", f"{summary['panel']['n_episodes']:,}",
                      f"{red:,}", "0", '<a href="2026-03-01/report.html">2026-03-01</a>']
    assert oldest[-2:] == [f"{red:,}", ""]  # first report: all new; no previous


def test_the_job_prints_new_files_new_red_flags_and_the_report_path(tmp_path, fake_job):
    from pipeline.report.schedule import job_lines

    reports = tmp_path / "reports"
    target = scheduled_report(SAMPLE, reports, now=day(1))
    lines = job_lines(target)
    assert lines[0].startswith("New files ingested: ")
    assert any(re.match(r"New red flags \(first report: everything is new\): [\d,]+ episode\(s\) "
                        r"in [\d,]+ subject\(s\)", line) for line in lines)
    assert "newly flagged subjects" in " ".join(lines)
    assert lines[-1] == f"Report: {target / 'report.html'}"


def test_a_shareable_report_is_listed_and_linked_from_its_share_directory(tmp_path, fake_job,
                                                                           monkeypatch):
    def render_report(run_dir, *, identifiers=True, **_):
        page = Path(run_dir) / ("report.html" if identifiers else "share/report.html")
        page.parent.mkdir(exist_ok=True)
        page.write_text("<html>r</html>")
        return page

    monkeypatch.setattr(render_module, "render_report", render_report)
    reports = tmp_path / "reports"
    scheduled_report(SAMPLE, reports, now=day(1), identifiers=False)
    assert [p.name for p in list_reports(reports)] == ["2026-03-01"]
    assert 'href="2026-03-01/share/report.html"' in (reports / "index.html").read_text()
