"""Planted effect modification (``cramp synth --effect-modification``): an effect that holds only
for some people, so the subgroup analysis (``pipeline/models/subgroups.py``) has something to find.

The scenario: prolonged sitting raises the cramp rate only in people aged 60 and over. The common
``sitting_h`` effect of :mod:`pipeline.synth.truth` is replaced by IRR 1.00 per hour under 60 and
``IRR_IN_MODIFIED_GROUP`` per hour at 60+; every other planted number and every random draw stays
as in the default dataset of the same seed (the hook only adds a term to the log rate), so the two
datasets differ in their episode counts alone. The default generator never calls this module, so
its output is unchanged byte for byte.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline import schema
from pipeline.synth.truth import EFFECTS, PlantedEffect

#: The feature whose effect is modified.
FEATURE = "sitting_h"
#: Age bands in which the feature has an effect (everyone else: none).
MODIFIED_AGE_BANDS = ("60-69", "70-79", "80+")
#: IRR per documented unit (1 h) in the modified group, and elsewhere.
IRR_IN_MODIFIED_GROUP = 1.15
IRR_ELSEWHERE = 1.00


def replace_effects(effects: tuple[PlantedEffect, ...]) -> tuple[PlantedEffect, ...]:
    """The planted effects with ``FEATURE``'s common effect replaced by the one outside the
    modified group (the modified group's extra term is :func:`extra_log_rate`)."""
    assert any(e.feature == FEATURE for e in effects), f"{FEATURE} is not a planted effect"
    return tuple(
        dataclasses.replace(e, irr=IRR_ELSEWHERE,
                            why=f"Effect modification: IRR {IRR_ELSEWHERE:g} per 1 h under 60, "
                                f"{IRR_IN_MODIFIED_GROUP:g} per 1 h at 60+ (see "
                                "effect_modification).")
        if e.feature == FEATURE else e
        for e in effects)


def extra_log_rate(x: dict[str, np.ndarray], age_band: np.ndarray) -> np.ndarray:
    """The log-rate term of the modified group: ``log(IRR_in / IRR_elsewhere) * x / per`` (``per``
    the feature's documented unit) for subjects (rows) in ``MODIFIED_AGE_BANDS``, 0 for the others.
    ``age_band`` holds indices into ``schema.AGE_BANDS`` (one per subject); ``x[FEATURE]`` is
    subjects × days."""
    per = next(e.per for e in EFFECTS if e.feature == FEATURE)
    codes = [schema.AGE_BANDS.index(b) for b in MODIFIED_AGE_BANDS]
    in_group = np.isin(age_band, codes)[:, None]
    slope = (np.log(IRR_IN_MODIFIED_GROUP) - np.log(IRR_ELSEWHERE)) / per
    return np.where(in_group, slope * x[FEATURE], 0.0)


def truth_entry() -> dict:
    """The ``effect_modification`` key of the truth document."""
    return {
        "feature": FEATURE,
        "subgroup_variable": "age_band",
        "modified_age_bands": list(MODIFIED_AGE_BANDS),
        "irr_in_modified_group": IRR_IN_MODIFIED_GROUP,
        "irr_elsewhere": IRR_ELSEWHERE,
        "unit": "per 1 h",
        "description": (
            f"{FEATURE} raises the rate only for subjects aged 60+ (age_band in "
            f"{', '.join(MODIFIED_AGE_BANDS)}): log rate gains "
            f"log({IRR_IN_MODIFIED_GROUP:g}) * {FEATURE} for them and nothing for others. No other "
            "feature, nor the muscle group or sex, modifies any effect."),
    }
