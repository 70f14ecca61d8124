"""One plain-language sentence per factor, from a row of ``effects.csv``.

A clinician should be able to read the finding without knowing what an IRR is:

    On days with one more hour of sitting, the same person had 4% more cramps (95% CI 3% to 5%).

The wording follows the interval, not the p-value: an interval that crosses 1 is "compatible with no
difference", and a row without an estimate gives its stated reason instead of a number.
"""

from __future__ import annotations

import math

import polars as pl

#: How each core feature's documented unit reads in a sentence ("On days with ...").
#: Binary features read as the exposure itself; the comparison is with days without it.
EXPOSURE_PHRASES: dict[str, str] = {
    "exercise_min": "30 more minutes of exercise",
    "exercise_rpe": "one point higher exertion (RPE, 0–10)",
    "fluid_l": "one more litre of fluid",
    "heat_c": "a highest outdoor temperature 5 °C warmer",
    "electrolytes": "an electrolyte drink or supplement",
    "recent_injury": "an injury in the previous 30 days",
    "sitting_h": "one more hour of sitting",
    "poor_posture": "poor posture",
    "stress": "one point more stress (0–10)",
    "sleep_h": "one more hour of sleep the night before",
    "caffeine_mg": "100 mg more caffeine (about a cup of coffee)",
    "alcohol_units": "one more unit of alcohol",
}

#: Short labels for tables and figure axes.
FEATURE_LABELS: dict[str, str] = {
    "exercise_min": "Exercise",
    "exercise_rpe": "Exertion (RPE)",
    "fluid_l": "Fluid intake",
    "heat_c": "Outdoor heat",
    "electrolytes": "Electrolyte drink",
    "recent_injury": "Recent injury",
    "sitting_h": "Sitting",
    "poor_posture": "Poor posture",
    "stress": "Stress",
    "sleep_h": "Sleep",
    "caffeine_mg": "Caffeine",
    "alcohol_units": "Alcohol",
}

#: Who the comparison is about, per model.
MODEL_SUBJECTS: dict[str, str] = {
    "within_subject": "the same person had",
    "population": "people had",
}


#: How each model is named wherever the report names it (table headings, figure legends): one
#: vocabulary, so a reader matches the forest plot's legend to the table's heading.
MODEL_LABELS: dict[str, str] = {
    "within_subject": "Within-subject (lead estimate)",
    "population": "Population",
    "within_subject_lagged": "Within-subject, lagged training load",
    "within_subject_thresholds": "Within-subject, below-usual thresholds",
}

#: Column-name endings that state a unit (``magnesium_mg``). A label drops them because tables and
#: axes state the unit beside the label; keeping both gives "Magnesium mg (mg)".
UNIT_SUFFIXES = ("_mg", "_g", "_kg", "_l", "_ml", "_h", "_min", "_s", "_c", "_pct", "_units",
                 "_au", "_km", "_steps")


def model_label(model: str) -> str:
    """The one name of a model in the report (``within_subject`` -> "Within-subject (lead
    estimate)"); an unknown model reads as its id with spaces."""
    return MODEL_LABELS.get(model, model.replace("_", " ").capitalize())


def _words(name: str) -> str:
    for suffix in UNIT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("_", " ").capitalize()


def feature_label(feature: str, factor: str | None = None) -> str:
    """A short human label for a feature, without a unit (the unit is stated beside it); a custom
    factor (``factor`` not one of the documented contributing factors) is labelled by its factor
    name (``magnesium`` -> "Magnesium"), else by its column without the unit (``magnesium_mg`` ->
    "Magnesium")."""
    from pipeline.schema import FACTORS

    if feature in FEATURE_LABELS:
        return FEATURE_LABELS[feature]
    if factor and factor not in FACTORS:
        return _words(factor)
    return _words(feature)


def is_binary_unit(unit: str | None) -> bool:
    """Binary features are reported as "yes vs no" (or similar) in ``effects.csv``."""
    return unit is not None and (" vs " in unit or unit.strip().lower() in {"yes", "yes/no"})


def exposure_phrase(feature: str, unit: str | None, factor: str | None = None) -> str:
    """What "a day with more of this" means for a feature, in words."""
    if feature in EXPOSURE_PHRASES:
        return EXPOSURE_PHRASES[feature]
    label = feature_label(feature, factor).lower()
    if is_binary_unit(unit):
        return label
    amount = (unit or "one unit").removeprefix("per ").strip()
    return f"{label} higher by {amount}"


#: Most decimals a percentage in a sentence is given (beyond this a bound that still rounds onto
#: its neighbour is shown as it rounds: the interval is then narrower than anyone can act on).
MAX_PCT_DIGITS = 3


