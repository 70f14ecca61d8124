"""The notebooks: validated with nbval against their stored outputs, and kept thin.

nbval runs in a child pytest (``--nbval-lax``: every cell must run; cells tagged
``nbval-check-output`` must reproduce their stored output exactly, after the sanitize file). It runs
apart from the parent's xdist workers because a notebook's cells must share one kernel in order.
When a reviewed change alters a result, refresh the stored outputs with ``scripts/refresh-notebooks``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
CHECK = "nbval-check-output"
#: Cells that show key results must be compared with their stored outputs.
KEY_CELLS = {
    "02-factor-associations": ["views.sentences(run.effects)", "views.effects_table("],
    "03-red-flags": ["views.flag_counts_table(", "views.rules_table(run"],
    "01-data-quality": ["views.ingest_table(", "views.quarantine_reasons_table("],
    "00-cohort": ["cohort.cohort_section_table("],
    "06-subgroups": ["cohort.subgroup_prose(", "cohort.subgroup_tests_table("],
    "05-timing": ["timing.timing_sentences(", "timing.cumulative_table("],
    "04-subject-timeline": ["patient.patient_controls(run, subject"],
}

pytestmark = pytest.mark.xdist_group("notebooks")


def test_the_numbered_notebooks():
    assert [p.stem for p in NOTEBOOKS] == ["00-cohort", "01-data-quality",
                                           "02-factor-associations", "03-red-flags",
                                           "04-subject-timeline", "05-timing", "06-subgroups"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_a_papermill_parameters_cell_defaulting_to_the_sample(path):
    nb = nbformat.read(path, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    assert "run_dir = None" in params[0].source  # None = the bundled sample's run
    assert nb.metadata["kernelspec"] == {"name": "cramp", "display_name": "Python (cramp)",
                                        "language": "python"}  # the one `make lab` registers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_holds_no_analysis_logic(path):
    """Every code cell is a call or two into the package: no loops, no defs, no imports of
    analysis libraries; what the notebook shows is tested in tests/test_report_*.py."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
            continue
        code = cell.source
        assert len(code.splitlines()) <= 6, code
        for forbidden in ("def ", "for ", "while ", "import polars", "import pandas",
                          "import matplotlib", "lambda"):
            assert forbidden not in code, (forbidden, code)


@pytest.mark.parametrize("stem, needles", KEY_CELLS.items())
def test_key_result_cells_are_checked_against_stored_outputs(stem, needles):
    nb = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
    for needle in needles:
        cells = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
        assert cells, needle
        assert all(CHECK in c.metadata.get("tags", []) for c in cells), needle
        assert all(c.get("outputs") for c in cells), f"{needle}: no stored output"


def test_notebooks_reproduce_their_stored_outputs_with_nbval():
    from pipeline.report.sample import ensure_sample_run

    ensure_sample_run()  # build the sample's run once, before four kernels need it
    env = {**os.environ, "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
         "--nbval-sanitize-with", str(ROOT / "notebooks" / "nbval-sanitize.cfg"),
         "--nbval-cell-timeout", "300", "-p", "no:xdist", "-p", "no:cacheprovider",
         "-q", "--no-header", "-o", "addopts=", *map(str, NOTEBOOKS)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-60:])
    assert result.returncode == 0, (
        "nbval: a notebook failed or a checked cell's output changed. If the change is intended, "
        "run scripts/refresh-notebooks and review the diff.\n" + tail)
