"""Differential test: a plain-Python, row-by-row reading of each rule agrees with ``evaluate``.

The reference below is written from the rule definitions in the issue, one episode at a time, and
the frequent rule by trying every calendar day; it shares no code with the implementation except
the parameter values it reads from the loaded rules.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections import defaultdict

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import schema
from pipeline.redflags import RuleSet, evaluate, load_rules
from tests.test_redflags_tables import EPISODE_SCHEMA

DEFAULTS = load_rules()
SEVERITY_RANK = {"red_flag": 0, "advisory": 1}
YES_NO_RULES = {
    "swelling": "swelling",
    "skin_changes": "skin_changes",
    "sleep_loss": "sleep_loss",
    "emergency_visit": "er_visit",
}


def derived_id(row: dict) -> str:
    t = row["started_at"]
    stamp = t.strftime("%Y%m%dT%H%M%S") + (f".{t.microsecond:06d}" if t.microsecond else "")
    return f"{row['subject_id']}_{stamp}_{row['muscle_group']}"


def text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def reference_episode_rule(rule_id: str, row: dict, rules: RuleSet):
    """(fired, evidence, fields the rule reads) for one episode, straight from the issue."""
    if rule_id == "severe_pain":
        threshold = rules.rule(rule_id).parameter("pain_threshold")
        high = row["pain"] is not None and row["pain"] >= threshold
        uncontrolled = row["pain_uncontrolled"] is True
        parts = ([f"pain={row['pain']}"] if high else []) + (
            ["pain_uncontrolled=true"] if uncontrolled else []
        )
        return high or uncontrolled, "; ".join(parts), ("pain", "pain_uncontrolled")
    if rule_id == "numbness":
        fired = row["numbness"] in ("one_leg", "both_legs")
        return fired, f"numbness={row['numbness']}", ("numbness",)
    if rule_id == "prolonged":
        threshold = rules.rule(rule_id).parameter("duration_threshold_min")
        d = row["duration_min"]
        return d is not None and d > threshold, f"duration_min={d!r}", ("duration_min",)
    column = YES_NO_RULES[rule_id]
    return row[column] is True, f"{column}=true", (column,)


def reference_frequent(rows: list[dict], m: int, k: int) -> list[tuple[dict, str]]:
    """Try every calendar day as the start of k back-to-back 7-day windows."""
    out = []
    by_subject = defaultdict(list)
    for row in rows:
        by_subject[row["subject_id"]].append(row)
    for subject, eps in by_subject.items():
        eps.sort(key=lambda r: (r["started_at"].date(), r["started_at"], r["episode_id"]))
        days = [r["started_at"].date().toordinal() for r in eps]

        def count(lo: int, hi: int) -> int:
            return sum(lo <= d < hi for d in days)

        def weeks(d: int) -> list[int]:
            return [count(d + 7 * i, d + 7 * i + 7) for i in range(k)]

        qualifying = [d for d in range(min(days) - 7 * k, max(days) + 1)
                      if all(c >= m for c in weeks(d))]
        periods: list[list[int]] = []
        for d in qualifying:
            if periods and d <= periods[-1][1]:
                periods[-1][1] = max(periods[-1][1], d + 7 * k)
            else:
                periods.append([d, d + 7 * k])
        for start, end in periods:
            inside = [r for r, d in zip(eps, days) if start <= d < end]
            first_day = inside[0]["started_at"].date().toordinal()
            anchor = max(d for d in qualifying if start <= d <= first_day)
            iso = lambda o: dt.date.fromordinal(o).isoformat()  # noqa: E731
            evidence = (
                f"weeks={k}; episodes_per_week={','.join(map(str, weeks(anchor)))}; "
                f"weeks_from={iso(anchor)}..{iso(anchor + 7 * k - 1)}; "
                f"period={iso(first_day)}..{inside[-1]['started_at'].date().isoformat()}; "
                f"episodes_in_period={len(inside)}"
            )
            out.append((inside[0], evidence))
    return out


def reference(rows: list[dict], rules: RuleSet):
    rows = [dict(r, episode_id=r["episode_id"] or derived_id(r)) for r in rows]
    flags, missing = [], defaultdict(lambda: [0, defaultdict(int)])
    for order, rule in enumerate(rules):
        if rule.kind == "frequency":
            for row, evidence in reference_frequent(
                rows, rule.parameter("min_episodes_per_week"), rule.parameter("consecutive_weeks")
            ):
                flags.append((row, order, rule, evidence))
            continue
        for row in rows:
            fired, evidence, fields = reference_episode_rule(rule.id, row, rules)
            if fired:
                flags.append((row, order, rule, evidence))
            elif any(row[f] is None for f in fields):
                entry = missing[(order, rule.id, row["subject_id"])]
                entry[0] += 1
                for f in fields:
                    entry[1][f] += row[f] is None
    flags.sort(key=lambda x: (x[0]["subject_id"], x[0]["started_at"], x[0]["episode_id"], x[1]))
    flag_rows = [
        (r["episode_id"], r["subject_id"], r["started_at"], rule.id, rule.severity, ev)
        for r, _, rule, ev in flags
    ]
    n_episodes = defaultdict(int)
    for r in rows:
        n_episodes[r["subject_id"]] += 1
    missing_rows = [
        (rule_id, rules.rule(rule_id).severity, subject, n_episodes[subject], n,
         "; ".join(f"{f}={c}" for f, c in per_field.items() if c))
        for (_, rule_id, subject), (n, per_field) in sorted(missing.items())
    ]
    subjects = defaultdict(list)
    for r, _, rule, _ in flags:
        subjects[r["subject_id"]].append((r, rule))
    subject_rows = sorted(
        (
            (
                s,
                min((rule.severity for _, rule in fl), key=SEVERITY_RANK.get),
                len(fl),
                min(r["started_at"] for r, _ in fl).date(),
                max(r["started_at"] for r, _ in fl).date(),
                *[sum(rule.id == rid for _, rule in fl) for rid in rules.ids],
            )
            for s, fl in subjects.items()
        ),
        key=lambda x: (SEVERITY_RANK[x[1]], x[0]),
    )
    return flag_rows, missing_rows, subject_rows


def maybe(strategy):
    return st.none() | strategy


episode_rows = st.lists(
    st.fixed_dictionaries(
        {
            "subject_id": st.sampled_from(["A", "B", "c-1"]),
            "day": st.integers(0, 45),
            "minute": st.sampled_from([0, 1, 600, 1439]),
            "micro": st.sampled_from([0, 0, 250_000]),
            "muscle_group": st.sampled_from(schema.MUSCLE_GROUPS[:3]),
            "has_id": st.booleans(),
            "duration_min": maybe(st.integers(1, 600).map(lambda n: n / 10)),
            "pain": maybe(st.integers(0, 10)),
            "pain_uncontrolled": maybe(st.booleans()),
            "swelling": maybe(st.booleans()),
            "skin_changes": maybe(st.booleans()),
            "sleep_loss": maybe(st.booleans()),
            "er_visit": maybe(st.booleans()),
            "numbness": maybe(st.sampled_from(schema.NUMBNESS_LEVELS)),
        }
    ),
    max_size=70,
    # Ingest has made the fallback key unique.
    unique_by=lambda r: (r["subject_id"], r["day"], r["minute"], r["micro"], r["muscle_group"]),
)


def build(raw: list[dict]) -> tuple[list[dict], pl.LazyFrame]:
    rows = []
    for i, r in enumerate(raw):
        started = (dt.datetime(2024, 2, 20) + dt.timedelta(days=r["day"], minutes=r["minute"])
                   ).replace(microsecond=r["micro"])
        row = {c: r.get(c) for c in schema.EPISODES.column_names}
        row.update(episode_id=f"e{i:03d}" if r["has_id"] else None, started_at=started,
                   source_file="episodes.csv", source_line=i + 2)
        rows.append(row)
    return rows, pl.LazyFrame(rows, schema=EPISODE_SCHEMA)


def with_parameters(rules: RuleSet, **values) -> RuleSet:
    new = []
    for rule in rules:
        params = tuple(
            dataclasses.replace(p, value=values.get(p.name, p.value)) for p in rule.parameters
        )
        new.append(dataclasses.replace(rule, parameters=params))
    return dataclasses.replace(rules, rules=tuple(new))


# Example counts follow the Hypothesis profile (tests/conftest.py): 60 in CI, many more with
# HYPOTHESIS_PROFILE=thorough.
@settings(deadline=None)
@given(
    raw=episode_rows,
    pain_threshold=st.integers(0, 11),
    duration_threshold_min=st.sampled_from([0, 5, 15, 15.05, 30]),
    min_episodes_per_week=st.integers(1, 3),
    consecutive_weeks=st.integers(1, 4),
)
def test_evaluate_agrees_with_row_by_row_reference(raw, pain_threshold, duration_threshold_min,
                                                   min_episodes_per_week, consecutive_weeks):
    rules = with_parameters(
        DEFAULTS,
        pain_threshold=pain_threshold,
        duration_threshold_min=duration_threshold_min,
        min_episodes_per_week=min_episodes_per_week,
        consecutive_weeks=consecutive_weeks,
    )
    rows, lf = build(raw)
    result = evaluate(lf, rules)
    flags, missing, subjects = reference(rows, rules)
    assert result.flags.rows() == flags
    assert result.not_recorded.rows() == missing
    assert result.subject_flags.rows() == subjects


@settings(max_examples=max(10, settings.default.max_examples // 2), deadline=None)
@given(raw=episode_rows)
def test_shipped_rules_agree_with_reference(raw):
    rows, lf = build(raw)
    result = evaluate(lf, DEFAULTS)
    flags, missing, subjects = reference(rows, DEFAULTS)
    assert result.flags.rows() == flags
    assert result.not_recorded.rows() == missing
    assert result.subject_flags.rows() == subjects


def test_larger_diaries_agree_with_reference():
    # Hypothesis favours small diaries; these are busy ones (about 7 episodes a week per subject)
    # where the frequent rule has long, merged and separate periods.
    for seed in range(3):
        rng = random.Random(seed)
        raw = {}
        for _ in range(400):
            r = {
                "subject_id": rng.choice(["A", "B", "C"]),
                "day": rng.randrange(0, 120),
                "minute": rng.randrange(0, 1440),
                "micro": 0,
                "muscle_group": rng.choice(schema.MUSCLE_GROUPS),
                "has_id": rng.random() < 0.5,
                "duration_min": rng.choice([None, 15.0, 15.1, rng.randrange(1, 600) / 10]),
                "pain": rng.choice([None, 6, 7, rng.randrange(0, 11)]),
                "numbness": rng.choice([None, *schema.NUMBNESS_LEVELS]),
            }
            for c in ("pain_uncontrolled", "swelling", "skin_changes", "sleep_loss", "er_visit"):
                r[c] = rng.choice([None, False, False, True])
            raw[(r["subject_id"], r["day"], r["minute"], r["muscle_group"])] = r
        rows, lf = build(list(raw.values()))
        result = evaluate(lf, DEFAULTS)
        flags, missing, subjects = reference(rows, DEFAULTS)
        assert result.flags.rows() == flags
        assert result.not_recorded.rows() == missing
        assert result.subject_flags.rows() == subjects
        assert result.flags.filter(pl.col("rule_id") == "frequent").height >= 1
