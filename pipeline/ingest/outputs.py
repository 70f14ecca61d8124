"""Write ``summary.json`` and ``quarantine.csv`` for a validate or ingest run.

Both are written atomically (temp file, then rename). Before anything is written the row
accounting is asserted for every table: ``read == accepted + quarantined + duplicates``, and the
quarantine holds exactly ``quarantined`` rows per table. A mismatch is a bug in the pipeline, not
in the user's data, so it raises ``IngestAccountingError`` (not ``UserError``) loudly.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.ingest.dataset import IngestResult
from pipeline.ingest.identifiers import mask_identifiers
from pipeline.ingest.validate import QUARANTINE_COLUMNS
from pipeline import atomic, csvsafe

SUMMARY_FILE = "summary.json"
QUARANTINE_FILE = "quarantine.csv"


class IngestAccountingError(AssertionError):
    """Rows were lost or double-counted: a pipeline bug. Never shown as a user error."""


def check_accounting(result: IngestResult) -> None:
    """Raise ``IngestAccountingError`` unless every row is counted exactly once."""
    problems = []
    per_table = dict(result.quarantine.group_by("table").len().iter_rows())
    for name, t in result.summary["tables"].items():
        total = t["accepted"] + t["quarantined"] + t["duplicates"]
        if t["read"] != total:
            problems.append(f"{name}: read {t['read']} != accepted {t['accepted']} + quarantined "
                            f"{t['quarantined']} + duplicates {t['duplicates']} (= {total})")
        if sum(t["quarantined_by_reason"].values()) != t["quarantined"]:
            problems.append(f"{name}: quarantined_by_reason does not add up to quarantined")
        files_accepted = sum(f.get("accepted", 0) for f in result.summary.get("files", [])
                             if f["table"] == name and f["status"] == "ingested")
        if files_accepted != t["accepted"]:
            problems.append(f"{name}: the files' accepted rows add up to {files_accepted}, "
                            f"not {t['accepted']}")
        if per_table.get(name, 0) != t["quarantined"]:
            problems.append(f"{name}: quarantine.csv has {per_table.get(name, 0)} rows, "
                            f"summary says {t['quarantined']}")
    if problems:
        raise IngestAccountingError("ingest row accounting failed (a bug, please report it): "
                                    + "; ".join(problems))


def write_ingest_outputs(result: IngestResult, out_dir: Path) -> None:
    """Check the accounting, then write ``summary.json`` (sorted keys) and ``quarantine.csv``."""
    check_accounting(result)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Values were masked when quarantined; masking again is idempotent and costs nothing.
    quarantine = result.quarantine.select(QUARANTINE_COLUMNS).with_columns(
        mask_identifiers(pl.col("value")).alias("value"))
    csvsafe.write_csv(out_dir / QUARANTINE_FILE, quarantine)
    atomic.write_json(out_dir / SUMMARY_FILE, result.summary)
