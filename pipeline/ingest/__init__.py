"""Ingest: discover table files, read them as text with line numbers, refuse identifier columns,
validate every value against ``pipeline.schema``, quarantine with reasons, count exact duplicates,
quarantine key conflicts and unknown subjects, and append accepted rows to the store.

Public API::

    validate_dataset(data_dir, *, progress=False, keep_accepted=True) -> IngestResult  # stores nothing
    ingest_dataset(data_dir, store_dir, *, progress=False) -> IngestResult
    write_ingest_outputs(result, out_dir)                                # summary.json, quarantine.csv
"""

from pipeline.ingest.dataset import IngestResult, ingest_dataset, table_columns, validate_dataset
from pipeline.ingest.outputs import IngestAccountingError, check_accounting, write_ingest_outputs

__all__ = [
    "IngestAccountingError",
    "IngestResult",
    "check_accounting",
    "ingest_dataset",
    "table_columns",
    "validate_dataset",
    "write_ingest_outputs",
]
