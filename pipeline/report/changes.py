"""What changed since the previous report: the flags a clinician has not seen yet.

The scheduled job (``cramp report``) keeps dated reports; a clinician reads them one after the
other, so the useful question is "what is new since the last one I saw". A rule firing is the same
firing in two reports when it is the same episode (the stable id of ``pipeline.episode_ids``, the
same on every run) of the same subject under the same rule: ``FLAG_KEY``. Everything here reads the
two run directories' ``red_flags.csv`` and ``subject_flags.csv`` and nothing else.

With no previous report every flag is new (a first report hides nothing).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from pipeline import atomic
from pipeline.report.load import RED_FLAG_DTYPES, _read_csv

#: The key of one rule firing across reports.
FLAG_KEY = ("subject_id", "episode_id", "rule_id")
#: Written into each scheduled run directory (the index and the job's output read it).
CHANGES_FILE = "changes.json"
RED_FLAG = "red_flag"


def _flags(run_dir: Path) -> pl.DataFrame:
    return _read_csv(Path(run_dir) / "red_flags.csv", RED_FLAG_DTYPES)


def mark_new(flags: pl.DataFrame, previous: pl.DataFrame | None) -> pl.DataFrame:
    """``flags`` (a red_flags.csv frame) with ``is_new``: its ``FLAG_KEY`` is not in ``previous``
    (the previous report's red flags). With no previous report every flag is new: a first report
    hides nothing. The one comparison the job's counts and the report's worklist both use."""
    if previous is None:
        return flags.with_columns(pl.lit(True).alias("is_new"))
    seen = previous.select(FLAG_KEY).unique().with_columns(pl.lit(False).alias("is_new"))
    return (flags.join(seen, on=list(FLAG_KEY), how="left", maintain_order="left")
            .with_columns(pl.col("is_new").fill_null(True)))


def new_flags(current_run_dir: Path | str, previous_run_dir: Path | str | None) -> pl.DataFrame:
    """The rows of the current run's ``red_flags.csv`` whose (subject, episode, rule) is not in the
    previous run's: every row when there is no previous run. Same columns, same order."""
    previous = _flags(previous_run_dir) if previous_run_dir is not None else None
    return mark_new(_flags(current_run_dir), previous).filter("is_new").drop("is_new")


def change_summary(current_run_dir: Path | str, previous_run_dir: Path | str | None) -> dict:
    """Counts for the job's output and the index. Red flags are counted as the report's header
    counts them, in episodes (an episode may fire several red-flag rules): new red-flag episodes
    and their subjects; also every new firing of any rule, and the subjects flagged now who had no
    flag in the previous report."""
    fresh = new_flags(current_run_dir, previous_run_dir)
    current_subjects = set(_flags(current_run_dir)["subject_id"].to_list())
    before = (set(_flags(previous_run_dir)["subject_id"].to_list())
              if previous_run_dir is not None else set())
    red = fresh.filter(pl.col("severity") == RED_FLAG)
    return {
        "previous_report": Path(previous_run_dir).name if previous_run_dir is not None else None,
        "new_flags": fresh.height,
        "new_red_flag_firings": red.height,
        "new_red_flags": red.select("subject_id", "episode_id").n_unique() if red.height else 0,
        "new_red_flag_subjects": red["subject_id"].n_unique(),
        "new_flagged_subjects": len(current_subjects - before),
    }


def write_changes(current_run_dir: Path, previous_run_dir: Path | None) -> dict:
    """Compute :func:`change_summary` and keep it as ``CHANGES_FILE`` in the current run."""
    changes = change_summary(current_run_dir, previous_run_dir)
    atomic.write_json(Path(current_run_dir) / CHANGES_FILE, changes)
    return changes


def read_changes(run_dir: Path) -> dict:
    """The kept change summary of a scheduled run ({} for runs made before it was kept)."""
    path = Path(run_dir) / CHANGES_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
