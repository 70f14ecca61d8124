"""The feature dictionary: every model feature declared once, with its meaning and unit.

The panel builder (``panel.py``), the models (``pipeline/models``) and
``docs/feature-dictionary.md`` all read these declarations; nothing else restates a feature's unit
or scale.

A feature's value in the panel is in *model units*: the source value divided by ``scale``, so the
model's incidence-rate ratio (IRR) is "per ``scale`` ``source_unit``" (``exercise_min`` = 2.0 means
60 minutes, and its IRR is per 30 minutes). Binary features are 0.0/1.0 and their IRR is yes vs no.

Core features are the twelve the issue fixes (and any custom factors a dataset declares); the
``population`` and ``within_subject`` models use exactly those, so their estimates keep a fixed
meaning across datasets. Secondary (engineered) features only enter their own, separately named
models, where they are adjusted for the core features they do not replace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline import schema

Role = Literal["core", "secondary"]
Kind = Literal["numeric", "binary"]

#: Model names, in the order effects.csv lists them.
POPULATION = "population"
WITHIN_SUBJECT = "within_subject"
WITHIN_SUBJECT_LAGGED = "within_subject_lagged"
WITHIN_SUBJECT_THRESHOLDS = "within_subject_thresholds"

#: Thresholds of the engineered features, named here so the dictionary can state them.
SHORT_SLEEP_BELOW_H = 6.0
FLUID_BELOW_USUAL_BY_L = 0.5
FLUID_USUAL_MIN_DAYS = 7
RECENT_INJURY_WINDOW_DAYS = 30
ACUTE_WINDOW_DAYS = 7
CHRONIC_WINDOW_DAYS = 28
ACUTE_MIN_LOGGED_DAYS = 5
CHRONIC_MIN_LOGGED_DAYS = 21


@dataclass(frozen=True)
class Feature:
    """One model feature."""

    name: str
    #: Key of ``schema.FACTORS`` (or a custom factor's name).
    factor: str
    kind: Kind
    role: Role
    definition: str
    #: Daily (or other table) columns the feature is computed from.
    source_columns: tuple[str, ...]
    #: Unit of the source value ("min", "L", ...); None for binary features.
    source_unit: str | None = None
    #: The panel holds source value / scale; the IRR is per ``scale`` ``source_unit``.
    scale: float = 1.0
    #: Secondary features: the model they enter, and the core features they stand in for there.
    model: str | None = None
    replaces: tuple[str, ...] = ()
    caveat: str | None = None

    @property
    def unit(self) -> str:
        """The IRR's unit as effects.csv states it: ``per 30 min`` or ``yes vs no``."""
        if self.kind == "binary":
            return "yes vs no"
        unit = self.source_unit
        if unit == "units" and self.scale == 1:
            unit = "unit"
        scale = f"{self.scale:g}"
        return f"per {scale} {unit}" if unit else f"per {scale}"


def _core(name: str, scale: float = 1.0, definition: str | None = None,
          source_columns: tuple[str, ...] | None = None) -> Feature:
    column = schema.FACTOR_COLUMNS[name]
    kind: Kind = "binary" if column.kind == "bool" else "numeric"
    return Feature(
        name=name,
        factor=column.factor or "",
        kind=kind,
        role="core",
        definition=definition or column.description,
        source_columns=source_columns or (name,),
        source_unit=None if kind == "binary" else _short_unit(column.unit),
        scale=scale,
        caveat=column.caveat,
    )


def _short_unit(unit: str | None) -> str | None:
    # "points (0–10)" reads as "point" in "per 1 point".
    if unit is None:
        return None
    return "point" if unit.startswith("points") else unit


