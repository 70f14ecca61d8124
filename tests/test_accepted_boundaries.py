"""No accepted value may crash a later stage (issue 8): every boundary of the contract goes through
the whole ``cramp run`` (ingest, red flags, panel, models; ``--no-report``).

The boundaries are derived from ``pipeline.schema``, never listed by hand: the minimum and maximum
of every numeric column (just above the minimum when it is exclusive), every enum level in odd
spellings, every boolean spelling, the first and last plausible date and date-time, the shortest
and longest token. A deterministic test puts each boundary in a row of its own; a property test
(a few derandomized examples in CI, many with ``HYPOTHESIS_PROFILE=thorough``) combines them.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline import schema
from pipeline.dataset_config import load_dataset_config
from pipeline.ingest import check_accounting, table_columns
from pipeline.run import run_job

SUBJECT = "S00001"
#: Rows added by the tests use days before the synthetic base dataset's follow-up.
FIRST_NEW_DAY = dt.date(2020, 1, 1)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def boundaries(column: schema.Column) -> list[str]:
    """Accepted values at the edges of ``column``'s contract, as text in a CSV cell."""
    kind = column.kind
    if kind == "token":
        n = column.max_chars or schema.TOKEN_MAX_CHARS
        return ["b", "B" * (n - 1) + "9", "b-_0", " b1 "]
    if kind in ("float", "int"):
        low, high = column.minimum, column.maximum
        out = []
        if low is not None:
            out.append(_number(low) if column.minimum_inclusive
                       else ("5e-324" if kind == "float" else _number(low + 1)))
        if high is not None:
            out.append(_number(high))
            if kind == "int":
                out.append(f"{_number(high)}.0")
        if kind == "float" and (low is None or low <= 0 < (high or 1)) and column.minimum_inclusive:
            out.append("-0.0")
        return out
    if kind == "bool":
        return [s for w in schema.TRUE_SPELLINGS + schema.FALSE_SPELLINGS
                for s in (w, w.upper(), f" {w.title()} ")]
    if kind == "enum":
        return [v for level in column.values
                for v in (level, level.upper(), f" {level.replace('_', ' ')} ")]
    if kind == "date":
        return [schema.MIN_DATE.isoformat(), schema.max_date().isoformat()]
    if kind == "datetime":
        first, last = schema.MIN_DATE.isoformat(), schema.max_date().isoformat()
        return [f"{first}T00:00", f"{last}T23:59:59.999999", f"{first} 00:00:00+14:00",
                f"{last}T23:59Z"]
    return ["", "x" * 1000]


