"""`make lab` smoke test: JupyterLab starts on the notebooks with this environment and serves a
notebook page. The server runs on a free localhost port with a random token and is stopped within
a bounded time whatever happens."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "02-factor-associations.ipynb"
START_TIMEOUT_S = 90

pytestmark = pytest.mark.xdist_group("lab")


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


@pytest.fixture
def lab_server(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={ROOT / 'notebooks'}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.news_url=", "--ServerApp.log_level=WARN",
         "--allow-root"],  # CI containers run as root; harmless otherwise
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail("jupyter lab exited: " + process.stderr.read().decode()[-2000:])
            try:
                if _get(f"{base}/api/status?token={token}")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail(f"jupyter lab did not answer within {START_TIMEOUT_S} s")
        yield base, token
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def test_lab_serves_a_notebook_page_with_the_project_kernel_available(lab_server):
    base, token = lab_server
    status, page = _get(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
    assert status == 200 and "JupyterLab" in page
    status, body = _get(f"{base}/api/contents/{NOTEBOOK}?token={token}")
    assert status == 200
    content = json.loads(body)
    assert content["type"] == "notebook" and content["content"]["cells"]
    status, body = _get(f"{base}/api/kernelspecs?token={token}")
    specs = json.loads(body)["kernelspecs"]
    assert "python3" in specs
    # The token is required: without it the API refuses.
    assert _get(f"{base}/api/contents/{NOTEBOOK}")[0] in (401, 403)


def test_the_project_kernel_registers_with_this_environments_python(tmp_path):
    """What `make lab` does first (there with --user): the kernel it registers runs this venv."""
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(tmp_path),
                    "--name", "cramp", "--display-name", "Python (cramp)"],
                   check=True, capture_output=True, timeout=60)
    spec = json.loads((tmp_path / "share" / "jupyter" / "kernels" / "cramp" / "kernel.json")
                      .read_text())
    assert spec["argv"][0] == sys.executable and spec["display_name"] == "Python (cramp)"
