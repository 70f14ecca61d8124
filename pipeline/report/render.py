"""Execute the notebooks with papermill against a run directory and render one self-contained
``report.html``: figures embedded as data URIs, code folded away, no scripts, fonts or other
external resources, so the file opens the same on an offline ward PC as in a browser test.

Cells tagged ``report-skip`` (notebook titles, set-up) are left out; cells tagged ``identifiers``
(the red-flag follow-up lists) are left out of a shareable report, which is written on its own into
``RUN/share/`` (with its aggregate tables) so that directory can be handed out as it is. Each
``##`` heading starts a section whose id is the heading's slug (``#effects``, ``#dose-response``,
``#red-flags``, ``#data-quality``).

Rendering never depends on or changes the process's working directory: every path is made
absolute here, each notebook's kernel is started in ``notebooks/`` by nbclient (a kernel is its
own process), and papermill is never given ``cwd`` (it would ``os.chdir`` the whole process, which
races when the notebooks render in parallel threads).
"""

from __future__ import annotations

import base64
import html
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pipeline import atomic, progress
from pipeline.errors import UserError

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
#: Notebooks in the report, in reading order: the cohort, findings (same day, timing, subgroups),
#: red flags beside them, data last.
REPORT_NOTEBOOKS = ("00-cohort", "02-factor-associations", "05-timing", "06-subgroups",
                    "03-red-flags", "01-data-quality")
REQUIRED_SECTIONS = ("effects", "dose-response", "timing", "red-flags", "data-quality")
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 300
#: The shareable report's directory inside a run (nothing identifying is written into it).
SHARE_DIR = "share"


def _markdown(text: str) -> str:
    import mistune

    return mistune.create_markdown(escape=True, plugins=["table"])(text)


@dataclass
class Section:
    id: str
    title: str
    parts: list[str] = field(default_factory=list)


def slug(text: str) -> str:
    """``Dose-response`` -> ``dose-response``; ``Red flags`` -> ``red-flags``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def notebook_parameters(source: Path) -> set[str]:
    """The names a notebook's ``parameters`` cell declares (papermill warns about any other)."""
    import papermill

    return set(papermill.inspect_notebook(str(source)))


def execute_notebook(name: str, out_path: Path, parameters: dict, *,
                     notebooks_dir: Path = NOTEBOOKS_DIR):
    """Run one notebook with papermill (this environment's kernel, no progress bar).

    Only the parameters the notebook declares are passed. The kernel starts in ``notebooks_dir``
    (nbclient's ``resources.metadata.path``, as JupyterLab does) without touching this process's
    working directory; the parameters are absolute paths, so nothing depends on it anyway.
    """
    import papermill

    source = Path(notebooks_dir).resolve() / f"{name}.ipynb"
    if not source.is_file():
        raise UserError("report notebook not found", path=str(source))
    declared = notebook_parameters(source)
    try:
        return papermill.execute_notebook(
            str(source), str(Path(out_path).resolve()),
            parameters={k: v for k, v in parameters.items() if k in declared},
            kernel_name=KERNEL_NAME, progress_bar=False, log_output=False,
            request_save_on_cell_execute=False, execution_timeout=CELL_TIMEOUT_S,
            resources={"metadata": {"path": str(source.parent)}},
            # Kernel start-up chatter (TCP notices, shutdown interrupts) is not for the user.
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )
    except papermill.PapermillExecutionError as error:
        kept = notebooks_failed_copy(Path(out_path))
        if error.ename == "UserError":
            # The notebook refused the run's data (an empty store, an unknown subject): the
            # message is the user's, not a bug.
            raise UserError(f"notebook {name}: {error.evalue} (executed copy kept at {kept})"
                            ) from None
        raise RuntimeError(f"notebook {name} failed in cell {error.exec_count}: {error.ename}: "
                           f"{error.evalue} (executed copy kept at {kept})") from error


def notebooks_failed_copy(executed: Path) -> Path:
    """Keep a failed notebook's executed copy beside the run (outside the temporary directory)."""
    kept = executed.parent.parent / f"{executed.stem}.failed.ipynb"
    shutil.copyfile(executed, kept)
    return kept


