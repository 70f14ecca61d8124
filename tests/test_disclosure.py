"""Small-number suppression: counts 1–7 suppressed, the rest rounded to the nearest 5."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import disclosure
from pipeline.disclosure import DisclosurePolicy, disclose_count, disclose_counts, violations


def table(text: str) -> pl.DataFrame:
    """A small ASCII table: a header row and integer rows; an empty cell is null."""
    lines = [ln.strip() for ln in text.strip().splitlines() if "-" not in ln]
    rows = [[cell.strip() for cell in ln.strip("|").split("|")] for ln in lines]
    header, body = rows[0], rows[1:]
    return pl.DataFrame(
        {h: [int(r[i]) if r[i] else None for r in body] for i, h in enumerate(header)},
        schema={h: pl.Int64 for h in header},
    )


def test_spec_counts_as_shown():
    given_counts = table("""
        | n    |
        |------|
        | 0    |
        | 1    |
        | 7    |
        | 8    |
        | 12   |
        | 13   |
        | 1234 |
        |      |
    """)
    expected = table("""
        | n    |
        |------|
        | 0    |
        |      |
        |      |
        | 10   |
        | 10   |
        | 15   |
        | 1235 |
        |      |
    """)
    assert disclose_counts(given_counts, ["n"]).equals(expected)


def test_thresholds_are_configurable():
    policy = DisclosurePolicy(threshold=9, rounding_multiple=10)
    assert [disclose_count(n, policy) for n in (9, 10, 14, 15)] == [None, 10, 10, 20]
    assert policy.suppressed_label == "≤9"


def test_defaults_follow_the_cited_convention():
    assert disclosure.SUPPRESSION_THRESHOLD == 7
    assert disclosure.ROUNDING_MULTIPLE == 5
    assert "OpenSAFELY" in disclosure.__doc__


def test_missing_count_column_is_an_error_not_a_skip():
    with pytest.raises(AssertionError, match="not in the table"):
        disclose_counts(pl.DataFrame({"n": [1]}), ["count"])


def test_violations_finds_small_counts_in_any_integer_column():
    frame = pl.DataFrame({"rule": ["a", "b"], "n": [10, 3], "share": [0.5, 0.5]})
    assert violations(frame)["rule"].to_list() == ["b"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=50))
def test_no_disclosed_count_is_small_and_rounding_moves_at_most_half_a_multiple(counts):
    shown = disclose_counts(pl.DataFrame({"n": counts}, schema={"n": pl.Int64}), ["n"])
    assert violations(shown).height == 0
    for raw, out in zip(counts, shown["n"].to_list()):
        assert out == disclose_count(raw)
        if out is not None:
            assert out % 5 == 0 and abs(out - raw) <= 2


def test_docstring_examples():
    import doctest

    assert doctest.testmod(disclosure).failed == 0
