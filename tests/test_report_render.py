"""report.html: the notebooks executed with papermill on a run, rendered into one self-contained
page with the effects, dose-response, red-flag and data-quality sections.

The ``rendered`` fixture renders the bundled sample's run twice (with and without identifiers) once
per session; the disclosure scan and the browser test reuse it (same xdist group).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import nbformat
import polars as pl
import pytest
from filelock import FileLock
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from pipeline.report.render import REQUIRED_SECTIONS, notebook_sections, render_report, slug
from pipeline.report.sample import ensure_sample_run
from pipeline.report.tables import FOLLOW_UP_ROWS

pytestmark = pytest.mark.xdist_group("report")


def rendered_reports(tmp_path_factory) -> dict[str, Path]:
    """{"full": run dir with report.html (identifiers), "shareable": without identifiers}.

    Rendered once per test session, shared by every module and every xdist worker: the first to
    ask renders under a file lock in the session's common temporary directory, the rest reuse it.
    (A fixture imported into another module is a separate fixture there, and xdist groups cannot be
    relied on with pytest 9, so a plain session fixture would render several times.)
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory above popen-gwN
    shared = root / "cramp-rendered-reports"
    runs = {"full": shared / "full", "shareable": shared / "shareable"}
    with FileLock(str(root / "cramp-rendered-reports.lock")):
        if not (shared / "complete").exists():
            shutil.rmtree(shared, ignore_errors=True)
            sample = ensure_sample_run()
            store = shared / "store"
            shutil.copytree(sample / "store", store)
            for name, identifiers in (("full", True), ("shareable", False)):
                shutil.copytree(sample, runs[name], ignore=shutil.ignore_patterns("store"))
                render_report(runs[name], identifiers=identifiers, store_dir=store)
            (shared / "complete").touch()
    # The shareable report and its tables are written on their own into RUN/share/.
    return {"full": runs["full"], "shareable": runs["shareable"] / "share"}


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, Path]:
    return rendered_reports(tmp_path_factory)


def _html(run_dir: Path) -> str:
    return (run_dir / "report.html").read_text(encoding="utf-8")


# --- fast: rendering of an executed notebook ------------------------------------------------------

def _executed_notebook():
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    cells = [
        new_markdown_cell("# 02 · Title", metadata={"tags": ["report-skip"]}),
        new_code_cell("run_dir = None", metadata={"tags": ["parameters"]}),
        new_markdown_cell("## Effects\n\nPlain *words*."),
        new_code_cell("views.sentences(...)", outputs=[
            new_output("stream", name="stderr", text="a warning"),
            new_output("execute_result", data={"text/markdown": "- a sentence",
                                               "text/plain": "- a sentence"}, execution_count=1),
        ]),
        new_code_cell("show(fig)", outputs=[new_output(
            "display_data", data={"image/png": png, "text/plain": "[figure: Forest]"},
            metadata={"image/png": {"alt": "Forest"}})]),
        new_markdown_cell("## Red-flag follow-up\n\nIds.", metadata={"tags": ["identifiers"]}),
        new_code_cell("views.flagged_subjects_table(run)", metadata={"tags": ["identifiers"]},
                      outputs=[new_output("execute_result", data={
                          "text/html": "<table><tr><td>S00042</td></tr></table>",
                          "text/plain": "S00042"}, execution_count=2)]),
    ]
    return new_notebook(cells=cells)


def test_sections_follow_level_two_headings_and_skip_tagged_cells():
    sections = notebook_sections(_executed_notebook(), identifiers=True)
    assert [s.id for s in sections] == ["effects", "red-flag-follow-up"]
    effects = "".join(sections[0].parts)
    assert "<em>words</em>" in effects and "<li>a sentence</li>" in effects
    assert 'alt="Forest" src="data:image/png;base64,iVBOR' in effects
    assert "a warning" not in effects and "02 · Title" not in effects
    assert "<details class=\"code\">" in effects  # code is folded away, not shown


def test_a_shareable_report_leaves_out_cells_tagged_identifiers():
    sections = notebook_sections(_executed_notebook(), identifiers=False)
    assert [s.id for s in sections] == ["effects"]
    assert "S00042" not in "".join(p for s in sections for p in s.parts)


def test_an_incomplete_run_directory_is_a_user_error_naming_the_missing_files(tmp_path):
    from pipeline.errors import UserError
    from pipeline.report.demo import write_demo_run

    run_dir = write_demo_run(tmp_path / "run")
    (run_dir / "effects.csv").unlink()
    with pytest.raises(UserError, match="missing effects.csv"):
        render_report(run_dir)
    assert not (run_dir / "report.html").exists()


def test_slugs():
    assert [slug(t) for t in ("Effects", "Dose-response", "Timing", "Red flags",
                              "Data quality")] == list(REQUIRED_SECTIONS)


# --- the real thing: the sample run rendered --------------------------------------------------------

def test_report_has_every_section_and_embedded_figures(rendered):
    page = _html(rendered["full"])
    for section in (*REQUIRED_SECTIONS, "diagnostics", "red-flag-follow-up"):
        assert f'<section id="{section}">' in page, section
    images = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(images) >= 5
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert all(re.search(r'<img alt="[^"]+"', tag) for tag in re.findall(r"<img [^>]*>", page))
    # One sentence per within-subject factor, in plain words.
    effects = pl.read_csv(rendered["full"] / "effects.csv")
    n_within = effects.filter(pl.col("model") == "within_subject").height
    section = page.split('<section id="effects">')[1].split("</section>")[0]
    assert section.count("<li>On days with") + section.count(": no estimate (") == n_within


