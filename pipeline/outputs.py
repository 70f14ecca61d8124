"""Run outputs declared once: each CSV a run writes, its columns, dtypes and meaning.

A stage that writes a table declares it here-style, in its own module, with :func:`declare`, and
builds the frame it writes with :meth:`OutputTable.conform` (exact columns, order and dtypes; a
missing column is an error, never a silent gap). ``docs/outputs.md`` is generated from the
declarations (``cramp docs``), so the documentation cannot drift from what is written.

``identifying=True`` marks a table that holds pseudonymous subject or episode ids: it belongs to
the care-team outputs and never to the shareable directory.

Modules holding declarations are listed in :data:`OUTPUT_MODULES` (one line per module), so the
document generator can import them all.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import polars as pl

#: Modules that declare output tables; imported by :func:`all_outputs`.
OUTPUT_MODULES: tuple[str, ...] = (
    "pipeline.models.effects",
    "pipeline.describe.cohort",
    "pipeline.models.subgroups",
    "pipeline.models.lags",
    "pipeline.models.subject_effects",
)


@dataclass(frozen=True)
class OutputColumn:
    name: str
    dtype: pl.DataType
    meaning: str


@dataclass(frozen=True)
class OutputTable:
    """One output file: ``file`` (relative to the run directory), its columns and meaning."""

    file: str
    meaning: str
    columns: tuple[OutputColumn, ...]
    identifying: bool = False
    #: One sentence on how the table can mislead, shown in the generated document.
    caution: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def schema(self) -> dict[str, pl.DataType]:
        return {c.name: c.dtype for c in self.columns}

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.schema())

    def conform(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with exactly the declared columns, in order, cast to the declared dtypes."""
        missing = [c for c in self.names if c not in frame.columns]
        if missing:
            raise ValueError(f"{self.file}: columns missing from the frame: {', '.join(missing)}")
        return frame.select(pl.col(c.name).cast(c.dtype) for c in self.columns)


_REGISTRY: dict[str, OutputTable] = {}


def declare(table: OutputTable) -> OutputTable:
    """Register ``table`` (once per file name) and return it."""
    known = _REGISTRY.get(table.file)
    if known is not None and known != table:
        raise ValueError(f"output {table.file} declared twice with different columns")
    _REGISTRY[table.file] = table
    return table


def all_outputs() -> dict[str, OutputTable]:
    """Every declared output table, by file name (imports :data:`OUTPUT_MODULES`)."""
    for module in OUTPUT_MODULES:
        importlib.import_module(module)
    return dict(sorted(_REGISTRY.items()))


def _dtype_name(dtype: pl.DataType) -> str:
    return {pl.String: "text", pl.Float64: "number", pl.Int64: "integer",
            pl.Boolean: "true/false", pl.Date: "date"}.get(type(dtype), str(dtype))


def render_outputs_doc() -> str:
    """``docs/outputs.md``: every declared output table and column."""
    lines = ["# Run outputs", "",
             "Generated from the declarations in the package (`pipeline/outputs.py`); do not edit:",
             "run `cramp docs`.", ""]
    for table in all_outputs().values():
        lines += [f"## `{table.file}`", "", table.meaning, ""]
        if table.identifying:
            lines += ["Holds pseudonymous ids: a care-team output, never in the shareable "
                      "directory.", ""]
        if table.caution:
            lines += [f"*Caution:* {table.caution}", ""]
        lines += ["| column | type | meaning |", "| --- | --- | --- |"]
        lines += [f"| `{c.name}` | {_dtype_name(c.dtype)} | {c.meaning} |" for c in table.columns]
        lines.append("")
    return "\n".join(lines)