def _output_html(output: dict, alt: str) -> str:
    kind = output.get("output_type")
    if kind not in ("display_data", "execute_result"):
        return ""  # streams (warnings, logs) and errors are not report content
    data = output.get("data", {})
    if "text/html" in data:
        return f'<div class="output">{"".join(data["text/html"])}</div>'
    if "image/png" in data:
        meta = output.get("metadata", {}).get("image/png", {})
        text = html.escape(meta.get("alt") or alt, quote=True)
        png = "".join(data["image/png"]).replace("\n", "")
        base64.b64decode(png, validate=True)  # a corrupt image should fail the render, not show
        return f'<figure><img alt="{text}" src="data:image/png;base64,{png}"></figure>'
    if "text/markdown" in data:
        return f'<div class="prose">{_markdown("".join(data["text/markdown"]))}</div>'
    if "text/plain" in data:
        return f'<pre class="output">{html.escape("".join(data["text/plain"]))}</pre>'
    return ""


def notebook_sections(nb, *, identifiers: bool) -> list[Section]:
    """The report sections of one executed notebook."""
    sections: list[Section] = []
    for cell in nb.cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if tags & {"report-skip", "parameters", "injected-parameters"}:
            continue
        if "identifiers" in tags and not identifiers:
            continue
        if cell.cell_type == "markdown":
            source = cell.source
            match = re.match(r"^##\s+(.+?)\s*$", source.splitlines()[0]) if source else None
            if match:
                title = match.group(1)
                sections.append(Section(slug(title), title))
                source = "\n".join(source.splitlines()[1:])
                sections[-1].parts.append(f"<h2>{html.escape(title)}</h2>")
            if not sections:
                sections.append(Section("overview", "Overview"))
            sections[-1].parts.append(_markdown(source))
        elif cell.cell_type == "code":
            if not sections:
                sections.append(Section("overview", "Overview"))
            rendered = [_output_html(o, sections[-1].title) for o in cell.get("outputs", [])]
            rendered = [r for r in rendered if r]
            if rendered:
                sections[-1].parts.extend(rendered)
                sections[-1].parts.append(
                    '<details class="code"><summary>code</summary><pre>'
                    f"{html.escape(cell.source)}</pre></details>")
    return sections


def _stylesheet() -> str:
    return resources.files("pipeline.report").joinpath("report.css").read_text(encoding="utf-8")


def _page(title: str, header_html: str, sections: list[Section], footer_html: str = "") -> str:
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}">{"".join(s.parts)}</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # Belt and braces: even if some output carried a URL, the browser may not fetch it.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title><style>{_stylesheet()}</style></head>"
        f"<body><header>{header_html}<nav>{nav}</nav></header><main>{body}</main>"
        f"<footer>{footer_html}<p>Associations in observational diaries are not proof of cause."
        "</p></footer></body></html>\n"
    )


def _flag_callout(run_dir: Path, identifiers: bool = False) -> str:
    """A line at the top saying how many episodes met a red-flag rule: never buried below the
    statistics. Exact in the care-team report, disclosure-controlled in the shareable one."""
    import polars as pl

    from pipeline.disclosure import DEFAULT_POLICY, disclose_count
    from pipeline.report.tables import disclosure_policy

    path = run_dir / "red_flags.csv"
    if not path.is_file():
        return ""
    flags = pl.read_csv(path, columns=["subject_id", "episode_id", "severity"],
                        schema_overrides={"subject_id": pl.String, "episode_id": pl.String})
    red = flags.filter(pl.col("severity") == "red_flag")
    policy = disclosure_policy(identifiers)
    episodes = disclose_count(red["episode_id"].n_unique() if red.height else 0, policy)
    subjects = disclose_count(red["subject_id"].n_unique() if red.height else 0, policy)
    label = DEFAULT_POLICY.suppressed_label
    shown = lambda n: label if n is None else f"{n:,}"
    return (f'<p class="notice flags"><strong>Red flags:</strong> {shown(episodes)} episode(s) '
            f"in {shown(subjects)} subject(s) met a rule that means \u201ccall your doctor\u201d. "
            '<a href="#red-flags">See the red-flag section.</a></p>')