def test_report_is_self_contained(rendered):
    for run_dir in rendered.values():
        page = _html(run_dir)
        assert "<script" not in page.lower()
        assert "<link" not in page.lower() and "@import" not in page and "@font-face" not in page
        # No attribute or CSS url points anywhere but a data URI or an in-page anchor.
        for target in re.findall(r'(?:src|href)="([^"]*)"', page):
            assert target.startswith(("data:", "#")), target
        assert not re.search(r"url\((?!data:)", page)
        assert "mathjax" not in page.lower() and "require.js" not in page.lower()


def test_report_identifying_section_is_labelled_and_left_out_when_shareable(rendered):
    full, shareable = _html(rendered["full"]), _html(rendered["shareable"])
    subjects = pl.read_csv(rendered["full"] / "red_flags.csv")["subject_id"].unique().to_list()
    assert subjects, "the sample should have flagged subjects"
    assert "pseudonymous subject ids" in full
    # The worklist holds every flagged subject; the page shows its first rows, most severe first.
    worklist = pl.read_csv(rendered["full"] / "report_tables" / "follow_up" / "worklist.csv")
    assert sorted(worklist["subject_id"]) == sorted(subjects)
    shown = worklist["subject_id"].head(FOLLOW_UP_ROWS).to_list()
    assert all(s in full for s in shown)
    assert worklist["severity"].head(FOLLOW_UP_ROWS).to_list()[0] == "red_flag"
    assert 'id="red-flag-follow-up"' not in shareable
    assert not [s for s in subjects if re.search(rf"\b{re.escape(s)}\b", shareable)]
    assert (rendered["full"] / "report_tables" / "follow_up" / "red_flags.csv").is_file()
    assert not (rendered["shareable"] / "report_tables" / "follow_up").exists()


def test_follow_up_list_holds_every_flag_unsuppressed(rendered):
    shown = pl.read_csv(rendered["full"] / "report_tables" / "follow_up" / "red_flags.csv",
                        schema_overrides={"subject_id": pl.String, "episode_id": pl.String})
    source = pl.read_csv(rendered["full"] / "red_flags.csv",
                         schema_overrides={"subject_id": pl.String, "episode_id": pl.String})
    assert shown.height == source.height
    key = ["episode_id", "rule_id"]
    assert shown.select(key).sort(key).equals(source.select(key).sort(key))


def test_a_failing_notebook_fails_the_render_with_its_cell_and_keeps_the_executed_copy(tmp_path):
    from pipeline.report.demo import write_demo_run
    from pipeline.report.render import REPORT_NOTEBOOKS

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in REPORT_NOTEBOOKS:
        cells = [new_code_cell("run_dir = None\ntables_dir = None\nstore_dir = None\n"
                               "identifiers = True", metadata={"tags": ["parameters"]})]
        if name == "02-factor-associations":
            cells.append(new_code_cell("raise ValueError('effects.csv has no rows')"))
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nbformat.write(nb, notebooks / f"{name}.ipynb")
    run_dir = write_demo_run(tmp_path / "run")
    # Cell 3 in execution order: parameters, the parameters papermill injects, the failing cell.
    with pytest.raises(RuntimeError, match=r"02-factor-associations failed in cell 3: "
                                           r"ValueError: effects.csv has no rows"):
        render_report(run_dir, notebooks_dir=notebooks)
    assert not (run_dir / "report.html").exists()
    assert (run_dir / "02-factor-associations.failed.ipynb").is_file()


def test_rendering_never_changes_the_working_directory(tmp_path, monkeypatch):
    """papermill's ``cwd`` would os.chdir the whole process (racing between the render threads);
    the kernel's directory is given to nbclient instead, and paths reach it absolute."""
    import papermill

    from pipeline.report.render import NOTEBOOKS_DIR, execute_notebook

    seen = {}

    def fake_execute(source, out, **kwargs):
        seen.update(kwargs, source=source, out=out)
        return "executed"

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    monkeypatch.chdir(tmp_path)
    assert execute_notebook("01-data-quality", Path("rel/out.ipynb"),
                            {"run_dir": "/abs/run", "previous_run_dir": None,
                             "not_a_parameter": 1}) == "executed"
    assert seen.get("cwd") is None
    assert seen["resources"] == {"metadata": {"path": str(NOTEBOOKS_DIR)}}
    assert seen["out"] == str(tmp_path / "rel" / "out.ipynb")
    assert "not_a_parameter" not in seen["parameters"]  # only what the notebook declares
    assert seen["parameters"]["run_dir"] == "/abs/run"


def test_report_footer_states_its_provenance(rendered):
    from pipeline.report.provenance import toolkit_version

    for run_dir in rendered.values():
        footer = _html(run_dir).split("<footer>")[1]
        assert f"by cramp {toolkit_version()}" in footer
        assert "input file(s), sha256 " in footer and "Red-flag rules: " in footer


def test_a_user_error_in_a_notebook_is_the_users_message_not_an_internal_error(tmp_path):
    """A notebook that refuses the run's data (an empty store, an unknown subject) raises a
    UserError: the render passes it on as one (exit 2), with the notebook named."""
    from pipeline.errors import UserError
    from pipeline.report.demo import write_demo_run
    from pipeline.report.render import REPORT_NOTEBOOKS

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in REPORT_NOTEBOOKS:
        cells = [new_code_cell("run_dir = None", metadata={"tags": ["parameters"]})]
        if name == "01-data-quality":
            cells.append(new_code_cell("from pipeline.errors import UserError\n"
                                       "raise UserError(\"the run's store is empty\")"))
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nbformat.write(nb, notebooks / f"{name}.ipynb")
    run_dir = write_demo_run(tmp_path / "run")
    with pytest.raises(UserError, match=r"notebook 01-data-quality: the run's store is empty"):
        render_report(run_dir, notebooks_dir=notebooks)
