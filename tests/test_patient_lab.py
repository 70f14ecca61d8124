"""The patient page's controls work in JupyterLab, in headless Chromium (issue 13).

JupyterLab serves a copy of notebook 04 (a copy: Lab autosaves, and the repository's stored
outputs must not change); Chromium opens it, runs all cells through Lab's own command, and we check
over the DevTools protocol that the ipywidgets controls render and that choosing another subject
and a factor in the pickers rebuilds the page in place (no code edited). A screenshot is kept at
``reports/screenshots/patient-page.png``. The general Lab-in-Chromium test lives elsewhere; this one
is about notebook 04's widgets.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import sys
import time

import pytest

from tests.test_browser_report import ROOT, SCREENSHOTS, DevTools, chromium  # noqa: F401
from tests.test_lab import _free_port, running_lab

NOTEBOOK = "04-subject-timeline.ipynb"
#: Kernel start, the sample run (cached), imports and the first page, on a loaded machine.
RUN_TIMEOUT_S = 240

pytestmark = [pytest.mark.xdist_group("lab"), pytest.mark.slow]


@pytest.fixture
def lab(tmp_path):
    from pipeline.report.sample import ensure_sample_run

    ensure_sample_run()  # before the kernel needs it
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "MPLBACKEND": "Agg"}
    argv = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
            f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.news_url=", "--ServerApp.log_level=WARN", "--allow-root"]
    with running_lab(argv, cwd=tmp_path, env=env, port=port, token=token, what="jupyter lab",
                     stop_timeout_s=15) as base:
        yield base, token


#: The notebook panel in Lab's main area (``shell.currentWidget`` is null while nothing has focus).
PANEL = ("(window.jupyterapp && [...jupyterapp.shell.widgets('main')]"
         ".find(w => w.sessionContext && w.title.label.startsWith('04-')))")
STATE = """(() => { const app = window.jupyterapp; const w = app && """ + PANEL + """;
    const s = w && w.sessionContext; return JSON.stringify({app: !!app, widget: w && w.title.label,
    kernel: s && s.session && s.session.kernel && s.session.kernel.status,
    dialog: (document.querySelector('.jp-Dialog') || {}).innerText,
    output: [...document.querySelectorAll('.jp-OutputArea-output')]
            .map(o => o.innerText.slice(0, 300))});
    })()"""


def _poll(tools: DevTools, expression: str, timeout: float = RUN_TIMEOUT_S):
    """Evaluate ``expression`` until it is truthy; return its value (on timeout, say what Lab
    shows)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = tools.evaluate(expression)
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"{expression}\nLab: {tools.evaluate(STATE)}")


PAGE_TEXT = ("(() => { const p = document.querySelector("
             "'.cramp-patient-controls .cramp-patient-page'); return p ? p.innerText : ''; })()")
SELECTS = "document.querySelectorAll('.cramp-patient-controls select')"


def _choose(tools: DevTools, which: int, option_text: str) -> str:
    """Pick the option whose text is ``option_text`` (or the 2nd option when empty) in the
    ``which``-th select of the controls, as a user would; returns the option's text."""
    return tools.evaluate(f"""(() => {{
        const s = {SELECTS}[{which}];
        const options = [...s.options];
        const wanted = {json.dumps(option_text)};
        const o = wanted ? options.find(x => x.text === wanted) : options.find(x => !x.selected);
        s.value = o.value; s.dispatchEvent(new Event('change', {{bubbles: true}}));
        return o.text; }})()""")


def test_patient_page_controls_rebuild_the_page_in_jupyterlab(lab, chromium):  # noqa: F811
    base, token = lab
    tools = DevTools(chromium)
    try:
        for domain in ("Page", "Runtime"):
            tools.call(f"{domain}.enable")
        tools.call("Page.navigate", url=f"{base}/lab/tree/{NOTEBOOK}?token={token}")
        _poll(tools, f"(() => {{ const w = {PANEL}; const k = w && w.sessionContext.session"
                     " && w.sessionContext.session.kernel; return k && k.status === 'idle'; })()")
        # Make the notebook the current widget (headless, nothing has focus), then run it.
        tools.evaluate(f"(() => {{ jupyterapp.shell.activateById({PANEL}.id); return true; }})()")
        tools.evaluate("jupyterapp.commands.execute('notebook:run-all-cells').then(() => true)")

        first = _poll(tools, PAGE_TEXT)
        assert "Subject S" in first and "What goes with this person's cramps" in first
        assert "Red flags" in first and "Lag profile" in first
        assert int(tools.evaluate(f"{SELECTS}.length")) == 2
        assert tools.evaluate("document.querySelectorAll("
                              "'.cramp-patient-controls input[type=date]').length") == 2

        subject = _choose(tools, 0, "")  # another subject than the default
        page = _poll(tools, f"(() => {{ const t = {PAGE_TEXT}; "
                            f"return t.includes('Subject {subject} ') ? t : ''; }})()", 60)
        assert "What goes with this person's cramps" in page

        _choose(tools, 1, "Dehydration")
        page = _poll(tools, f"(() => {{ const t = {PAGE_TEXT}; "
                            "return t.includes('Showing one factor: Dehydration') ? t : ''; })()",
                     60)
        assert f"Subject {subject} " in page and "more stress" not in page

        tools.evaluate("document.querySelector('.cramp-patient-controls').scrollIntoView()")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = tools.call("Page.captureScreenshot", format="png")
        (SCREENSHOTS / "patient-page.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        tools.close()
