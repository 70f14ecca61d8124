"""The command line: user errors are one clear message and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def cramp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True, text=True, cwd=cwd, timeout=600,
    )


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_python_dash_m_pipeline_shows_help():
    result = cramp("--help")
    assert result.returncode == 0
    for command in ("validate", "ingest", "synth", "run", "report", "docs"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("run", "--data", "no/such/dir", "--out", "OUT", "--no-report"),
        ("validate", "no/such/dir"),
        ("ingest", "no/such/dir", "--store", "STORE"),
    ],
    ids=["run", "validate", "ingest"],
)
def test_missing_dataset_directory_is_a_user_error(args, tmp_path):
    result = cramp(*args, cwd=tmp_path)
    assert_user_error(result, "no/such/dir")
    assert not (tmp_path / "STORE").exists()


def test_unknown_option_is_a_usage_error(tmp_path):
    result = cramp("run", "--bogus", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--bogus" in result.stderr


def test_bad_synth_format_is_a_user_error(tmp_path):
    result = cramp("synth", "--out", str(tmp_path / "d"), "--format", "xlsx")
    assert_user_error(result, "--format")


def test_running_twice_into_the_same_directory_gives_the_same_outputs(tmp_path):
    from tests.conftest import SAMPLE_DIR

    out = tmp_path / "run"
    for _ in range(2):
        result = cramp("run", "--data", str(SAMPLE_DIR), "--out", str(out), "--no-report")
        assert result.returncode == 0, result.stderr
        if _ == 0:
            first = {p.name: p.read_bytes() for p in out.glob("*.*")}
    second = {p.name: p.read_bytes() for p in out.glob("*.*")}
    assert first == second
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["tables"]["episodes"]["read"] == summary["tables"]["episodes"]["accepted"] > 0
    # The default store is this run's own, so the store's totals are this run's counts.
    for name, counts in summary["store_totals"].items():
        assert counts["accepted"] == summary["tables"][name]["accepted"]


def test_error_messages_are_printed_verbatim_not_as_markup(tmp_path):
    # "[guidance]" in a message must reach the user as written (rich would swallow it as a tag).
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "x"\ntitle = "t"\nseverity = "red_flag"\n'
                     'source = "numbness in one or both legs"\ncondition = ["numbness"]\n'
                     'columns = ["numbness"]\n')
    from tests.conftest import SAMPLE_DIR

    result = cramp("run", "--data", str(SAMPLE_DIR), "--out", str(tmp_path / "o"),
                   "--rules", str(rules), "--no-report")
    assert_user_error(result, "rules.toml", "rule 'x'", "[guidance]")
