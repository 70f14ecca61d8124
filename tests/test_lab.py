"""JupyterLab as a clinician opens it: `make lab` itself (as root it must add --allow-root) starts
JupyterLab offering one kernel, the project's ("Python (cramp)", the notebooks' kernelspec); each
notebook is opened in headless Chromium, all its cells are run through JupyterLab's own command
(what "Run All Cells" does), and the outputs must render without an error in the browser.

The server runs on a free localhost port with a random token, with its settings, runtime and the
user-level kernel registration in a temporary directory; it is stopped within a bounded time
whatever happens.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from tests.test_browser_report import SCREENSHOTS, DevTools, chromium  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
START_TIMEOUT_S = 180
RUN_TIMEOUT_S = 420

pytestmark = [pytest.mark.xdist_group("lab"), pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, ""


@contextlib.contextmanager
def running_lab(argv: list[str], *, cwd, env, port: int, token: str, what: str,
                stop_timeout_s: float = 20):
    """Start a JupyterLab server (``argv``), wait until it answers on ``port``, yield its base
    URL, and stop it (its whole process group) within a bounded time whatever happens."""
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"{what} exited: " + process.stdout.read().decode()[-3000:])
            try:
                if _get(f"{base}/api/status?token={token}")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail(f"{what} did not answer within {START_TIMEOUT_S} s")
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    from pipeline.report.sample import ensure_sample_run

    ensure_sample_run()  # the notebooks' default run, built once before any kernel needs it
    tmp = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(16)
    # Render every cell (no windowing), so that the DOM holds every output to check.
    settings = tmp / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_DATA_DIR": str(tmp / "data"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"), "MPLBACKEND": "Agg"}
    lab_args = " ".join([
        "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
        f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=",
        "--ServerApp.log_level=WARN"])
    # `make lab` exactly, with only the server's address and token added.
    with running_lab(["make", "--no-print-directory", "lab", f"LAB_ARGS={lab_args}"], cwd=ROOT,
                     env=env, port=port, token=token, what="make lab") as base:
        yield base, token, tmp


def test_make_lab_offers_exactly_the_project_kernel(lab_server):
    base, token, tmp = lab_server
    status, body = _get(f"{base}/api/kernelspecs?token={token}")
    assert status == 200
    specs = json.loads(body)
    assert sorted(specs["kernelspecs"]) == ["cramp"] and specs["default"] == "cramp"
    spec = specs["kernelspecs"]["cramp"]["spec"]
    assert spec["display_name"] == "Python (cramp)"
    # Registered by `make lab` (user level, here in the temporary data directory) with this
    # environment's interpreter.
    registered = json.loads((tmp / "data" / "kernels" / "cramp" / "kernel.json").read_text())
    assert Path(registered["argv"][0]).resolve() == (ROOT / ".venv" / "bin" / "python").resolve()
    for path in NOTEBOOKS:
        assert nbformat.read(path, as_version=4).metadata["kernelspec"]["name"] == "cramp"
    # The token is required: without it the API refuses.
    assert _get(f"{base}/api/kernelspecs")[0] in (401, 403)


#: Opens a notebook in JupyterLab, runs all its cells with the "Run All Cells" command and keeps
#: the result in window.__cramp[name] (polled: a run can outlast one DevTools call).
RUN_ALL = """
(async (name) => {
  window.__cramp = window.__cramp || {};
  const state = window.__cramp[name] = {done: false};
  try {
    const app = window.jupyterapp;
    const sleep = ms => new Promise(r => setTimeout(r, ms));
    const widget = await app.commands.execute('docmanager:open', {path: name});
    await widget.context.ready;
    await widget.sessionContext.ready;
    state.kernel = widget.sessionContext.session.kernel.name;
    state.kernelDisplay = widget.sessionContext.kernelDisplayName;
    app.shell.activateById(widget.id);
    await app.commands.execute('notebook:run-all-cells');
    const cells = () => Array.from({length: widget.content.model.cells.length},
                                   (_, i) => widget.content.model.cells.get(i));
    while (cells().some(c => c.type === 'code' && !c.executionCount) ||
           widget.sessionContext.session.kernel.status !== 'idle') {
      await sleep(250);
    }
    await sleep(500);  // let the last outputs attach to the DOM
    const outputs = cells().filter(c => c.type === 'code').flatMap(c => c.outputs.toJSON());
    state.outputTypes = outputs.map(o => o.output_type);
    state.errors = outputs.filter(o => o.output_type === 'error')
                          .map(o => o.ename + ': ' + o.evalue);
    state.mime = outputs.flatMap(o => Object.keys(o.data || {}));
    const node = widget.content.node;
    const images = [...node.querySelectorAll('.jp-OutputArea-output img')];
    await Promise.all(images.map(i => i.decode().catch(() => null)));
    state.images = images.map(i => i.naturalWidth);
    state.tables = node.querySelectorAll('.jp-OutputArea-output table').length;
    state.domErrors = node.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]').length;
    state.widgetId = widget.id;
    window.__crampWidgets = window.__crampWidgets || {};
    window.__crampWidgets[name] = widget;
  } catch (e) {
    state.exception = String(e && e.stack || e);
  }
  state.done = true;
})
"""


@pytest.fixture(scope="module")
def lab_page(lab_server, chromium):  # noqa: F811 - the imported fixture
    base, token, _ = lab_server
    tools = DevTools(chromium)
    try:
        for domain in ("Page", "Runtime", "Log"):
            tools.call(f"{domain}.enable")
        tools.call("Page.navigate", url=f"{base}/lab?token={token}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not tools.evaluate("!!(window.jupyterapp && window.jupyterapp.shell && "
                                 "document.querySelector('.jp-LabShell'))"):
            assert time.monotonic() < deadline, "JupyterLab did not start in the browser"
            time.sleep(0.5)
        tools.evaluate("window.jupyterapp.restored")
        yield tools
    finally:
        tools.close()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_runs_in_jupyterlab_and_its_outputs_render(lab_page, path, tmp_path):
    tools = lab_page
    before = path.read_bytes()
    name = path.name
    tools.evaluate(f"({RUN_ALL})({json.dumps(name)}); true")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not tools.evaluate(f"!!(window.__cramp && window.__cramp[{json.dumps(name)}] && "
                             f"window.__cramp[{json.dumps(name)}].done)"):
        assert time.monotonic() < deadline, f"{name}: cells did not finish in {RUN_TIMEOUT_S} s"
        time.sleep(1)
    state = tools.evaluate(f"window.__cramp[{json.dumps(name)}]")
    # Keep a screenshot of the executed notebook for review, then close it without saving.
    shot = tools.call("Page.captureScreenshot", format="png")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / f"lab-{path.stem}.png").write_bytes(base64.b64decode(shot["data"]))
    tools.evaluate(f"""(async () => {{
        const w = window.__crampWidgets[{json.dumps(name)}];
        await w.sessionContext.shutdown();
        w.context.model.dirty = false;  // close without saving: the file stays as it was
        w.dispose();
    }})()""")
    assert "exception" not in state, state.get("exception")
    assert state["kernel"] == "cramp" and state["kernelDisplay"] == "Python (cramp)"
    assert state["errors"] == [] and state["domErrors"] == 0, state["errors"]
    assert "error" not in state["outputTypes"]
    # Every figure decoded to a real image; tables and prose rendered as HTML and Markdown.
    assert state["images"] and all(width > 100 for width in state["images"]), state["images"]
    assert state["tables"] >= 1 or "text/markdown" in state["mime"]
    # Running in JupyterLab did not rewrite the notebook file (nbval compares its outputs).
    assert path.read_bytes() == before