CORE_FEATURES: tuple[Feature, ...] = (
    _core("exercise_min", 30.0),
    _core("exercise_rpe", 1.0,
          definition="Perceived exertion of the day's exercise (Borg CR10); set to 0 on a day "
          "with exercise_min = 0 and no RPE recorded, so rest days are not dropped as missing."),
    _core("fluid_l", 1.0),
    _core("heat_c", 5.0),
    _core("electrolytes"),
    Feature(
        name="recent_injury",
        factor="prior_injury",
        kind="binary",
        role="core",
        definition=f"An injury (any muscle group) logged on any of the "
        f"{RECENT_INJURY_WINDOW_DAYS} days before the day (d−{RECENT_INJURY_WINDOW_DAYS} … d−1). "
        "Absent when the dataset has no injuries table.",
        source_columns=("injuries.date",),
        caveat="Only injuries the subject logged; an injury before enrolment may be missing.",
    ),
    _core("sitting_h", 1.0),
    _core("poor_posture"),
    _core("stress", 1.0),
    _core("sleep_h", 1.0),
    _core("caffeine_mg", 100.0),
    _core("alcohol_units", 1.0),
)

SECONDARY_FEATURES: tuple[Feature, ...] = (
    Feature(
        name="training_load_prev_day",
        factor="fatigue_overuse",
        kind="numeric",
        role="secondary",
        definition="Previous calendar day's training load, exercise_min × exercise_rpe "
        "(session-RPE arbitrary units, AU). Missing when the previous day was not logged.",
        source_columns=("exercise_min", "exercise_rpe"),
        source_unit="AU",
        scale=100.0,
        model=WITHIN_SUBJECT_LAGGED,
    ),
    Feature(
        name="acute_chronic_load_ratio",
        factor="fatigue_overuse",
        kind="numeric",
        role="secondary",
        definition=f"Mean daily training load over the {ACUTE_WINDOW_DAYS} days ending on the day "
        f"divided by the mean over the {CHRONIC_WINDOW_DAYS} days ending on the day (logged days "
        f"only). Missing unless at least {ACUTE_MIN_LOGGED_DAYS} of {ACUTE_WINDOW_DAYS} and "
        f"{CHRONIC_MIN_LOGGED_DAYS} of {CHRONIC_WINDOW_DAYS} days are logged and the chronic load "
        "is above zero.",
        source_columns=("exercise_min", "exercise_rpe"),
        source_unit="ratio",
        scale=0.5,
        model=WITHIN_SUBJECT_LAGGED,
        caveat="A ratio of two running means; unstable for subjects who rarely exercise.",
    ),
    Feature(
        name="fluid_below_usual",
        factor="dehydration",
        kind="binary",
        role="secondary",
        definition=f"fluid_l at least {FLUID_BELOW_USUAL_BY_L:g} L below the subject's own median "
        f"fluid_l (over all their logged days; missing for a subject with fewer than "
        f"{FLUID_USUAL_MIN_DAYS} days with fluid recorded). Stands in for fluid_l.",
        source_columns=("fluid_l",),
        model=WITHIN_SUBJECT_THRESHOLDS,
        replaces=("fluid_l",),
    ),
    Feature(
        name="short_sleep",
        factor="stress_sleep",
        kind="binary",
        role="secondary",
        definition=f"sleep_h below {SHORT_SLEEP_BELOW_H:g} h. Stands in for sleep_h.",
        source_columns=("sleep_h",),
        model=WITHIN_SUBJECT_THRESHOLDS,
        replaces=("sleep_h",),
    ),
)

#: The models, in output order, with whether they condition on the subject and what they add.
MODELS: dict[str, str] = {
    POPULATION: "Poisson regression of episodes on the core and custom features, one row per "
    "subject-day, intercept, subject-clustered robust (sandwich) errors. Compares people as well "
    "as days, so it is open to confounding by stable differences between people.",
    WITHIN_SUBJECT: "Conditional Poisson (subject fixed effects) on the same features, "
    "subject-clustered robust errors: compares each subject's days with their own other days. "
    "Subjects without any episode carry no information and drop out.",
    WITHIN_SUBJECT_LAGGED: "within_subject plus the training-load history features "
    "(previous-day load, acute:chronic load ratio); only the added features are reported.",
    WITHIN_SUBJECT_THRESHOLDS: "within_subject with threshold features standing in for their "
    "linear counterparts (short sleep for sleep_h, fluid below usual for fluid_l); only the "
    "threshold features are reported.",
}

FEATURES: dict[str, Feature] = {f.name: f for f in CORE_FEATURES + SECONDARY_FEATURES}


