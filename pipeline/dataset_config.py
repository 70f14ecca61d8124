"""Read ``DATA/dataset.toml``: the dataset's declared custom factors (``schema.CustomFactor``).

The file is optional. When present it is validated strictly, in the spirit of frozen parameter
models that reject unknown keys: a typo must fail loudly rather than silently drop a factor.

The keys and an example are documented once, on ``schema.CustomFactor``.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from pipeline.analysis_config import AnalysisConfig, parse_analysis, parse_max_lag_days
from pipeline.errors import UserError
from pipeline.schema import (
    FACTORS,
    MAX_CUSTOM_FACTORS,
    MAX_DATASET_CONFIG_BYTES,
    PROVENANCE_SCHEMA,
    TABLES,
    CustomFactor,
)

DATASET_CONFIG_FILE = "dataset.toml"

_TOP_LEVEL_KEYS = frozenset({"custom_factors", "analysis"})
_FACTOR_KEYS = {f.name for f in fields(CustomFactor)}
_REQUIRED_FACTOR_KEYS = ("column", "factor", "label", "kind")
_KINDS = ("numeric", "boolean")
#: Custom column and factor names: lower-case snake case, so they are safe in every output.
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class DatasetConfig:
    """What ``dataset.toml`` declares (an empty config when the file is absent)."""

    custom_factors: tuple[CustomFactor, ...] = ()
    #: The file it came from, or None when the dataset has no ``dataset.toml``.
    path: Path | None = None
    #: The ``[analysis]`` table (strata, time adjustment, lags): ``pipeline.analysis_config``.
    analysis: AnalysisConfig = AnalysisConfig()

    @property
    def custom_columns(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.custom_factors)


def load_dataset_config(data_dir: Path) -> DatasetConfig:
    """Parse and validate ``data_dir/dataset.toml``; an absent file gives an empty config."""
    path = Path(data_dir) / DATASET_CONFIG_FILE
    if not path.is_file():
        return DatasetConfig()
    if not path.resolve().is_relative_to(Path(data_dir).resolve()):
        raise UserError("is a symbolic link that leads outside the dataset directory; copy the "
                        "file into the dataset directory instead", path=str(path))
    size = path.stat().st_size
    if size > MAX_DATASET_CONFIG_BYTES:
        raise UserError(f"is {size:,} bytes, more than the limit of "
                        f"{MAX_DATASET_CONFIG_BYTES >> 10:,} KiB (MAX_DATASET_CONFIG_BYTES); it "
                        "should only declare a few custom factors", path=str(path))
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"is not valid TOML: {error}", path=str(path)) from None
    except RecursionError:
        # tomllib recurses once per level of nested arrays or inline tables.
        raise UserError("is nested too deeply to be read (arrays or inline tables inside each "
                        "other hundreds of levels deep); a dataset.toml needs only "
                        "[[custom_factors]] tables", path=str(path)) from None
    return DatasetConfig(custom_factors=parse_custom_factors(raw, str(path)), path=path,
                         analysis=parse_analysis(raw, str(path)))


def parse_custom_factors(raw: dict, where: str) -> tuple[CustomFactor, ...]:
    """Validate the parsed TOML document and build its ``CustomFactor``s (``where`` names the file)."""
    unknown = sorted(set(raw) - _TOP_LEVEL_KEYS)
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(unknown)}; expected only [[custom_factors]] "
                        "and [analysis]", path=where)
    tables = raw.get("custom_factors", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise UserError("custom_factors must be an array of tables ([[custom_factors]])",
                        path=where)
    if len(tables) > MAX_CUSTOM_FACTORS:
        raise UserError(f"declares {len(tables):,} custom factors, more than the limit of "
                        f"{MAX_CUSTOM_FACTORS} (MAX_CUSTOM_FACTORS)", path=where)
    reserved = set(TABLES["daily"].column_names) | set(PROVENANCE_SCHEMA)
    for table in TABLES.values():
        reserved |= set(table.column_names)
    factors: list[CustomFactor] = []
    seen_columns: set[str] = set()
    seen_factors: set[str] = set()
    for number, table in enumerate(tables, start=1):
        factor = _parse_one(table, f"{where}: custom factor #{number}")
        entry = f"custom factor #{number} ({factor.column!r})"
        if factor.column in reserved:
            raise UserError(f"{entry}: column {factor.column!r} clashes with a contract column",
                            path=where)
        if factor.factor in FACTORS:
            raise UserError(f"{entry}: factor {factor.factor!r} is a documented core factor; "
                            "pick a new name", path=where)
        if factor.column in seen_columns:
            raise UserError(f"{entry}: column {factor.column!r} is declared twice", path=where)
        if factor.factor in seen_factors:
            raise UserError(f"{entry}: factor {factor.factor!r} is declared twice", path=where)
        seen_columns.add(factor.column)
        seen_factors.add(factor.factor)
        factors.append(factor)
    return tuple(factors)


def _parse_one(table: dict, where: str) -> CustomFactor:
    unknown = sorted(set(table) - _FACTOR_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed keys are "
                        f"{', '.join(sorted(_FACTOR_KEYS))}")
    missing = [k for k in _REQUIRED_FACTOR_KEYS if k not in table]
    if missing:
        raise UserError(f"{where}: missing required key(s) {', '.join(missing)}")
    for key in ("column", "factor", "label", "kind", "unit", "description"):
        if key in table and not isinstance(table[key], str):
            raise UserError(f"{where}: {key} must be a string")
    from pipeline.ingest.identifiers import find_identifier  # ingest imports this module

    for key in ("label", "unit", "description"):
        # These words are printed in effects.csv and the report: never an identifier.
        if key in table and find_identifier(table[key]):
            raise UserError(f"{where}: {key} looks like it holds {find_identifier(table[key])}; "
                            "a factor's words are printed in every output")
    for key in ("column", "factor"):
        if not _NAME_PATTERN.match(table[key]):
            raise UserError(f"{where}: {key} {table[key]!r} must be lower-case letters, digits "
                            "and _, starting with a letter (at most 64 characters)")
    if table["kind"] not in _KINDS:
        raise UserError(f"{where}: kind {table['kind']!r} must be one of {', '.join(_KINDS)}")
    numbers = {}
    for key in ("scale", "minimum", "maximum"):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise UserError(f"{where}: {key} must be a finite number")
            numbers[key] = float(value)
    if table["kind"] == "boolean" and set(numbers) & {"scale", "minimum", "maximum"}:
        raise UserError(f"{where}: a boolean factor takes no scale, minimum or maximum")
    if numbers.get("scale", 1.0) <= 0:
        raise UserError(f"{where}: scale must be positive")
    if "minimum" in numbers and "maximum" in numbers and numbers["minimum"] > numbers["maximum"]:
        raise UserError(f"{where}: minimum is greater than maximum")
    if "max_lag_days" in table:
        parse_max_lag_days(table["max_lag_days"], f"{where}: max_lag_days")
    return CustomFactor(**{**table, **numbers})
