"""report.html in a real browser: headless Chromium (Debian's ``chromium``) opens the rendered
sample report and we check, over the DevTools protocol, that the sections and figures render, that
the page makes no request beyond its own file, and that the console stays free of errors. A
full-page screenshot is kept at ``reports/screenshots/report.png`` for review.

``scripts/ensure-chromium`` finds the browser (installing the package with apt-get when missing and
running as root, as in CI). The protocol is spoken with ``websocket-client`` (in the lock).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_report_render import rendered_reports

pytestmark = pytest.mark.xdist_group("report")


@pytest.fixture(scope="session")
def rendered(tmp_path_factory):
    return rendered_reports(tmp_path_factory)

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "reports" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-port=0", "--remote-allow-origins=*", "--window-size=1280,900",
]
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def chromium() -> str:
    result = subprocess.run([str(ROOT / "scripts" / "ensure-chromium")], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"scripts/ensure-chromium failed:\n{result.stderr}"
    return result.stdout.strip().splitlines()[-1]


class DevTools:
    """The few DevTools-protocol calls the test needs, on one page target."""

    def __init__(self, binary: str):
        import websocket

        self.profile = tempfile.mkdtemp(prefix="cramp-chromium-")
        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = self._port()
        pages = self._wait_for_pages(port)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=TIMEOUT_S,
                                              suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def _port(self) -> int:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if match:
                return int(match.group(1))
            if not line and self.process.poll() is not None:
                break
        raise RuntimeError("Chromium did not start its DevTools endpoint")

    @staticmethod
    def _wait_for_pages(port: int) -> list[dict]:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return pages
            time.sleep(0.1)
        raise RuntimeError("Chromium opened no page")

    def call(self, method: str, **params) -> dict:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if any(e.get("method") == event for e in self.events):
                return
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(event)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.process.kill()
            self.process.wait(timeout=10)
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(chromium, rendered):
    report = rendered["full"] / "report.html"
    tools = DevTools(chromium)
    try:
        for domain in ("Page", "Network", "Runtime", "Log"):
            tools.call(f"{domain}.enable")
        tools.call("Page.navigate", url=report.as_uri())
        tools.wait_for("Page.loadEventFired")
        # Wait until every image has decoded (data URIs decode asynchronously).
        tools.evaluate("Promise.all([...document.images].map(i => i.decode().catch(() => null)))")
        yield tools, report
    finally:
        tools.close()


def test_sections_render_in_the_browser(page):
    tools, _ = page
    ids = tools.evaluate("[...document.querySelectorAll('main > section')].map(s => s.id)")
    for section in ("effects", "dose-response", "diagnostics", "red-flags", "red-flag-follow-up",
                    "data-quality"):
        assert section in ids
    headings = tools.evaluate("[...document.querySelectorAll('h2')].map(h => h.innerText)")
    assert "Effects" in headings and "Red flags" in headings
    assert tools.evaluate("document.title") == "Muscle-cramp diary report"


def test_figures_are_present_and_decoded(page):
    tools, _ = page
    images = tools.evaluate(
        "[...document.images].map(i => [i.complete, i.naturalWidth, i.alt])")
    assert len(images) >= 5
    assert all(complete and width > 100 and alt for complete, width, alt in images), images


def test_no_request_leaves_the_file(page):
    tools, report = page
    urls = [e["params"]["request"]["url"] for e in tools.events
            if e.get("method") == "Network.requestWillBeSent"]
    assert urls, "the navigation itself should be seen"
    outside = [u for u in urls if not (u == report.as_uri() or u.startswith("data:"))]
    assert outside == []


def test_console_has_no_errors(page):
    tools, _ = page
    errors = [e for e in tools.events
              if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled"
                  and e["params"].get("type") in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded"
                  and e["params"]["entry"].get("level") == "error")]
    assert errors == []


def test_keep_a_full_page_screenshot_for_review(page):
    tools, _ = page
    height = int(tools.evaluate("document.documentElement.scrollHeight"))
    tools.call("Emulation.setDeviceMetricsOverride", width=1280, height=min(height, 16000),
               deviceScaleFactor=1, mobile=False)
    shot = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG") and len(png) > 50_000
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "report.png").write_bytes(png)