def custom_feature(custom: schema.CustomFactor) -> Feature:
    """The model feature for a custom factor declared in ``dataset.toml``."""
    binary = custom.kind == "boolean"
    return Feature(
        name=custom.column,
        factor=custom.factor,
        kind="binary" if binary else "numeric",
        role="core",
        definition=custom.description or custom.label,
        source_columns=(custom.column,),
        source_unit=None if binary else (custom.unit or ""),
        scale=1.0 if binary else float(custom.scale),
        caveat="Declared by the dataset (dataset.toml), not part of the v1 contract.",
    )


def model_features(model: str,
                   custom_factors=()) -> tuple[tuple[Feature, ...], tuple[Feature, ...]]:
    """``(design, reported)`` features of a model, before availability and sufficiency checks."""
    core = CORE_FEATURES + tuple(custom_feature(c) for c in custom_factors)
    if model in (POPULATION, WITHIN_SUBJECT):
        return core, core
    added = tuple(f for f in SECONDARY_FEATURES if f.model == model)
    if not added:
        raise KeyError(f"unknown model {model!r}")
    replaced = {name for f in added for name in f.replaces}
    return tuple(f for f in core if f.name not in replaced) + added, added


def factor_order(custom_factors=()) -> dict[str, int]:
    """Sort position of each factor: the schema's order, then custom factors as declared."""
    order = {name: i for i, name in enumerate(schema.FACTORS)}
    for c in custom_factors:
        order.setdefault(c.factor, len(order))
    return order


def render_feature_dictionary() -> str:
    """``docs/feature-dictionary.md``, generated from the declarations above."""
    lines = [
        "# Feature dictionary",
        "",
        "<!-- Generated from pipeline/features/dictionary.py by `make docs`; do not edit. -->",
        "",
        "Every model feature, its definition, the unit its incidence-rate ratio (IRR) is reported "
        "in, and the columns it is computed from. The panel has one row per accepted `daily` row "
        "(a logged day is a day at risk); the outcome `episodes` is the number of accepted "
        "episodes whose `started_at` falls on that calendar date. Episodes on unlogged days are "
        "counted in the panel summary (`episodes_outside_logged_days`) and left out of the "
        "models. In the panel a numeric feature holds its source value divided by its scale "
        "(model units: "
        "`exercise_min` = 2 means 60 minutes); a binary feature holds 1 (yes) or 0 (no).",
        "",
        "A feature whose source column a dataset lacks is left out of every model with a note in "
        "`effects.csv`. Rows with a missing value in a model's feature are dropped from that model "
        "only (complete-case analysis); the number dropped is stated in `diagnostics.json` and in "
        "the `note` column.",
        "",
        "## Models",
        "",
        "| model | what it is |",
        "| --- | --- |",
    ]
    lines += [f"| `{name}` | {text} |" for name, text in MODELS.items()]
    lines += ["", "## Core features", "",
              "Used linearly by `population` and `within_subject`. Custom factors declared in "
              "`DATA/dataset.toml` join them as core features, per their declared scale "
              "(numeric) or yes vs no (boolean).", ""]
    lines += _table(CORE_FEATURES, with_model=False)
    lines += ["", "## Secondary (engineered) features", "",
              "Used only in their own models, adjusted for the core features they do not stand "
              "in for.", ""]
    lines += _table(SECONDARY_FEATURES, with_model=True)
    lines += ["", "## Caveats", ""]
    lines += [f"- `{f.name}`: {f.caveat}" for f in CORE_FEATURES + SECONDARY_FEATURES if f.caveat]
    return "\n".join(lines) + "\n"


def _table(features, *, with_model: bool) -> list[str]:
    head = "| factor | feature | IRR unit | definition | source columns |"
    rule = "| --- | --- | --- | --- | --- |"
    if with_model:
        head += " model | stands in for |"
        rule += " --- | --- |"
    rows = [head, rule]
    for f in features:
        sources = ", ".join(f"`{c}`" for c in f.source_columns)
        factor = schema.FACTORS.get(f.factor, f.factor)
        row = f"| {factor} | `{f.name}` | {f.unit} | {f.definition} | {sources} |"
        if with_model:
            replaces = ", ".join(f"`{r}`" for r in f.replaces) or "—"
            row += f" `{f.model}` | {replaces} |"
        rows.append(row)
    return rows
