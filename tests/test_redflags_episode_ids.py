"""Derived episode ids: the same on every run, readable, and never touching a supplied id."""

from __future__ import annotations

import doctest

import polars as pl

import pipeline.episode_ids
import pipeline.redflags
import pipeline.redflags.rules
from pipeline.episode_ids import with_episode_ids
from tests.test_redflags_tables import episodes, table


def test_missing_ids_are_derived_from_subject_start_and_muscle():
    given = episodes("""
        | episode_id | subject_id | started_at                 | muscle_group |
        |------------|------------|----------------------------|--------------|
        | own-1      | S1         | 2024-01-03 22:15:00        | calf         |
        |            | S1         | 2024-01-03 22:15:00        | lower_back   |
        |            | S-2_x      | 2024-12-31 23:59:59        | foot         |
        |            | S-2_x      | 2024-12-31 23:59:59.250000 | foot         |
        |            | S-2_x      | 2024-12-31 23:59:59.000001 | foot         |
    """)
    got = with_episode_ids(given).collect()
    assert got.select("episode_id").equals(table("""
        | episode_id                           |
        |--------------------------------------|
        | own-1                                |
        | S1_20240103T221500_lower_back        |
        | S-2_x_20241231T235959_foot           |
        | S-2_x_20241231T235959.250000_foot    |
        | S-2_x_20241231T235959.000001_foot    |
    """))
    # Nothing else changes.
    assert got.drop("episode_id").equals(given.collect().drop("episode_id"))


def test_derived_ids_do_not_depend_on_row_order_or_neighbours():
    given = episodes("""
        | episode_id | subject_id | started_at       | muscle_group |
        |------------|------------|------------------|--------------|
        |            | S1         | 2024-01-03 22:15 | calf         |
        |            | S2         | 2024-01-04 06:00 | foot         |
    """)
    once = with_episode_ids(given).collect()["episode_id"].to_list()
    reversed_ = with_episode_ids(given.reverse()).collect()["episode_id"].to_list()
    alone = with_episode_ids(given.head(1)).collect()["episode_id"].to_list()
    assert once == ["S1_20240103T221500_calf", "S2_20240104T060000_foot"]
    assert reversed_ == once[::-1]
    assert alone == once[:1]


def test_lazy_plan_is_kept_lazy():
    assert isinstance(with_episode_ids(episodes("| episode_id | subject_id | started_at |\n"
                                                "|---|---|---|")), pl.LazyFrame)


def test_docstring_examples_run():
    for module in (pipeline.episode_ids, pipeline.redflags, pipeline.redflags.rules):
        failed, _ = doctest.testmod(module)
        assert failed == 0, module.__name__
