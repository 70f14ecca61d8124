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
from pipeline.ingest.identifiers import mask_path
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
    #: Path relative to the dataset directory, with forward slashes and identifiers masked
    #: (``daily/j***@***.com.csv``): the name every output and message uses (provenance).
    relative_path: str
    format: str


def split_format(name: str) -> tuple[str, str] | None:
    """``'daily.csv.gz'`` -> ``('daily', 'csv.gz')``; None when the suffix is not a table format."""
    lower = name.lower()
    for suffix, fmt in FORMATS.items():
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], fmt
    return None


#: Exports cramp does not read, with what to do instead (the hint printed for them).
_EXPORT_HINTS: dict[str, str] = {
    ".xlsx": "export it as CSV",
    ".xls": "export it as CSV",
    ".ods": "export it as CSV",
    ".numbers": "export it as CSV",
    ".tsv": "export it as CSV (comma-separated)",
    ".txt": "if it is a table, save it as .csv",
    ".json": "save it as JSON Lines (.jsonl, one object per line) or CSV",
    ".xml": "export it as CSV",
}
#: Files at the top of a dataset directory that are read, or expected, without being tables.
_NOT_IGNORED = frozenset({"dataset.toml"})


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def ignored_files(data_dir: Path) -> list[str]:
    """Every entry of ``data_dir`` (and of its table directories) that is not read, masked.

    Reported in the summary so that a misnamed export (``episode.csv``), a spreadsheet
    (``daily.xlsx``), a nested directory (``daily/2024/``) or a stray file is noticed, not lost.
    Directories end in ``/``. Hidden files and ``dataset.toml`` are not listed.
    """
    data_dir = Path(data_dir)
    out = []
    for entry in sorted(data_dir.iterdir(), key=lambda p: p.name):
        if _is_hidden(entry) or entry.name in _NOT_IGNORED:
            continue
        if entry.is_dir() and entry.name in TABLES:
            for child in sorted(entry.iterdir(), key=lambda p: p.name):
                if _is_hidden(child):
                    continue
                if child.is_dir():
                    out.append(f"{entry.name}/{child.name}/")
                elif split_format(child.name) is None:
                    out.append(f"{entry.name}/{child.name}")
            continue
        if entry.is_dir():
            out.append(f"{entry.name}/")
            continue
        split = split_format(entry.name)
        if split is None or split[0] not in TABLES:
            out.append(entry.name)
    return [mask_path(name) for name in out]


def ignored_file_hint(name: str) -> str | None:
    """What to do about one ignored file (``'daily.xlsx found: export it as CSV'``), if anything."""
    if name.endswith("/"):
        return (f"{name} is a directory inside a table directory: its files are not read; move "
                "them up one level" if name.count("/") > 1 else None)
    last = name.rsplit("/", 1)[-1]
    lower = last.lower()
    for suffix, hint in _EXPORT_HINTS.items():
        if lower.endswith(suffix):
            return f"{name} found: {hint}"
    split = split_format(last)
    if split is not None and "/" not in name:
        return (f"{name} found: not a contract table name (expected "
                f"{', '.join(TABLES)}); rename it if it holds one of them")
    return None


def discover_tables(data_dir: Path) -> dict[str, list[TableFile]]:
    """Map each contract table present in ``data_dir`` to its files.

    Raises ``UserError`` when the directory is missing or a required table has no file, or when
    a table file or directory is a symbolic link that leads outside the dataset directory (a
    dataset must not read, or echo in messages, files the user did not put in it).
    Files whose name is not a contract table are ignored (``dataset.toml``, READMEs, truth files).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError("dataset directory not found (expected a directory of table files)",
                        path=str(data_dir))
    root = data_dir.resolve()
    found: dict[str, list[TableFile]] = {name: [] for name in TABLES}
    for entry in sorted(data_dir.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and entry.name in TABLES:
            check_inside(entry, root, data_dir)
            for child in sorted(entry.iterdir(), key=lambda p: p.name):
                split = split_format(child.name)
                if child.is_file() and split is not None and not child.name.startswith("."):
                    check_inside(child, root, data_dir)
                    found[entry.name].append(_table_file(entry.name, child, split[1], data_dir))
        elif entry.is_file():
            split = split_format(entry.name)
            if split is not None and split[0] in TABLES:
                check_inside(entry, root, data_dir)
                found[split[0]].append(_table_file(split[0], entry, split[1], data_dir))
    # Top-level file before the directory's exports, then by relative path.
    for files in found.values():
        files.sort(key=lambda f: ("/" in f.relative_path, f.relative_path))
    _make_unique(found)
    missing = [name for name, table in TABLES.items() if table.required and not found[name]]
    if missing:
        expected = ", ".join(f"{m}.csv (or .csv.gz, .jsonl, .ndjson, .parquet, {m}/)"
                             for m in missing)
        raise UserError(f"required table(s) missing: {expected}", path=str(data_dir))
    return {name: files for name, files in found.items() if files}


def check_inside(path: Path, root: Path, data_dir: Path) -> None:
    """Refuse ``path`` when it resolves outside ``root`` (a symlink out of the dataset).

    The message names the link as the user wrote it, never where it leads or what it holds.
    """
    try:
        inside = path.resolve().is_relative_to(root)
    except OSError:  # a symlink loop
        inside = False
    if not inside:
        name = path.relative_to(data_dir).as_posix()
        raise UserError("is a symbolic link that leads outside the dataset directory; cramp reads "
                        "only files inside it. Copy the file into the dataset directory instead",
                        path=mask_path(name))


def _make_unique(found: dict[str, list[TableFile]]) -> None:
    """Two files whose masked names collide (``jane@x.com.csv``, ``john@x.com.csv``) get ``~2``…

    Every count in the summary is keyed by this name, so it must stay one name per file.
    """
    seen: dict[str, int] = {}
    for files in found.values():
        for i, f in enumerate(files):
            n = seen.get(f.relative_path, 0) + 1
            seen[f.relative_path] = n
            if n > 1:
                stem, _, rest = f.relative_path.rpartition("/")
                split = split_format(rest)
                base, suffix = (split[0], rest[len(split[0]):]) if split else (rest, "")
                name = f"{stem + '/' if stem else ''}{base}~{n}{suffix}"
                files[i] = TableFile(table=f.table, path=f.path, relative_path=name,
                                     format=f.format)


def _table_file(table: str, path: Path, fmt: str, data_dir: Path) -> TableFile:
    """The relative name is masked here, once, so every writer (summary, manifest, the store's
    ``source_file``, quarantine, error messages) gets the masked name."""
    return TableFile(table=table, path=path,
                     relative_path=mask_path(path.relative_to(data_dir).as_posix()), format=fmt)
