"""A small, fixed run directory written to the output contracts, for tests and for trying the
report without data. Every number in it is made up; nothing here is a finding.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from pipeline import atomic, csvsafe

DEMO_RULES = ("severe_pain", "numbness", "swelling", "skin_changes", "sleep_loss", "prolonged",
              "emergency_visit", "frequent")
_SEVERITY = {r: ("advisory" if r in {"prolonged", "emergency_visit", "frequent"} else "red_flag")
             for r in DEMO_RULES}


def demo_effects() -> pl.DataFrame:
    rows = [
        # feature, factor, unit, irr, lo, hi, p
        ("exercise_min", "fatigue_overuse", "per 30 min", 1.06, 1.02, 1.10, 0.004),
        ("fluid_l", "dehydration", "per 1 L", 0.85, 0.79, 0.92, 0.0001),
        ("electrolytes", "low_electrolytes", "yes vs no", 0.97, 0.88, 1.07, 0.55),
        ("sitting_h", "sitting_posture", "per 1 h", 1.04, 1.03, 1.05, 0.00001),
        ("stress", "stress_sleep", "per 1 point", 1.08, 1.05, 1.11, 0.00002),
        ("alcohol_units", "diet", "per 1 unit", None, None, None, None),
    ]
    out = []
    for model, shift in (("population", 1.03), ("within_subject", 1.0)):
        for feature, factor, unit, irr, lo, hi, p in rows:
            note = "no within-subject variation" if irr is None else ""
            out.append({
                "model": model, "factor": factor, "feature": feature, "unit": unit,
                "irr": None if irr is None else round(irr * shift, 4),
                "ci_low": None if lo is None else round(lo * shift, 4),
                "ci_high": None if hi is None else round(hi * shift, 4),
                "p_value": p, "q_value": None if p is None else min(1.0, p * 3),
                "n_subjects": 40, "n_subject_days": 3600, "n_episodes": 612, "note": note or None,
            })
    return pl.DataFrame(out, schema_overrides={"irr": pl.Float64, "ci_low": pl.Float64,
                                               "ci_high": pl.Float64, "p_value": pl.Float64,
                                               "q_value": pl.Float64, "note": pl.String}
                        ).sort("model", "factor", "feature")


def demo_dose_response() -> pl.DataFrame:
    import numpy as np

    parts = []
    for feature, lo, hi, ref, slope in (("exercise_min", 0, 180, 30, 0.002),
                                        ("fluid_l", 0.5, 4.0, 2.0, -0.16),
                                        ("sitting_h", 0, 14, 6, 0.04)):
        x = np.linspace(lo, hi, 25)
        log_irr = slope * (x - ref)
        half = 0.02 + 0.01 * np.abs(x - ref) / (hi - lo) * 10
        parts.append(pl.DataFrame({
            "model": "within_subject", "feature": feature,
            "unit": {"exercise_min": "min", "fluid_l": "L", "sitting_h": "h"}[feature],
            "x": x.round(4), "reference_x": float(ref),
            "irr": np.exp(log_irr).round(5), "ci_low": np.exp(log_irr - half).round(5),
            "ci_high": np.exp(log_irr + half).round(5),
        }))
    return pl.concat(parts)


def demo_diagnostics() -> dict:
    calib = [{"decile": d, "n_subject_days": 360,
              "predicted_episodes": round(360 * (0.05 + 0.02 * d), 3),
              "observed_episodes": round(360 * (0.05 + 0.02 * d + (0.003 if d % 2 else -0.003)))}
             for d in range(1, 11)]
    sufficiency = {f: {"status": "estimated", "reason": None}
                   for f in ("exercise_min", "fluid_l", "electrolytes", "sitting_h", "stress")}
    sufficiency["alcohol_units"] = {"status": "not_estimated",
                                    "reason": "no within-subject variation"}
    model = {"fitted": True, "converged": True, "n_subjects": 40, "n_subject_days": 3600,
             "n_episodes": 612, "calibration": calib, "sufficiency": sufficiency}
    return {"models": {"population": {**model, "kind": "poisson", "pearson_dispersion": 1.08},
                       "within_subject": {**model, "kind": "conditional_poisson",
                                          "pearson_dispersion": 1.02}}}


def demo_red_flags() -> pl.DataFrame:
    start = dt.datetime(2026, 1, 5, 7, 30)
    rows = []
    for i in range(60):
        rule = DEMO_RULES[i % 7]
        rows.append({
            "episode_id": f"E{i:04d}", "subject_id": f"S{(i * 7) % 23:03d}",
            "started_at": start + dt.timedelta(days=(i * 37) % 88, hours=i % 5),
            "rule_id": rule, "severity": _SEVERITY[rule],
            "evidence": {"severe_pain": "pain=8", "prolonged": "duration_min=22"}.get(rule,
                                                                                      f"{rule}=true"),
        })
    return pl.DataFrame(rows).sort("subject_id", "started_at", "rule_id")


def write_demo_run(run_dir: Path) -> Path:
    """Write the demo run directory (no store) and return its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "tables": {
            "subjects": {"read": 41, "accepted": 40, "quarantined": 1, "duplicates": 0,
                         "quarantined_by_reason": {"invalid_value": 1}, "unknown_columns": []},
            "daily": {"read": 3640, "accepted": 3600, "quarantined": 30, "duplicates": 10,
                      "quarantined_by_reason": {"out_of_range": 22, "type": 8},
                      "unknown_columns": ["mood"]},
            "episodes": {"read": 640, "accepted": 630, "quarantined": 10, "duplicates": 0,
                         "quarantined_by_reason": {"identifier": 2, "unknown_subject": 8},
                         "unknown_columns": []},
        },
        "panel": {"n_subjects": 40, "n_subject_days": 3600, "n_episodes": 630,
                  "n_episodes_on_logged_days": 612, "episodes_outside_logged_days": 18,
                  "first_date": "2026-01-05", "last_date": "2026-04-04"},
    }
    atomic.write_json(run_dir / "summary.json", summary)
    csvsafe.write_csv(run_dir / "quarantine.csv", pl.DataFrame({
        "table": ["daily", "episodes"], "source_file": ["daily.csv", "episodes.csv"],
        "line": [12, 40], "column": ["fluid_l", "subject_id"], "value": ["25", "S999"],
        "reason": ["out_of_range", "unknown_subject"],
        "message": ["fluid_l must be 0 ≤ x ≤ 20", "subject S999 is not in subjects"]}))
    csvsafe.write_csv(run_dir / "effects.csv", demo_effects())
    csvsafe.write_csv(run_dir / "dose_response.csv", demo_dose_response())
    atomic.write_json(run_dir / "diagnostics.json", demo_diagnostics())
    flags = demo_red_flags()
    csvsafe.write_csv(run_dir / "red_flags.csv", flags)
    per_subject = (flags.group_by("subject_id", "rule_id").agg(pl.len().alias("n"))
                   .with_columns(("n_" + pl.col("rule_id")).alias("rule_id"))
                   .pivot(on="rule_id", index="subject_id", values="n", sort_columns=True)
                   .fill_null(0))
    summary_cols = flags.group_by("subject_id").agg(
        pl.when((pl.col("severity") == "red_flag").any()).then(pl.lit("red_flag"))
        .otherwise(pl.lit("advisory")).alias("highest_severity"),
        pl.len().cast(pl.Int64).alias("total_flags"),
        pl.col("started_at").min().dt.date().alias("first_flagged_date"),
        pl.col("started_at").max().dt.date().alias("last_flagged_date"))
    csvsafe.write_csv(run_dir / "subject_flags.csv",
                     summary_cols.join(per_subject, on="subject_id").sort("subject_id"))
    csvsafe.write_csv(run_dir / "red_flags_not_recorded.csv", pl.DataFrame({
        "rule_id": ["severe_pain", "severe_pain", "numbness", "swelling"],
        "severity": ["red_flag"] * 4,
        "subject_id": ["S001", "S002", "S001", "S003"],
        "n_episodes": [12, 9, 12, 20],
        "n_not_recorded": [3, 1, 12, 2],
        "missing_fields": ["pain=3", "pain=1", "numbness=12", "swelling=2"],
    }))
    return run_dir
