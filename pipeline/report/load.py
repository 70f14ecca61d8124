"""Read a run directory (the outputs of ``cramp run``) into frames for the notebooks and report.

This is the only place the report reads files; everything after it is a pure function of
:class:`RunOutputs`. A missing output file is a :class:`~pipeline.errors.UserError` naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.errors import UserError

#: Column dtypes of the CSV outputs the report reads (contracts in docs/architecture.md and the
#: model and red-flag issues). Only columns the report relies on are typed here; others are read as
#: polars infers them.
EFFECTS_DTYPES = {
    "model": pl.String, "factor": pl.String, "feature": pl.String, "unit": pl.String,
    "irr": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "p_value": pl.Float64,
    "q_value": pl.Float64, "n_subjects": pl.Int64, "n_subject_days": pl.Int64,
    "n_episodes": pl.Int64, "note": pl.String,
}
RED_FLAG_DTYPES = {
    "episode_id": pl.String, "subject_id": pl.String, "started_at": pl.Datetime("us"),
    "rule_id": pl.String, "severity": pl.String, "evidence": pl.String,
}
SUBJECT_FLAG_DTYPES = {
    "subject_id": pl.String, "highest_severity": pl.String, "total_flags": pl.Int64,
    "first_flagged_date": pl.Date, "last_flagged_date": pl.Date,
}
NOT_RECORDED_DTYPES = {
    "rule_id": pl.String, "severity": pl.String, "subject_id": pl.String,
    "n_episodes": pl.Int64, "n_not_recorded": pl.Int64, "missing_fields": pl.String,
}
QUARANTINE_DTYPES = {
    "table": pl.String, "source_file": pl.String, "line": pl.Int64, "column": pl.String,
    "value": pl.String, "reason": pl.String, "message": pl.String,
}

REQUIRED_FILES = (
    "summary.json", "quarantine.csv", "effects.csv", "dose_response.csv", "diagnostics.json",
    "red_flags.csv", "subject_flags.csv", "red_flags_not_recorded.csv",
)


@dataclass(frozen=True)
class RunOutputs:
    """Everything one run wrote, as frames and dicts."""

    path: Path
    summary: dict
    quarantine: pl.DataFrame
    effects: pl.DataFrame
    dose_response: pl.DataFrame
    diagnostics: dict
    red_flags: pl.DataFrame
    subject_flags: pl.DataFrame
    not_recorded: pl.DataFrame
    #: The Parquet store the run read, when it can be found (for missingness and timelines).
    store_dir: Path | None

    @property
    def panel(self) -> dict:
        """The panel summary (``summary.json``'s ``panel`` key or ``panel_summary.json``)."""
        if "panel" in self.summary:
            return self.summary["panel"]
        path = self.path / "panel_summary.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _read_csv(path: Path, dtypes: dict | None = None) -> pl.DataFrame:
    header = path.read_text(encoding="utf-8").split("\n", 1)[0]
    names = [h.strip('"') for h in header.split(",")] if header else []
    overrides = {c: t for c, t in (dtypes or {}).items() if c in names}
    # Datetimes are parsed after reading: CSV writers differ on "T" versus " ".
    text_overrides = {c: (pl.String if t == pl.Datetime("us") else t) for c, t in overrides.items()}
    frame = pl.read_csv(path, schema_overrides=text_overrides, infer_schema_length=None)
    for c, t in overrides.items():
        if t == pl.Datetime("us") and frame.schema[c] == pl.String:
            frame = frame.with_columns(pl.col(c).str.replace(" ", "T").str.to_datetime(
                "%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us"))
    return frame


def find_store(run_dir: Path, summary: dict) -> Path | None:
    """The run's store: ``RUN/store``, else a ``store_dir`` recorded in the summary."""
    candidates = [run_dir / "store"]
    if summary.get("store_dir"):
        candidates.append(Path(summary["store_dir"]))
    return next((c for c in candidates if c.is_dir()), None)


def load_run(run_dir: Path | str, *, store_dir: Path | str | None = None) -> RunOutputs:
    """Read every output of a run directory. ``store_dir`` overrides where the store is found
    (a relative one is resolved against the working directory now, never later in a kernel)."""
    run_dir = Path(run_dir).resolve()
    if store_dir is not None:
        store_dir = Path(store_dir).resolve()
        if not store_dir.is_dir():
            raise UserError("the run's store directory was not found", path=str(store_dir))
    if not run_dir.is_dir():
        raise UserError("run directory not found (make one with `cramp run`)", path=str(run_dir))
    from pipeline.run_dir import check_finished

    check_finished(run_dir)
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise UserError("not a complete run directory; missing " + ", ".join(missing),
                        path=str(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    diagnostics = json.loads((run_dir / "diagnostics.json").read_text(encoding="utf-8"))
    return RunOutputs(
        path=run_dir,
        summary=summary,
        quarantine=_read_csv(run_dir / "quarantine.csv", QUARANTINE_DTYPES),
        effects=_read_csv(run_dir / "effects.csv", EFFECTS_DTYPES),
        dose_response=_read_csv(run_dir / "dose_response.csv"),
        diagnostics=diagnostics,
        red_flags=_read_csv(run_dir / "red_flags.csv", RED_FLAG_DTYPES),
        subject_flags=_read_csv(run_dir / "subject_flags.csv", SUBJECT_FLAG_DTYPES),
        not_recorded=_read_csv(run_dir / "red_flags_not_recorded.csv", NOT_RECORDED_DTYPES),
        store_dir=Path(store_dir) if store_dir is not None else find_store(run_dir, summary),
    )


def read_store_table(store_dir: Path, table: str) -> pl.LazyFrame:
    """One stored table, through the store's own reader."""
    from pipeline.store import Store

    return Store(store_dir).read(table)


def store_tables(run: RunOutputs) -> dict[str, pl.LazyFrame]:
    """Every table the run's store holds (an optional table never ingested is absent).

    A report must never show an empty table because it looked in the wrong place: a store that
    cannot be found, cannot be read, holds no accepted rows or lists a part file that is gone is a
    ``UserError`` naming it, not an empty data-quality section.
    """
    from pipeline import schema
    from pipeline.store import Store

    if run.store_dir is None:
        raise UserError("the run's store was not found (looked for RUN/store and the summary's "
                        "store_dir); the data-quality tables read it", path=str(run.path))
    store = Store(run.store_dir)
    manifest = store.manifest  # an unreadable manifest is already a UserError
    if not manifest.files:
        raise UserError("the run's store is empty (no ingested files in its manifest)",
                        path=str(run.store_dir))
    tables = {}
    for name in schema.TABLES:
        parts = manifest.parts.get(name, ())
        gone = [p for p in parts if not (store._table_dir(name) / p).is_file()]
        if gone:
            raise UserError(f"the store's {name} table lists part file(s) that are missing: "
                            + ", ".join(gone[:3]), path=str(run.store_dir))
        if parts or any(f.table == name for f in manifest.files):
            tables[name] = store.read(name)
    return tables
