"""Generative checks of the panel against a plain-Python reading of its definition."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from pipeline.features import build_panel

START = date(2026, 1, 1)
SUBJECTS = ("a", "b", "c")

day_keys = st.sets(st.tuples(st.sampled_from(SUBJECTS), st.integers(0, 80)), max_size=60)
episode_rows = st.lists(st.tuples(st.sampled_from(SUBJECTS), st.integers(-5, 85),
                                  st.integers(0, 24 * 60 - 1)), max_size=60)
injury_rows = st.lists(st.tuples(st.sampled_from(SUBJECTS), st.integers(-40, 85)), max_size=8)


@given(days=day_keys, episodes=episode_rows, injuries=injury_rows)
def test_panel_matches_its_definition(days, episodes, injuries):
    days = sorted(days)
    daily = pl.LazyFrame(
        {"subject_id": [s for s, _ in days],
         "date": [START + timedelta(days=d) for _, d in days],
         "stress": [float(d % 11) for _, d in days]},
        schema={"subject_id": pl.String, "date": pl.Date, "stress": pl.Float64},
    )
    ep = pl.LazyFrame(
        {"subject_id": [s for s, _, _ in episodes],
         "started_at": [datetime(2026, 1, 1) + timedelta(days=d, minutes=m)
                        for _, d, m in episodes]},
        schema={"subject_id": pl.String, "started_at": pl.Datetime("us")},
    )
    inj = pl.LazyFrame(
        {"subject_id": [s for s, _ in injuries],
         "date": [START + timedelta(days=d) for _, d in injuries],
         "muscle_group": ["calf"] * len(injuries)},
        schema={"subject_id": pl.String, "date": pl.Date, "muscle_group": pl.String},
    )
    panel = build_panel(daily, ep, inj)
    got = {(r["subject_id"], (r["date"] - START).days): (r["episodes"], r["recent_injury"])
           for r in panel.frame.iter_rows(named=True)}

    assert sorted(got) == days  # one row per daily row, nothing added or lost
    for s, d in days:
        n_episodes = sum(1 for es, ed, _ in episodes if (es, ed) == (s, d))
        injured = any(s == i_s and 1 <= d - i_d <= 30 for i_s, i_d in injuries)
        assert got[(s, d)] == (n_episodes, 1.0 if injured else 0.0), (s, d)
    on_logged = sum(n for n, _ in got.values())
    assert panel.summary["n_episodes"] == len(episodes)
    assert panel.summary["n_episodes_on_logged_days"] == on_logged
    assert panel.summary["episodes_outside_logged_days"] == len(episodes) - on_logged
