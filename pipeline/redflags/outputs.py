"""Write the red-flag tables of a run directory: complete, sorted, atomically replaced.

``red_flags.csv``, ``subject_flags.csv`` and ``red_flags_not_recorded.csv`` hold every row of
``RedFlagResult``: red flags are for clinical follow-up by pseudonymous subject id, so nothing is
suppressed, sampled or capped here (unlike aggregate research outputs, see ``disclosure.py``).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline import csvsafe
from pipeline.redflags.evaluate import RedFlagResult

RED_FLAGS_CSV = "red_flags.csv"
SUBJECT_FLAGS_CSV = "subject_flags.csv"
NOT_RECORDED_CSV = "red_flags_not_recorded.csv"

#: Second resolution unless the time has a fraction (then ``.ffffff``), like the input.
DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.f"


def write_flag_outputs(result: RedFlagResult, out_dir: Path) -> dict[str, Path]:
    """Write the three CSV files into ``out_dir`` (created if needed); returns name -> path.

    Each file is written to a temporary file in ``out_dir`` and renamed over the target
    (``pipeline.atomic``), so a reader never sees a half-written file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        RED_FLAGS_CSV: result.flags,
        SUBJECT_FLAGS_CSV: result.subject_flags,
        NOT_RECORDED_CSV: result.not_recorded,
    }
    return {name: _write_csv_atomic(df, out_dir / name) for name, df in tables.items()}


def _write_csv_atomic(df: pl.DataFrame, target: Path) -> Path:
    return csvsafe.write_csv(target, df, datetime_format=DATETIME_FORMAT, date_format="%Y-%m-%d")
