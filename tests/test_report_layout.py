"""The rendered report as a reader sees it in headless Chromium: no key table in a scroll box, the
rules' guidance quotes readable without scrolling sideways, numbers under their headers, captions
wrapping to the page. (tests/test_browser_report.py checks the page loads cleanly; this checks its
layout.)
"""

from __future__ import annotations

import polars as pl
import pytest

from tests.test_browser_report import DevTools, chromium  # noqa: F401  (fixture)
from tests.test_report_render import rendered_reports

pytestmark = pytest.mark.xdist_group("report")


@pytest.fixture(scope="module")
def page(chromium, tmp_path_factory):  # noqa: F811
    report = rendered_reports(tmp_path_factory)["full"] / "report.html"
    tools = DevTools(chromium)
    try:
        tools.call("Page.enable")
        tools.call("Page.navigate", url=report.as_uri())
        tools.wait_for("Page.loadEventFired")
        yield tools, report
    finally:
        tools.close()


def test_the_page_never_scrolls_sideways(page):
    tools, _ = page
    assert tools.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_no_table_sits_in_a_box_that_scrolls(page):
    tools, _ = page
    boxed = tools.evaluate("""[...document.querySelectorAll('.output, .table-scroll')]
        .filter(e => e.scrollHeight > e.clientHeight + 1 || e.scrollWidth > e.clientWidth + 1)
        .map(e => e.innerText.slice(0, 60))""")
    assert boxed == []


def test_every_effects_row_is_shown_one_table_per_model(page):
    tools, report = page
    effects = pl.read_csv(report.parent / "effects.csv")
    rows = tools.evaluate("document.querySelectorAll('#effects table.effects tbody tr').length")
    tables = tools.evaluate("document.querySelectorAll('#effects table.effects').length")
    assert rows == effects.height
    assert tables == effects["model"].n_unique()


def test_each_guidance_quote_is_visible_without_scrolling(page):
    tools, _ = page
    cells = tools.evaluate("""[...document.querySelectorAll('table.rules td')].map(td => {
        const r = td.getBoundingClientRect();
        return [td.innerText, td.scrollWidth <= td.clientWidth + 1, r.right <= window.innerWidth];
    })""")
    quotes = [c for c in cells if c[0].startswith("Guidance (verbatim)")]
    assert len(quotes) == 5
    assert all(fits and inside for _, fits, inside in cells), [c for c in cells if not all(c[1:])]


def test_numbers_sit_under_their_headers(page):
    tools, _ = page
    misaligned = tools.evaluate("""[...document.querySelectorAll('table.cramp-table')]
      .flatMap(t => {
        const heads = [...t.querySelectorAll('thead th')];
        return [...t.querySelectorAll('tbody tr')].slice(0, 3).flatMap(tr =>
            [...tr.children].map((td, i) => [td, heads[i]])
              .filter(([td, th]) => th && td.classList.contains('num'))
              .filter(([td, th]) => Math.abs(td.getBoundingClientRect().right
                                            - th.getBoundingClientRect().right) > 1)
              .map(([td, th]) => th.innerText + ': ' + td.innerText));
    })""")
    assert misaligned == []


def test_captions_wrap_within_the_page(page):
    tools, _ = page
    wide = tools.evaluate("""[...document.querySelectorAll('p.table-caption')]
        .filter(p => p.getBoundingClientRect().right > window.innerWidth)
        .map(p => p.innerText.slice(0, 60))""")
    assert wide == []
    assert tools.evaluate("document.querySelectorAll('table caption').length") == 0
