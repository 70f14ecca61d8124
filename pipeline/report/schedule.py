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
- A killed run leaves a ``.building-*`` (or ``.replaced-*``) directory behind; the next run removes
  such leftovers under the lock, when no other run can be using them.

**What changed.** The previous dated report (the newest one from an earlier day) is passed to the
notebooks as ``previous_run_dir`` and compared with the new run (``pipeline.report.changes``): the
new run keeps ``changes.json`` (new firings, new red flags, newly flagged subjects), the job prints
it with the ingest counts of the new files, and the index lists it per report with a link to the
previous one.
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

from pipeline import atomic, progress as stages
from pipeline.atomic import current_umask
from pipeline.errors import UserError

LOCK_NAME = ".cramp-report.lock"
STORE_NAME = "store"
INDEX_NAME = "index.html"
#: Where the last failed build is kept for diagnosis (replaced by the next failure).
FAILED_NAME = ".failed-last"
#: Prefixes of directories a run creates and removes; any found under the lock are leftovers.
_TRANSIENT_PREFIXES = (".building-", ".replaced-")
_DATED = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def scheduled_report(data_dir: Path, reports_dir: Path, *, now: dt.datetime | None = None,
                     identifiers: bool = True, rules_path: Path | None = None,
                     progress: bool = False, executor: str = "local",
                     scheduler: str | None = None) -> Path:
    """Run the whole job on ``data_dir`` and publish ``reports_dir/<date>/``; returns that path.
    ``executor``/``scheduler``: where per-bucket work runs (``run_job``)."""
    from pipeline.report import render as render_module
    from pipeline.report.changes import write_changes
    from pipeline import run as run_module

    # Absolute once, here: the renders in threads and kernels must not depend on the cwd.
    data_dir, reports_dir = Path(data_dir).resolve(), Path(reports_dir).resolve()
    rules_path = Path(rules_path).resolve() if rules_path is not None else None
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
        remove_leftovers(reports_dir)
        day = (now or dt.datetime.now()).date().isoformat()
        previous = previous_report(reports_dir, day)
        building = Path(tempfile.mkdtemp(prefix=f".building-{day}-", dir=reports_dir))
        try:
            with stages.session(progress):
                store_dir = reports_dir / STORE_NAME
                run_module.run_job(data_dir, building, store_dir=store_dir, rules_path=rules_path,
                                   report=False, identifiers=identifiers, progress=progress,
                                   executor=executor, scheduler=scheduler)
                write_changes(building, previous)
                render_module.render_report(building, identifiers=identifiers,
                                            store_dir=store_dir, rules_path=rules_path,
                                            previous_run_dir=previous)
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


def remove_leftovers(reports_dir: Path) -> list[str]:
    """Remove ``.building-*`` and ``.replaced-*`` directories a killed run left behind. Call only
    with the lock held: then no other run is building or publishing. Returns the names removed."""
    removed = []
    for path in Path(reports_dir).iterdir():
        if path.is_dir() and path.name.startswith(_TRANSIENT_PREFIXES):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return sorted(removed)


def previous_report(reports_dir: Path, day: str) -> Path | None:
    """The newest published report from a day before ``day`` (a same-day re-run replaces that
    day's report, so it compares with the day before, as the index does)."""
    earlier = [p for p in list_reports(reports_dir) if p.name < day
               and (p / "red_flags.csv").is_file()]
    return earlier[0] if earlier else None


def report_page(report_dir: Path) -> Path | None:
    """The page of a published report: the care team's, else the shareable one."""
    for page in (Path(report_dir) / "report.html", Path(report_dir) / "share" / "report.html"):
        if page.is_file():
            return page
    return None


