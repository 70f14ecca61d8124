"""The ``[analysis]`` table of ``DATA/dataset.toml``: how every within-subject model is fitted.

- ``max_lag_days`` (0 to ``MAX_LAG_DAYS_LIMIT``, default ``DEFAULT_MAX_LAG_DAYS``): the lag model
  (``lags.csv``) relates each day's cramps to each factor on that day and the N days before it.
  A custom factor may set its own ``max_lag_days`` in its ``[[custom_factors]]`` table.
- ``strata``: ``"subject"`` (one baseline rate per person, the default) or ``"subject_month"``
  (one per person and calendar month: the time-stratified case time series design, Gasparrini,
  Epidemiology 2021, which removes slow person-specific trends and seasons). The robust errors
  stay clustered by subject either way.
- ``adjust``: any of ``"day_of_week"`` (six weekday indicators, Monday the reference) and
  ``"days_in_study"`` (a natural spline of the days since the subject's first diary day);
  default none.

Validated strictly: an unknown key or value is an error naming the key and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError

DEFAULT_MAX_LAG_DAYS = 3
#: Four weeks: beyond it a diary's days are too few and too far apart to tell lags apart.
MAX_LAG_DAYS_LIMIT = 28
STRATA = ("subject", "subject_month")
ADJUSTMENTS = ("day_of_week", "days_in_study")
ANALYSIS_KEYS = ("adjust", "max_lag_days", "strata")


@dataclass(frozen=True)
class AnalysisConfig:
    """The ``[analysis]`` choices (defaults when the table or the file is absent)."""

    max_lag_days: int = DEFAULT_MAX_LAG_DAYS
    strata: str = "subject"
    adjust: tuple[str, ...] = ()

    @property
    def is_default(self) -> bool:
        return self.strata == "subject" and not self.adjust

    def describe(self) -> str:
        """One phrase for notes and the report: the strata and the time adjustment."""
        strata = ("strata: subject x calendar month (time-stratified)"
                  if self.strata == "subject_month" else "strata: subject")
        adjust = (", adjusted for " + " and ".join(a.replace("_", " ") for a in self.adjust)
                  if self.adjust else "")
        return strata + adjust

    def as_dict(self) -> dict:
        return {"max_lag_days": self.max_lag_days, "strata": self.strata,
                "adjust": list(self.adjust), "clusters": "subject"}


def parse_analysis(raw: dict, where: str) -> AnalysisConfig:
    """The ``[analysis]`` table of the parsed document (``where`` names the file)."""
    table = raw.get("analysis", {})
    if not isinstance(table, dict):
        raise UserError("analysis must be a table ([analysis])", path=where)
    unknown = sorted(set(table) - set(ANALYSIS_KEYS))
    if unknown:
        raise UserError(f"[analysis]: unknown key(s) {', '.join(unknown)}; allowed keys are "
                        f"{', '.join(ANALYSIS_KEYS)}", path=where)
    max_lag = parse_max_lag_days(table.get("max_lag_days", DEFAULT_MAX_LAG_DAYS),
                                 f"[analysis] max_lag_days", where)
    strata = table.get("strata", "subject")
    if strata not in STRATA:
        raise UserError(f"[analysis] strata = {strata!r} is not allowed; allowed values are "
                        + ", ".join(f'"{s}"' for s in STRATA), path=where)
    adjust = table.get("adjust", [])
    if not isinstance(adjust, list) or not all(isinstance(a, str) for a in adjust):
        raise UserError("[analysis] adjust must be a list of strings; allowed values are "
                        + ", ".join(f'"{a}"' for a in ADJUSTMENTS), path=where)
    bad = [a for a in adjust if a not in ADJUSTMENTS]
    if bad:
        raise UserError(f"[analysis] adjust: {', '.join(repr(a) for a in bad)} not allowed; "
                        "allowed values are " + ", ".join(f'"{a}"' for a in ADJUSTMENTS),
                        path=where)
    # Stated in a fixed order, so the same choices always read the same.
    return AnalysisConfig(max_lag_days=max_lag, strata=strata,
                          adjust=tuple(a for a in ADJUSTMENTS if a in adjust))


def parse_max_lag_days(value, what: str, where: str | None = None) -> int:
    """An integer from 0 to ``MAX_LAG_DAYS_LIMIT``, or a ``UserError`` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or not (
            0 <= value <= MAX_LAG_DAYS_LIMIT):
        raise UserError(f"{what} = {value!r} is not allowed; allowed values are whole numbers "
                        f"from 0 to {MAX_LAG_DAYS_LIMIT}", path=where)
    return value
