"""Clear messages where the cause is elsewhere: the job names the cause (the quarantined table and
its top reasons, an empty subjects file, a custom factor's missing column), not a consequence
three stages later; an empty optional injuries file means "no injuries logged"."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.run import run_job

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


@pytest.fixture
def dataset(tmp_path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(SAMPLE, copy)
    return copy


def _rewrite_column(path: Path, column: str, value: str) -> int:
    rows = list(csv.reader(path.open(newline="")))
    i = rows[0].index(column)
    for row in rows[1:]:
        row[i] = value
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return len(rows) - 1


def test_every_episode_quarantined_names_the_table_the_reason_and_quarantine_csv(dataset,
                                                                                  tmp_path):
    n = _rewrite_column(dataset / "episodes.csv", "started_at", "garbage")
    out = tmp_path / "out"
    with pytest.raises(UserError) as error:
        run_job(dataset, out, report=False)
    message = str(error.value)
    assert f"no episodes rows accepted: all {n:,} episodes row(s) read were quarantined" in message
    assert f"started_at: type" in message and f"{n:,}" in message
    assert str(out / "quarantine.csv") in message
    assert "logged days" not in message
    assert (out / "quarantine.csv").is_file()  # the file the message points at exists


def test_every_daily_row_quarantined_says_so(dataset, tmp_path):
    _rewrite_column(dataset / "daily.csv", "date", "not-a-date")
    with pytest.raises(UserError, match=r"no daily rows accepted: all [\d,]+ daily row\(s\) read "
                                        r"were quarantined.*date: type"):
        run_job(dataset, tmp_path / "out", report=False)


def test_a_header_only_subjects_file_says_no_subjects_accepted(dataset, tmp_path):
    header = (dataset / "subjects.csv").read_text().splitlines()[0]
    (dataset / "subjects.csv").write_text(header + "\n")
    with pytest.raises(UserError, match="no subjects accepted: the subjects table has no data "
                                        "rows") as error:
        run_job(dataset, tmp_path / "out", report=False)
    assert "daily" not in str(error.value)


def test_a_custom_factor_whose_column_is_in_no_daily_file_names_it_and_the_columns_found(
        dataset, tmp_path):
    toml = dataset / "dataset.toml"
    toml.write_text(toml.read_text().replace('column = "magnesium_mg"', 'column = "magnesum_mg"'))
    with pytest.raises(UserError) as error:
        run_job(dataset, tmp_path / "out", report=False)
    message = str(error.value)
    assert "dataset.toml" in message and "'magnesum_mg'" in message and "no daily file" in message
    assert "columns found: " in message and "magnesium_mg" in message and "sleep_h" in message


@pytest.mark.parametrize("header_only", [False, True], ids=["zero-bytes", "header-only"])
def test_an_empty_injuries_file_means_no_injuries_logged(dataset, tmp_path, header_only):
    header = (dataset / "injuries.csv").read_text().splitlines()[0]
    (dataset / "injuries.csv").write_text(header + "\n" if header_only else "")
    result = run_job(dataset, tmp_path / "out", report=False)
    assert result["summary"]["tables"]["injuries"]["read"] == 0
    totals = result["summary"]["store_totals"]["injuries"]
    assert {k: totals[k] for k in ("files", "rows", "accepted", "quarantined")} == {
        "files": 1, "rows": 0, "accepted": 0, "quarantined": 0}
    assert any("no injuries logged" in m for m in result["messages"])


def _cramp(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_cramp_version():
    from pipeline.report.provenance import toolkit_version

    result = _cramp("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"cramp {toolkit_version()}"


def test_cramp_docs_check_prints_what_it_checked():
    from pipeline.generated_docs import GENERATED_DOCS

    result = _cramp("docs", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    for relative in GENERATED_DOCS:
        assert f"up to date  {relative}" in result.stdout
    assert f"Checked {len(GENERATED_DOCS)} generated document(s)" in result.stdout


def test_cramp_docs_check_names_a_stale_document(tmp_path):
    from pipeline.generated_docs import GENERATED_DOCS

    for relative in GENERATED_DOCS:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / relative, tmp_path / relative)
    stale = next(iter(GENERATED_DOCS))
    (tmp_path / stale).write_text("old\n")
    result = _cramp("docs", "--check", "--root", str(tmp_path))
    assert result.returncode == 2
    assert f"stale       {stale}" in result.stdout and str(stale) in result.stderr
