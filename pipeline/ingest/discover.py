"""Find the files of each contract table in a dataset directory.

A table is ``NAME.csv``, ``NAME.csv.gz``, ``NAME.jsonl``, ``NAME.ndjson`` or ``NAME.parquet``, or
a directory ``NAME/`` holding any number of such files (one per export; their stems are free).
Files are returned in a stable order (top-level file first, then the directory's files by name)
so that line numbers, duplicate resolution and outputs are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.schema import TABLES

#: File-name suffix -> format name. Longest suffix first so ``.csv.gz`` wins over ``.gz``.
FORMATS: dict[str, str] = {
    ".csv.gz": "csv.gz",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}


@dataclass(frozen=True)
class TableFile:
    """One input file of a table."""

    table: str
    path: Path
    #: Path relative to the dataset directory, with forward slashes (provenance and outputs).
    relative_path: str
    format: str


def split_format(name: str) -> tuple[str, str] | None:
    """``'daily.csv.gz'`` -> ``('daily', 'csv.gz')``; None when the suffix is not a table format."""
    lower = name.lower()
    for suffix, fmt in FORMATS.items():
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], fmt
    return None


def ignored_files(data_dir: Path) -> list[str]:
    """Files in ``data_dir`` with a table format's suffix but no contract table's name.

    Reported in the summary so that a misnamed export (``episode.csv``) is noticed, not lost.
    """
    out = []
    for entry in sorted(Path(data_dir).iterdir(), key=lambda p: p.name):
        split = split_format(entry.name)
        if entry.is_file() and split is not None and split[0] not in TABLES \
                and not entry.name.startswith("."):
            out.append(entry.name)
    return out


def discover_tables(data_dir: Path) -> dict[str, list[TableFile]]:
    """Map each contract table present in ``data_dir`` to its files.

    Raises ``UserError`` when the directory is missing or a required table has no file.
    Files whose name is not a contract table are ignored (``dataset.toml``, READMEs, truth files).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError("dataset directory not found (expected a directory of table files)",
                        path=str(data_dir))
    found: dict[str, list[TableFile]] = {name: [] for name in TABLES}
    for entry in sorted(data_dir.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and entry.name in TABLES:
            for child in sorted(entry.iterdir(), key=lambda p: p.name):
                split = split_format(child.name)
                if child.is_file() and split is not None and not child.name.startswith("."):
                    found[entry.name].append(_table_file(entry.name, child, split[1], data_dir))
        elif entry.is_file():
            split = split_format(entry.name)
            if split is not None and split[0] in TABLES:
                found[split[0]].append(_table_file(split[0], entry, split[1], data_dir))
    # Top-level file before the directory's exports, then by relative path.
    for files in found.values():
        files.sort(key=lambda f: ("/" in f.relative_path, f.relative_path))
    missing = [name for name, table in TABLES.items() if table.required and not found[name]]
    if missing:
        expected = ", ".join(f"{m}.csv (or .csv.gz, .jsonl, .ndjson, .parquet, {m}/)"
                             for m in missing)
        raise UserError(f"required table(s) missing: {expected}", path=str(data_dir))
    return {name: files for name, files in found.items() if files}


def _table_file(table: str, path: Path, fmt: str, data_dir: Path) -> TableFile:
    return TableFile(table=table, path=path, relative_path=path.relative_to(data_dir).as_posix(),
                     format=fmt)