def _header(run_dir: Path, identifiers: bool) -> str:
    import json

    panel = {}
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        panel = summary.get("panel", {})
    period = ""
    if panel.get("first_date") and panel.get("last_date"):
        period = f"<p>Diary days from {panel['first_date']} to {panel['last_date']}.</p>"
    period += _flag_callout(run_dir, identifiers)
    if identifiers:
        notice = ('<p class="notice identifying">This report includes a red-flag follow-up '
                  "section that lists <strong>pseudonymous subject ids</strong> for clinical "
                  "follow-up. Share it only within the care team.</p>")
    else:
        notice = ('<p class="notice">Shareable version: the red-flag follow-up section (which lists '
                  "pseudonymous subject ids) is left out. Aggregate counts of 1–7 are suppressed "
                  "and others rounded to the nearest 5.</p>")
    return f"<h1>Muscle-cramp diary report</h1>{period}{notice}"


def render_report(run_dir: Path, *, identifiers: bool = True, store_dir: Path | None = None,
                  rules_path: Path | None = None, notebooks_dir: Path = NOTEBOOKS_DIR,
                  previous_run_dir: Path | None = None) -> Path:
    """Execute the report notebooks against ``run_dir`` and write its report; returns its path.

    With identifiers (the care team's report) that is ``run_dir/report.html``, with the tables it
    shows in ``run_dir/report_tables/`` (``aggregate/`` and the ``follow_up/`` lists). Without,
    it is the shareable ``run_dir/share/report.html`` with only ``share/report_tables/aggregate/``
    beside it: a directory that holds nothing identifying.

    ``store_dir``: the run's store when it is not ``run_dir/store`` (for missingness and days
    logged). ``rules_path``: the rule file the run used when it is not the shipped one.
    ``previous_run_dir``: the previous dated report's run (``cramp report``), for what is new.
    """
    from pipeline.report.load import load_run
    from pipeline.report.provenance import collect, footer_html

    run_dir = Path(run_dir).resolve()
    store_dir = Path(store_dir).resolve() if store_dir is not None else None
    rules_path = Path(rules_path).resolve() if rules_path is not None else None
    previous = Path(previous_run_dir).resolve() if previous_run_dir is not None else None
    notebooks_dir = Path(notebooks_dir).resolve()
    # A missing output (or a given store that is not there) is a UserError before any kernel
    # starts; a notebook that finds the store empty or unreadable raises one too.
    run = load_run(run_dir, store_dir=store_dir)
    out_dir = run_dir if identifiers else run_dir / SHARE_DIR
    if not identifiers:
        shutil.rmtree(out_dir, ignore_errors=True)  # only this render's files, nothing older
    out_dir.mkdir(exist_ok=True)
    tables_dir = out_dir / "report_tables"
    shutil.rmtree(tables_dir, ignore_errors=True)
    parameters = {"run_dir": str(run_dir), "tables_dir": str(tables_dir),
                  "store_dir": str(run.store_dir) if run.store_dir else None,
                  "identifiers": identifiers,
                  "rules_path": str(rules_path) if rules_path else None,
                  "previous_run_dir": str(previous) if previous else None}
    sections: list[Section] = []

    def execute(name: str, work: Path):
        with progress.stage(f"render notebook {name}"):
            return execute_notebook(name, work / f"{name}.ipynb", parameters,
                                    notebooks_dir=notebooks_dir)

    with tempfile.TemporaryDirectory(prefix=".report-", dir=run_dir) as work:
        # Kernels start and import in parallel: most of a notebook's run time is start-up.
        with ThreadPoolExecutor(max_workers=len(REPORT_NOTEBOOKS)) as pool:
            executed = list(pool.map(lambda name: execute(name, Path(work)), REPORT_NOTEBOOKS))
        for nb in executed:
            sections.extend(notebook_sections(nb, identifiers=identifiers))
    missing = [s for s in REQUIRED_SECTIONS if s not in {x.id for x in sections}]
    if missing:
        raise RuntimeError(f"report sections missing from the notebooks: {', '.join(missing)}")
    with progress.stage("write report.html"):
        footer = footer_html(collect(run.summary, run.store_dir, rules_path))
        page = _page("Muscle-cramp diary report", _header(run_dir, identifiers), sections, footer)
        return atomic.write_text(out_dir / "report.html", page)
