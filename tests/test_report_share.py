"""Sharing without identifiers: the shareable report and its aggregate tables are written into their
own directory (``RUN/share/``) that holds nothing identifying, so it can be zipped and handed out
as it is. Every byte there is scanned for every subject id of the run (images decoded first: a
base64 string can spell anything by chance, the bytes it encodes cannot)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import polars as pl
import pytest

from pipeline.store import Store
from tests.test_report_render import rendered_reports

pytestmark = pytest.mark.xdist_group("report")


@pytest.fixture(scope="session")
def rendered(tmp_path_factory):
    return rendered_reports(tmp_path_factory)


def _subject_ids(run_dir: Path) -> list[str]:
    store = run_dir.parent / "store"  # the fixture's shared store beside the runs
    ids = Store(store).read("subjects").select("subject_id").collect()["subject_id"].to_list()
    assert len(ids) >= 100
    return ids


def _decoded(path: Path) -> list[bytes]:
    """A file's bytes; for HTML, also the bytes of every data URI, and the page without them."""
    data = path.read_bytes()
    if path.suffix != ".html":
        return [data]
    uris = re.findall(rb'data:[^;"]+;base64,([A-Za-z0-9+/=\s]+)', data)
    page = re.sub(rb'data:[^;"]+;base64,[A-Za-z0-9+/=\s]+', b"data:", data)
    return [page, *(base64.b64decode(u) for u in uris)]


def scan_for_ids(directory: Path, ids: list[str]) -> list[tuple[str, str]]:
    """(file, id) for every subject id found anywhere under ``directory``."""
    pattern = re.compile(rb"(?<![A-Za-z0-9_-])(" + b"|".join(re.escape(i.encode()) for i in ids)
                         + rb")(?![A-Za-z0-9_-])")
    found = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        for blob in _decoded(path):
            found += [(str(path.relative_to(directory)), m.decode()) for m in
                      set(pattern.findall(blob))]
    return found


def test_the_share_directory_holds_the_report_and_aggregates_and_no_subject_id(rendered):
    share = rendered["shareable"]
    assert share.name == "share" and (share / "report.html").is_file()
    names = {p.relative_to(share).as_posix() for p in share.rglob("*") if p.is_file()}
    assert "report_tables/aggregate/effects.csv" in names
    assert not [n for n in names if "follow_up" in n or n.endswith(("red_flags.csv",
                                                                    "subject_flags.csv"))]
    ids = _subject_ids(share.parent)
    assert scan_for_ids(share, ids) == []


def test_the_scan_finds_an_id_in_text_and_inside_an_embedded_image(tmp_path):
    (tmp_path / "a.csv").write_text("rule,subjects\nS00042,3\n")
    payload = base64.b64encode(b"\x89PNG...tEXtComment\x00S00007...").decode()
    (tmp_path / "r.html").write_text(f'<p>fine S000999</p><img src="data:image/png;base64,'
                                     f'{payload}">')
    assert sorted(scan_for_ids(tmp_path, ["S00042", "S00007", "S00099"])) == [
        ("a.csv", "S00042"), ("r.html", "S00007")]


def test_the_care_team_report_stays_beside_the_run_outputs(rendered):
    full = rendered["full"]
    assert (full / "report.html").is_file() and not (full / "share").exists()
    flagged = pl.read_csv(full / "red_flags.csv")["subject_id"].unique().to_list()
    assert {s for _, s in scan_for_ids(full / "report_tables" / "follow_up", flagged)}