def _pct(x: float, digits: int) -> str:
    """A percentage for a sentence with ``digits`` decimals."""
    return f"{abs(x) * 100:.{digits}f}%"


def _digits(irr: float) -> int:
    """Whole percentages, unless the estimate itself is under 1% (then one decimal throughout)."""
    return 1 if 0 < abs(irr - 1) * 100 < 0.95 else 0


def _times(irr: float, digits: int) -> str:
    return f"{irr:.{digits + 1}f} times as many"


def _change(irr: float, digits: int) -> str:
    """"4% more" / "20% fewer" / "2.5 times as many"."""
    if irr >= 2:
        return _times(irr, digits)
    if irr > 1:
        return f"{_pct(irr - 1, digits)} more"
    if irr < 1:
        return f"{_pct(1 - irr, digits)} fewer"
    return "the same number of"


def _rounds_to_none(irr: float, digits: int) -> bool:
    return round(abs(irr - 1) * 100, digits) == 0


def _bound(irr: float, digits: int) -> str:
    """One interval bound in words, with its direction ("no difference" when it rounds to 0)."""
    if _rounds_to_none(irr, digits):
        return "no difference"
    if irr >= 2:
        return _times(irr, digits)
    if irr >= 1:
        return f"{_pct(irr - 1, digits)} more"
    return f"{_pct(1 - irr, digits)} fewer"


def _bounds(low: float, high: float, digits: int) -> tuple[str, str]:
    """The two bounds as the sentence writes them."""
    if low > 1 and high < 2:
        return _pct(low - 1, digits), _pct(high - 1, digits)
    if high < 1:
        return _pct(1 - high, digits), _pct(1 - low, digits)
    return _bound(low, digits), _bound(high, digits)


def _interval(irr: float, low: float, high: float, digits: int) -> str:
    """"3% to 5%" when both bounds lie on the same side of 1 as the estimate, else both
    directions named ("from 3% fewer to 8% more")."""
    first, second = _bounds(low, high, digits)
    if (low > 1 and high < 2) or high < 1:
        return f"95% CI {first} to {second}"
    return f"95% CI from {first} to {second}"


def interval_digits(irr: float, low: float, high: float) -> int:
    """Decimals for a sentence's percentages, chosen from the interval's width: the fewest (whole
    percentages, or one decimal for an estimate under 1%) at which the two bounds read differently
    and a bound that is not exactly 1 is not written as no change ("0%", "no difference"). A
    narrow interval ("95% CI 5% to 5%") therefore gets the decimals it needs ("4.6% to 5.3%")."""
    digits = _digits(irr)
    while digits < MAX_PCT_DIGITS:
        first, second = _bounds(low, high, digits)
        collapsed = first == second or any(
            bound != 1 and _rounds_to_none(bound, digits) for bound in (low, high))
        if not collapsed:
            break
        digits += 1
    return digits


def describe_effect(row: dict) -> str:
    """The sentence for one ``effects.csv`` row (a dict of its columns)."""
    feature, unit, model = row["feature"], row.get("unit"), row.get("model", "within_subject")
    irr, low, high = row.get("irr"), row.get("ci_low"), row.get("ci_high")
    factor = row.get("factor")
    label = feature_label(feature, factor)
    if irr is None or low is None or high is None or any(
        math.isnan(v) for v in (irr, low, high)
    ):
        note = (row.get("note") or "no reason recorded").rstrip(".")
        return f"{label}: no estimate ({note})."
    who = MODEL_SUBJECTS.get(model, "people had")
    binary = is_binary_unit(unit)
    exposure = exposure_phrase(feature, unit, factor)
    opening = f"On days with {exposure}" + (" (compared with days without)" if binary else "")
    digits = interval_digits(irr, low, high)
    interval = _interval(irr, low, high, digits)
    if low <= 1 <= high:
        return (f"{opening}, {who} {_change(irr, digits)} cramps, but the data are compatible "
                f"with no difference ({interval}).")
    return f"{opening}, {who} {_change(irr, digits)} cramps ({interval})."


def effect_sentences(effects: pl.DataFrame, model: str = "within_subject") -> pl.DataFrame:
    """``feature, sentence`` for every row of one model, in the order of ``effects.csv``."""
    rows = effects.filter(pl.col("model") == model).to_dicts()
    return pl.DataFrame(
        {"feature": [r["feature"] for r in rows], "sentence": [describe_effect(r) for r in rows]},
        schema={"feature": pl.String, "sentence": pl.String},
    )
