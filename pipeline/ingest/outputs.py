"""Write ``summary.json`` and ``quarantine.csv`` for a validate or ingest run.

Both are written atomically (temp file, then rename). Before anything is written the row
accounting is asserted for every table: ``read == accepted + quarantined + duplicates``, and the
quarantine holds exactly ``quarantined`` rows per table. A mismatch is a bug in the pipeline, not
in the user's data, so it raises ``IngestAccountingError`` (not ``UserError``) loudly.

After an ingest, ``quarantine.csv`` describes the store: every quarantined row of every file it
holds, read back from the store (``IngestResult.store_quarantine``), and ``store_totals`` must
add up against it and against the stored rows. So a re-run after a kill, which skips the files
already committed, still writes their quarantine. For ``validate`` it is this run's quarantine.
"""

from __future__ import annotations

from pathlib import Path


from pipeline.ingest.dataset import IngestResult
from pipeline.ingest.identifiers import map_distinct, mask_identifiers
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
    if result.store_quarantine is not None:
        problems += _store_problems(result)
    if problems:
        raise IngestAccountingError("ingest row accounting failed (a bug, please report it): "
                                    + "; ".join(problems))


def _store_problems(result: IngestResult) -> list[str]:
    """The store's own accounting: every file's rows, admissions included, add up; the stored
    quarantine has the rows the totals say."""
    problems = []
    per_table = dict(result.store_quarantine.group_by("table").len().iter_rows())
    for name, t in result.summary.get("store_totals", {}).items():
        total = t["accepted"] + t["quarantined"] + t["duplicates"]
        if t["rows"] != total:
            problems.append(f"store {name}: rows {t['rows']} != accepted + quarantined + "
                            f"duplicates (= {total})")
        if name in result.store_rows and result.store_rows[name] != t["accepted"]:
            problems.append(f"store {name}: {result.store_rows[name]} rows stored, the "
                            f"manifest says {t['accepted']} accepted")
        if per_table.get(name, 0) != t["quarantined"]:
            problems.append(f"store {name}: the stored quarantine has {per_table.get(name, 0)} "
                            f"rows, the manifest says {t['quarantined']}")
    return problems


def write_ingest_outputs(result: IngestResult, out_dir: Path) -> None:
    """Check the accounting, then write ``summary.json`` (sorted keys) and ``quarantine.csv``."""
    check_accounting(result)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Values were masked when quarantined; masking again is idempotent, and done once per
    # distinct value it costs next to nothing.
    rows = result.store_quarantine if result.store_quarantine is not None else result.quarantine
    quarantine = rows.select(QUARANTINE_COLUMNS)
    quarantine = quarantine.with_columns(
        map_distinct(quarantine.get_column("value"), mask_identifiers))
    csvsafe.write_csv(out_dir / QUARANTINE_FILE, quarantine)
    atomic.write_json(out_dir / SUMMARY_FILE, result.summary)
