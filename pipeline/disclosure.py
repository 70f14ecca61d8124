"""Small-number suppression for the aggregate counts in the report's research sections.

Policy: the statistical disclosure control used for outputs leaving OpenSAFELY and NHS England
secure environments (OpenSAFELY output-checking guidance, https://docs.opensafely.org/releases/ and
https://docs.opensafely.org/outputs/sdc/): a count from 1 to 7 is suppressed, and every other count is
rounded to the nearest multiple of 5, so that no small group of people can be picked out and a
suppressed cell cannot be recovered exactly by subtracting its neighbours from a rounded total.

What this applies to, and what it never touches:

- Aggregate counts in research sections (rows by table, quarantine by reason, subjects by days
  logged, flags by rule and week, the ``n_*`` columns of the effects table): suppressed and rounded.
- Model estimates (IRRs, intervals, p- and q-values) are shown as fitted.
- The red-flag follow-up lists (episodes and subjects to contact) are never suppressed: hiding a red
  flag would be a clinical safety failure, not a privacy gain. They are labelled as identifying and
  left out of a shareable (``identifiers=False``) report instead.

A suppressed count becomes null; :data:`SUPPRESSED_LABEL` is how tables show it. Counts written in
prose (model notes such as "3 subject(s) without episodes") go through :func:`disclose_text`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

#: Counts from 1 up to and including this value are suppressed.
SUPPRESSION_THRESHOLD = 7
#: Counts above the threshold are rounded to the nearest multiple of this.
ROUNDING_MULTIPLE = 5
#: How a suppressed count reads in a table.
SUPPRESSED_LABEL = "≤7"


@dataclass(frozen=True)
class DisclosurePolicy:
    """Thresholds of the suppression policy. The defaults follow the module's cited convention."""

    threshold: int = SUPPRESSION_THRESHOLD
    rounding_multiple: int = ROUNDING_MULTIPLE

    def __post_init__(self) -> None:
        assert self.threshold >= 0, "threshold must be >= 0"
        assert self.rounding_multiple >= 1, "rounding_multiple must be >= 1"

    @property
    def suppressed_label(self) -> str:
        return f"≤{self.threshold}"


DEFAULT_POLICY = DisclosurePolicy()


def disclose_count(n: int | None, policy: DisclosurePolicy = DEFAULT_POLICY) -> int | None:
    """One count as it may be shown: None when suppressed, else rounded (halves round up).

    >>> [disclose_count(n) for n in (0, 1, 7, 8, 12, 13, 1234)]
    [0, None, None, 10, 10, 15, 1235]
    """
    if n is None:
        return None
    assert n >= 0, f"a count cannot be negative: {n}"
    if 1 <= n <= policy.threshold:
        return None
    m = policy.rounding_multiple
    return ((n + m // 2) // m) * m


def disclose_expr(column: str, policy: DisclosurePolicy = DEFAULT_POLICY) -> pl.Expr:
    """The expression form of :func:`disclose_count` for one integer count column."""
    m = policy.rounding_multiple
    value = pl.col(column)
    rounded = ((value + m // 2) // m) * m
    return (
        pl.when(value.is_between(1, policy.threshold))
        .then(None)
        .otherwise(rounded)
        .cast(pl.Int64)
        .alias(column)
    )


def disclose_counts(
    frame: pl.DataFrame | pl.LazyFrame,
    columns: Iterable[str],
    policy: DisclosurePolicy = DEFAULT_POLICY,
) -> pl.DataFrame:
    """Apply the policy to the named count columns of an aggregate table.

    Every named column must exist and hold integers; a missing column is an error, never a skip.
    """
    lazy = frame.lazy()
    names = list(columns)
    schema = lazy.collect_schema()
    missing = [c for c in names if c not in schema]
    assert not missing, f"count columns not in the table: {missing}"
    not_int = [c for c in names if not schema[c].is_integer()]
    assert not not_int, f"count columns must be integers: {not_int}"
    return lazy.with_columns(disclose_expr(c, policy) for c in names).collect()


#: A count written in prose: a whole number followed by what it counts ("3 subject(s)",
#: "3,411 of 15,755 subject-days"). Numbers that are not counts (thresholds, units) do not match.
COUNT_IN_TEXT = re.compile(
    r"(?<![\d.,≤<])(\d{1,3}(?:,\d{3})+|\d+)(?![\d.,]\d)"
    r"(?=(?:\s+of\s+[\d,]+)?\s+(?:subjects?|subject\(s\)|subject-days?|episodes?|"
    r"episode\(s\)|rows?|row\(s\)|people|persons?|days?)\b)"
)


def disclose_text(text: str, policy: DisclosurePolicy = DEFAULT_POLICY) -> str:
    """Apply the policy to counts written in prose (model notes, sufficiency reasons).

    >>> disclose_text("3,411 of 15,755 subject-days dropped; 3 subject(s) without episodes")
    '3,410 of 15,755 subject-days dropped; ≤7 subject(s) without episodes'
    """

    def replace(match: re.Match) -> str:
        shown = disclose_count(int(match.group(1).replace(",", "")), policy)
        return policy.suppressed_label if shown is None else f"{shown:,}"

    return COUNT_IN_TEXT.sub(replace, text)


def text_violations(text: str, policy: DisclosurePolicy = DEFAULT_POLICY) -> list[str]:
    """Counts from 1 to the threshold written in prose (for tests that scan report text)."""
    return [m.group(0) for m in COUNT_IN_TEXT.finditer(text)
            if 1 <= int(m.group(1).replace(",", "")) <= policy.threshold]


def violations(frame: pl.DataFrame, policy: DisclosurePolicy = DEFAULT_POLICY) -> pl.DataFrame:
    """Rows of ``frame`` holding an integer from 1 to the threshold in any integer column.

    Used by the tests that scan every aggregate table the report writes.
    """
    int_columns = [c for c, t in frame.schema.items() if t.is_integer()]
    if not int_columns:
        return frame.clear()
    small = pl.any_horizontal(pl.col(c).is_between(1, policy.threshold) for c in int_columns)
    return frame.filter(small)