def job_lines(report_dir: Path) -> list[str]:
    """What the scheduled job prints: the new files' ingest counts, what is new among the flags,
    and where the report is."""
    from pipeline.report.changes import read_changes

    report_dir = Path(report_dir)
    summary = json.loads((report_dir / "summary.json").read_text(encoding="utf-8"))
    files = [f for f in summary.get("files", []) if f.get("status") == "ingested"]
    skipped = len(summary.get("files", [])) - len(files)
    lines = [f"New files ingested: {len(files)} ({skipped} already in the store, skipped)."]
    for name, t in summary.get("tables", {}).items():
        if t.get("read"):
            lines.append(f"  {name}: read {t['read']:,}, accepted {t['accepted']:,}, quarantined "
                         f"{t['quarantined']:,}, duplicates {t['duplicates']:,}")
    changes = read_changes(report_dir)
    if changes:
        since = (f"since the report of {changes['previous_report']}"
                 if changes.get("previous_report") else "(first report: everything is new)")
        lines.append(f"New red flags {since}: {changes['new_red_flags']:,} episode(s) in "
                     f"{changes['new_red_flag_subjects']:,} subject(s); newly flagged subjects "
                     f"(any rule): {changes['new_flagged_subjects']:,}; new rule firings in all: "
                     f"{changes['new_flags']:,}.")
    page = report_page(report_dir)
    lines.append(f"Report: {page or report_dir}")
    return lines


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
                   if p.is_dir() and _DATED.match(p.name) and report_page(p) is not None),
                  key=lambda p: p.name, reverse=True)


def _report_row(report: Path, previous: Path | None) -> str:
    """One index row: date (linked), diary-day range, subjects, episodes, red flags, new red
    flags, and a link to the previous report."""
    from pipeline.report.changes import read_changes

    summary, flags = {}, None
    if (report / "summary.json").is_file():
        summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
    panel = summary.get("panel", {})
    if (report / "red_flags.csv").is_file():
        import polars as pl

        red = (pl.read_csv(report / "red_flags.csv", columns=["subject_id", "episode_id",
                                                               "severity"],
                           schema_overrides={"subject_id": pl.String, "episode_id": pl.String})
               .filter(pl.col("severity") == "red_flag"))
        flags = red.select("subject_id", "episode_id").n_unique() if red.height else 0
    changes = read_changes(report)
    period = (f"{panel['first_date']} to {panel['last_date']}"
              if panel.get("first_date") and panel.get("last_date") else "")
    count = lambda v: "" if v is None else f"{int(v):,}"  # noqa: E731
    page = report_page(report).relative_to(report.parent).as_posix()
    name = html.escape(report.name)
    prev = (f'<a href="{html.escape(previous.name)}/'
            f'{html.escape(report_page(previous).relative_to(previous).as_posix())}">'
            f"{html.escape(previous.name)}</a>" if previous is not None else "")
    cells = [f'<a href="{html.escape(page)}">{name}</a>', html.escape(period),
             count(panel.get("n_subjects")), count(panel.get("n_episodes")), count(flags),
             count(changes.get("new_red_flags")), prev]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def write_index(reports_dir: Path) -> Path:
    """(Re)write ``reports_dir/index.html`` listing every published report, newest first."""
    reports = list_reports(reports_dir)
    rows = [_report_row(r, reports[i + 1] if i + 1 < len(reports) else None)
            for i, r in enumerate(reports)]
    head = ("<tr><th>report</th><th>diary days</th><th>subjects</th><th>episodes</th>"
            "<th>red flags</th><th>new red flags</th><th>previous</th></tr>")
    body = (f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>" if rows
            else "<p>No reports yet.</p>")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>Cramp diary reports</title><style>body{font:16px/1.5 system-ui,sans-serif;"
        "max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1f2933}a{color:#1b6ca8}"
        "table{border-collapse:collapse}th,td{padding:.3rem .7rem;border-bottom:1px solid #d9dee3;"
        "text-align:right}th:first-child,td:first-child,th:nth-child(2),td:nth-child(2)"
        "{text-align:left}</style></head><body>"
        "<h1>Cramp diary reports</h1><p>Newest first. <em>Red flags</em>: episodes that met a "
        "red-flag rule; <em>new red flags</em>: those episodes with a red-flag firing the "
        f"previous report did not have.</p>{body}</body></html>\n"
    )
    index = atomic.write_text(Path(reports_dir) / INDEX_NAME, page)
    index.chmod(0o666 & ~current_umask())
    return index
