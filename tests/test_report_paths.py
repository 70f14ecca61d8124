"""Truthful from anywhere: `make run` exactly as the README says (relative paths), from the project
root and from another directory, gives a report whose data-quality figures equal what
``summary.json`` and the store say; five same-day ``cramp report`` runs with a relative
``--reports`` all succeed.

Before the fix, the notebooks resolved the relative store path against ``notebooks/`` and showed 0
subjects in every days-logged bin, and papermill's ``os.chdir`` raced between the render threads
(3 failures in 5 same-day reports). Each run here is the real job (ingest, models, three notebook
kernels), so the module is ``slow``.

The report's research aggregates are disclosure-controlled (``pipeline.disclosure``): a shown count
must equal the true count or its disclosed form (a wrong count, such as the 0s of the bug, is
neither).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from pipeline.disclosure import disclose_count
from pipeline.store import Store

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("report-paths")]


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of what `make run` needs (Makefile, lock, data), using this environment."""
    copy = tmp_path / "project"
    (copy / "data").mkdir(parents=True)
    shutil.copytree(ROOT / "data" / "sample", copy / "data" / "sample")
    for name in ("Makefile", "requirements.lock", "pyproject.toml"):
        shutil.copyfile(ROOT / name, copy / name)
        os.utime(copy / name, (0, 0))  # older than the venv's stamp: make must not rebuild it
    (copy / ".venv").symlink_to(VENV)
    return copy


def _shown(value) -> int | None:
    return None if value is None or value == "" else int(value)


def _check(shown, true: int, what: str) -> None:
    assert _shown(shown) in {true, disclose_count(true)}, f"{what}: shows {shown}, true {true}"


def check_data_quality_figures(run_dir: Path) -> None:
    """Every figure of the data-quality tables the report wrote equals summary.json / the store."""
    summary = json.loads((run_dir / "summary.json").read_text())
    tables = run_dir / "report_tables" / "aggregate"
    ingest = pl.read_csv(tables / "ingest_rows.csv", infer_schema_length=None)
    assert sorted(ingest["table"]) == sorted(summary["tables"])
    for row in ingest.iter_rows(named=True):
        for key in ("read", "accepted", "quarantined", "duplicates"):
            _check(row[key], summary["tables"][row["table"]][key], f"ingest {row['table']} {key}")
    stored = pl.read_csv(tables / "store_rows.csv", infer_schema_length=None)
    assert sorted(stored["table"]) == sorted(summary["store_totals"])
    for row in stored.iter_rows(named=True):
        for key in ("rows", "accepted"):
            _check(row[key], summary["store_totals"][row["table"]][key], f"store {row['table']}")
    reasons = pl.read_csv(tables / "quarantine_by_reason.csv", infer_schema_length=None)
    expected = {}
    for t in summary["tables"].values():
        for reason, n in t["quarantined_by_reason"].items():
            expected[reason] = expected.get(reason, 0) + n
    assert reasons.height == 0 if not expected else reasons.height > 0
    panel = pl.read_csv(tables / "panel_counts.csv", infer_schema_length=None)
    truth = {"subjects in the panel": "n_subjects", "accepted episodes": "n_episodes",
             "subject-days (logged days at risk)": "n_subject_days",
             "episodes outside logged days (not modelled)": "episodes_outside_logged_days"}
    shown = dict(panel.iter_rows())
    for label, key in truth.items():
        _check(shown[label], summary["panel"][key], label)
    # Days logged per subject, counted here from the store the run used.
    days = (Store(run_dir / "store").read("daily").group_by("subject_id").len()
            .collect()["len"].to_list())
    assert len(days) == summary["panel"]["n_subjects"] > 0
    bins = pl.read_csv(tables / "subjects_by_days_logged.csv", infer_schema_length=None)
    total_shown = 0
    for label, subjects in bins.iter_rows():
        low, high = (re.match(r"(\d+)\+$", label) and (int(label[:-1]), 10 ** 9)) or \
            tuple(int(x) for x in re.split(r"[–-]", label))
        true = sum(low <= d <= high for d in days)
        _check(subjects, true, f"subjects with {label} days logged")
        total_shown += _shown(subjects) or 0
    assert total_shown > 0, "every days-logged bin shows 0 subjects: the store was not read"


def test_make_run_from_the_project_root_gives_true_data_quality_figures(project):
    result = subprocess.run(["make", "run"], cwd=project, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rm -rf .venv" not in result.stdout  # the environment was used, not rebuilt
    check_data_quality_figures(project / "reports" / "latest")


def test_cramp_run_with_relative_paths_from_another_directory(project, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    relative = Path(os.path.relpath(project, elsewhere))
    result = subprocess.run(
        [str(VENV / "bin" / "cramp"), "run", "--data", str(relative / "data" / "sample"),
         "--out", str(relative / "reports" / "latest")],
        cwd=elsewhere, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = project / "reports" / "latest"
    check_data_quality_figures(run_dir)
    # The footer names the dataset by its absolute path (resolved once, at the command line).
    page = (run_dir / "report.html").read_text()
    assert f"<code>{project / 'data' / 'sample'}</code>" in page


def test_five_same_day_scheduled_reports_with_a_relative_reports_dir_all_succeed(project):
    for attempt in range(5):
        result = subprocess.run(
            [str(VENV / "bin" / "cramp"), "report", "--data", "data/sample", "--reports",
             "reports"], cwd=project, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, (attempt, result.stdout[-2000:], result.stderr[-2000:])
        assert "Report: " in result.stdout
    reports = project / "reports"
    dated = [p for p in reports.iterdir() if re.match(r"\d{4}-\d{2}-\d{2}$", p.name)]
    assert len(dated) == 1
    assert sorted(p.name for p in reports.iterdir() if p.name.startswith(".")) == \
        [".cramp-report.lock"]
    summary = json.loads((dated[0] / "summary.json").read_text())
    # The store is kept across runs: the fifth run read nothing new, and still reports truly.
    assert all(t["read"] == 0 for t in summary["tables"].values())
    run_dir = dated[0]
    # The scheduled store lives beside the dated reports, not inside the run.
    (run_dir / "store").symlink_to(reports / "store")
    try:
        check_data_quality_figures(run_dir)
    finally:
        (run_dir / "store").unlink()
