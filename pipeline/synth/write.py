"""``write_dataset()``: the tables as CSV, JSON Lines or Parquet, and the truth file beside them.

Output is byte-for-byte reproducible: rows are sorted by their key, CSV numbers are written with a
fixed number of decimals per column (the diary's resolution), and the truth JSON has a fixed key
order. The truth goes to ``<out_dir>.truth.json`` in the parent directory, never inside the dataset,
so an analysis pointed at the dataset cannot see it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl

from pipeline import schema
from pipeline.errors import UserError
from pipeline.synth.exposures import STEP
from pipeline.synth.simulate import SynthDataset

FORMATS = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}
#: Table files of other formats that would shadow or duplicate ours; removed before writing.
_TABLE_SUFFIXES = (".csv", ".csv.gz", ".jsonl", ".ndjson", ".parquet")
#: Decimals written per float column (from the resolution each value was drawn at).
DECIMALS = {c: (0 if step >= 1 else (1 if round(step * 10) == step * 10 else 2))
            for c, step in STEP.items()} | {"duration_min": 1}
DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
#: Rows converted to text at a time when writing CSV (bounds memory; the bytes do not depend on it).
CSV_CHUNK_ROWS = 1_000_000


def truth_path(out_dir: Path) -> Path:
    """Where the planted truth of the dataset in ``out_dir`` goes: ``<out_dir>.truth.json``."""
    resolved = Path(out_dir).resolve()  # so that "." or "data/x/.." still land outside the dataset
    if not resolved.name:
        raise UserError("synth: the output directory cannot be the file-system root",
                        path=str(out_dir))
    return resolved.parent / f"{resolved.name}.truth.json"


def _fixed(column: str, decimals: int) -> pl.Expr:
    """Fixed-point text of a float column, e.g. 2.3 -> "2.3", -0.5 -> "-0.5", 7.25 -> "7.25".

    Values are already on their column's grid (``exposures.STEP``), so the decimal cast is exact.
    """
    if decimals == 0:
        return pl.col(column).round(0).cast(pl.Int64).cast(pl.String).alias(column)
    return pl.col(column).cast(pl.Decimal(18, decimals)).cast(pl.String).alias(column)


def _as_text(df: pl.DataFrame) -> pl.DataFrame:
    exprs = []
    for name, dtype in df.schema.items():
        if dtype == pl.Float64:
            exprs.append(_fixed(name, DECIMALS[name]))
        elif dtype == pl.Datetime("us"):
            exprs.append(pl.col(name).dt.strftime(DATETIME_FORMAT))
        else:
            exprs.append(pl.col(name))
    return df.select(exprs)


def _write_csv(df: pl.DataFrame, path: Path) -> None:
    with open(path, "wb") as f:
        for offset in range(0, max(df.height, 1), CSV_CHUNK_ROWS):
            _as_text(df.slice(offset, CSV_CHUNK_ROWS)).write_csv(
                f, include_header=offset == 0, line_terminator="\n")


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def dataset_toml(custom_factors: tuple[schema.CustomFactor, ...]) -> str:
    """``dataset.toml`` declaring the custom factors (keys of ``schema.CustomFactor``)."""
    lines = ["# Custom daily factors of this synthetic dataset (see pipeline.schema.CustomFactor).",
             ""]
    for cf in custom_factors:
        lines.append("[[custom_factors]]")
        for key, value in vars(cf).items():
            if value is not None and value != "":
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def write_dataset(ds: SynthDataset, out_dir: Path, *, fmt: str = "csv") -> None:
    """Write the tables of ``ds`` into ``out_dir`` and the truth to ``<out_dir>.truth.json``.

    Any existing table files of the four tables (in any format) and ``dataset.toml`` in ``out_dir``
    are replaced, so the directory holds exactly this dataset.
    """
    if fmt not in FORMATS:
        raise UserError(f"synth: format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    out_dir = Path(out_dir)
    truth_file = truth_path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError("synth: the output path exists and is not a directory", path=str(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in schema.TABLES:
        for suffix in _TABLE_SUFFIXES:
            (out_dir / f"{name}{suffix}").unlink(missing_ok=True)
    toml = out_dir / "dataset.toml"
    toml.unlink(missing_ok=True)

    for name, df in ds.tables().items():
        path = out_dir / f"{name}{FORMATS[fmt]}"
        if fmt == "csv":
            _atomic_write(path, lambda p, t=df: _write_csv(t, p))
        elif fmt == "jsonl":
            frame = df.with_columns(pl.col(pl.Datetime).dt.strftime(DATETIME_FORMAT),
                                    pl.col(pl.Date).dt.strftime("%Y-%m-%d"))
            _atomic_write(path, lambda p, t=frame: t.write_ndjson(p))
        else:
            _atomic_write(path, lambda p, t=df: t.write_parquet(p, statistics=True))
    if ds.custom_factors:
        text = dataset_toml(ds.custom_factors)
        _atomic_write(toml, lambda p, t=text: p.write_text(t, encoding="utf-8"))

    doc = {**ds.truth, "written": {"format": fmt, "dataset_dir": out_dir.resolve().name}}
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    _atomic_write(truth_file, lambda p: p.write_text(text, encoding="utf-8"))
