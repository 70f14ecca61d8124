"""``cramp report``: the job a scheduler (cron, a systemd timer) runs.

It ingests what is new into a store kept inside the reports directory (idempotent by file hash,
the ingest stage's job), refits, renders, and publishes ``REPORTS/<YYYY-MM-DD>/`` plus
``REPORTS/index.html`` listing every report. Safety properties:

- **Atomic publication.** The run is built in a hidden temporary directory inside ``REPORTS`` and
  renamed into place only when complete; the index is rewritten atomically afterwards. A failed
  run raises and leaves the previous reports and the index exactly as they were.
- **No overlap.** A lock file (``REPORTS/.cramp-report.lock``, via ``filelock``) is taken without
  waiting; a second run while one is in progress stops with a clear message.
- The last failed build is kept in ``REPORTS/.failed-last/`` for diagnosis (with the executed
  copy of a failed notebook); it is never listed in the index.
- A second run on the same day replaces that day's report (the old one is kept until the new one
  is in place).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline import atomic
from pipeline.atomic import current_umask
from pipeline.errors import UserError

LOCK_NAME = ".cramp-report.lock"
STORE_NAME = "store"
INDEX_NAME = "index.html"
#: Where the last failed build is kept for diagnosis (replaced by the next failure).
FAILED_NAME = ".failed-last"
_DATED = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def scheduled_report(data_dir: Path, reports_dir: Path, *, now: dt.datetime | None = None,
                     identifiers: bool = True, rules_path: Path | None = None,
                     executor: str = "local", scheduler: str | None = None) -> Path:
    """Run the whole job on ``data_dir`` and publish ``reports_dir/<date>/``; returns that path.
    ``executor``/``scheduler``: where per-bucket work runs (``run_job``)."""
    from pipeline.report.render import render_report
    from pipeline.run import run_job

    data_dir, reports_dir = Path(data_dir), Path(reports_dir)
    if not data_dir.is_dir():
        raise UserError("dataset directory not found (expected a directory of tables)",
                        path=str(data_dir))
    reports_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(reports_dir / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"another `cramp report` is already writing to {reports_dir} (lock file "
                        f"{reports_dir / LOCK_NAME}); this run stopped without changing anything. "
                        "Try again when it has finished.") from None
    try:
        day = (now or dt.datetime.now()).date().isoformat()
        building = Path(tempfile.mkdtemp(prefix=f".building-{day}-", dir=reports_dir))
        try:
            store_dir = reports_dir / STORE_NAME
            run_job(data_dir, building, store_dir=store_dir, rules_path=rules_path,
                    report=False, identifiers=identifiers, executor=executor,
                    scheduler=scheduler)
            render_report(building, identifiers=identifiers, store_dir=store_dir,
                          rules_path=rules_path)
            _apply_umask(building)
            target = _publish(building, reports_dir / day)
        except BaseException:
            # Keep the last failed build for diagnosis (hidden; never listed in the index).
            failed = reports_dir / FAILED_NAME
            shutil.rmtree(failed, ignore_errors=True)
            if building.exists():
                building.rename(failed)
            raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
        write_index(reports_dir)
        return target
    finally:
        lock.release()


def _apply_umask(root: Path) -> None:
    """Temporary files and directories are created private (0600/0700); published reports get the
    permissions the process's umask allows (for example group-readable under ``UMask=0027``)."""
    mask = current_umask()
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _publish(building: Path, target: Path) -> Path:
    """Rename ``building`` to ``target``, replacing an existing report only once the new one is in
    place (an existing one is moved aside first and restored if the rename fails)."""
    aside = None
    if target.exists():
        aside = target.with_name(f".replaced-{target.name}-{os.getpid()}")
        target.rename(aside)
    try:
        building.rename(target)
    except BaseException:
        if aside is not None:
            aside.rename(target)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return target


def list_reports(reports_dir: Path) -> list[Path]:
    """Published dated report directories, newest first."""
    return sorted((p for p in Path(reports_dir).iterdir()
                   if p.is_dir() and _DATED.match(p.name) and (p / "report.html").is_file()),
                  key=lambda p: p.name, reverse=True)


def write_index(reports_dir: Path) -> Path:
    """(Re)write ``reports_dir/index.html`` listing every published report, newest first."""
    rows = []
    for report in list_reports(reports_dir):
        period = ""
        summary = report / "summary.json"
        if summary.is_file():
            panel = json.loads(summary.read_text(encoding="utf-8")).get("panel", {})
            if panel.get("first_date") and panel.get("last_date"):
                period = f"diary days {panel['first_date']} to {panel['last_date']}"
        name = html.escape(report.name)
        rows.append(f'<li><a href="{name}/report.html">{name}</a> '
                    f'<span class="period">{html.escape(period)}</span></li>')
    body = "".join(rows) or "<li>No reports yet.</li>"
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>Cramp diary reports</title><style>body{font:16px/1.5 system-ui,sans-serif;"
        "max-width:48rem;margin:2rem auto;padding:0 1rem;color:#1f2933}a{color:#1b6ca8}"
        ".period{color:#5f6b76;font-size:.9rem}</style></head><body>"
        f"<h1>Cramp diary reports</h1><ul>{body}</ul></body></html>\n"
    )
    index = atomic.write_text(Path(reports_dir) / INDEX_NAME, page)
    index.chmod(0o666 & ~current_umask())
    return index