def _copy_base(base: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(base, data)
    return data


def _template(table: str, i: int, subject: str = SUBJECT) -> dict[str, str]:
    """A valid row of ``table`` with a key of its own (``i`` picks the day)."""
    day = (FIRST_NEW_DAY + dt.timedelta(days=i)).isoformat()
    return {
        "subjects": {"subject_id": f"BND{i:05d}", "age_band": "40-49", "sex": "F"},
        "daily": {"subject_id": subject, "date": day},
        "injuries": {"subject_id": subject, "date": day, "muscle_group": "calf"},
        "episodes": {"subject_id": subject, "started_at": f"{day}T10:00",
                     "muscle_group": "calf"},
    }[table]


def _append_csv(path: Path, rows: list[dict[str, str]]) -> None:
    """Append rows as a second export of the table (``TABLE/boundaries.csv``), header first."""
    if not rows:
        return
    names = list(dict.fromkeys(k for row in rows for k in row))
    target = path.parent / path.name.removesuffix(".csv") / "boundaries.csv"
    target.parent.mkdir(exist_ok=True)
    lines = [",".join(names)]
    for row in rows:
        lines.append(",".join(_cell(row.get(n, "")) for n in names))
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _cell(value: str) -> str:
    return f'"{value}"' if any(c in value for c in ',"\n ') else value


def _run(data: Path, out: Path) -> dict:
    result = run_job(data, out, report=False)
    summary = result["summary"]
    quarantine = pl.read_csv(out / "quarantine.csv", infer_schema=False)
    assert quarantine.height == 0, quarantine.to_dicts()
    return summary


@pytest.fixture(scope="module")
def base_dataset(tmp_path_factory) -> Path:
    from pipeline import synth

    root = tmp_path_factory.mktemp("boundaries-base") / "data"
    synth.write_dataset(synth.generate(8, 40, 20261201), root, fmt="csv")
    return root


def _boundary_rows(base: Path) -> dict[str, list[dict[str, str]]]:
    """One row per (table, column, boundary value); token boundaries get a subject of their own."""
    config = load_dataset_config(base)
    rows: dict[str, list[dict[str, str]]] = {t: [] for t in schema.TABLES}
    i = 0
    for name in schema.TABLES:
        for column in table_columns(name, config):
            for value in boundaries(column):
                i += 1
                row = _template(name, i)
                if column.name == "subject_id" and name != "subjects":
                    rows["subjects"].append({**_template("subjects", i),
                                             "subject_id": value.strip()})
                row[column.name] = value
                rows[name].append(row)
    return rows


def test_every_boundary_value_runs_through_the_whole_job(base_dataset, tmp_path):
    data = _copy_base(base_dataset, tmp_path)
    rows = _boundary_rows(base_dataset)
    for name, table_rows in rows.items():
        _append_csv(data / f"{name}.csv", table_rows)
    summary = _run(data, tmp_path / "out")
    added = sum(len(r) for r in rows.values())
    assert added > 150  # every column's boundaries, not a handful
    assert summary["tables"]["daily"]["accepted"] >= len(rows["daily"])


# --- property test: boundaries combined in the same rows -------------------------------------

_CONFIG_COLUMNS = {name: tuple(c for c in schema.TABLES[name].columns) for name in schema.TABLES}


def _row_strategy(table: str) -> st.SearchStrategy[dict[str, str]]:
    columns = [c for c in _CONFIG_COLUMNS[table]
               if c.name not in ("subject_id",) and c.kind != "token"]
    return st.fixed_dictionaries({c.name: st.sampled_from(boundaries(c)) for c in columns})


def _key_text(value: str) -> str:
    """A key value as validation will compare it (trimmed, enum spelling, minute of a time)."""
    text = value.strip().lower().replace(" ", "_").replace("-", "_")
    return text[:10] + text[11:16] if len(text) > 10 else text


_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
_FEW = settings(max_examples=4 if _PROFILE == "ci" else 200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _extreme(table: str, pick: int) -> dict[str, str]:
    return {c.name: boundaries(c)[pick if pick == 0 else -1] for c in _CONFIG_COLUMNS[table]
            if c.name != "subject_id" and c.kind != "token"}


@_FEW
@given(daily=st.lists(_row_strategy("daily"), min_size=1, max_size=4),
       episodes=st.lists(_row_strategy("episodes"), min_size=1, max_size=4),
       injuries=st.lists(_row_strategy("injuries"), max_size=2))
@example(daily=[_extreme("daily", 0)], episodes=[_extreme("episodes", 0)],
         injuries=[_extreme("injuries", 0)])
@example(daily=[_extreme("daily", -1)], episodes=[_extreme("episodes", -1)],
         injuries=[_extreme("injuries", -1)])
def test_combined_boundaries_never_crash_a_later_stage(base_dataset, tmp_path_factory, daily,
                                                       episodes, injuries):
    tmp_path = tmp_path_factory.mktemp("combined")
    data = _copy_base(base_dataset, tmp_path)
    generated = {"daily": daily, "episodes": episodes, "injuries": injuries}
    rows: dict[str, list[dict[str, str]]] = {}
    seen: set[tuple] = set()
    for name, drawn in generated.items():
        rows[name] = []
        key_columns = schema.TABLES[name].fallback_key or schema.TABLES[name].key
        for i, values in enumerate(drawn):
            row = {**_template(name, i), **values}
            key = (name, *(_key_text(row.get(k, "")) for k in key_columns))
            if key in seen:
                continue  # a repeated key would be a legitimate conflict, not a boundary
            seen.add(key)
            rows[name].append(row)
    for name, table_rows in rows.items():
        _append_csv(data / f"{name}.csv", table_rows)
    summary = _run(data, tmp_path / "out")
    assert summary["tables"]["episodes"]["quarantined"] == 0
