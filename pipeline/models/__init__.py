"""Models: population Poisson, within-subject (conditional) Poisson, BH q-values."""

from pipeline.models.conditional import (
    ConditionalPoissonFit,
    fit_conditional_poisson,
    within_group_variation,
)
from pipeline.models.multiplicity import benjamini_hochberg
from pipeline.models.poisson import EstimationError, PoissonFit, fit_poisson

__all__ = [
    "ConditionalPoissonFit",
    "EstimationError",
    "PoissonFit",
    "benjamini_hochberg",
    "fit_conditional_poisson",
    "fit_poisson",
    "within_group_variation",
]

# Effects table assembly (owned by the effects/diagnostics side), used by pipeline.run.
from pipeline.models.effects import ModelResults, fit_models, write_model_outputs  # noqa: E402

__all__ += ["ModelResults", "fit_models", "write_model_outputs"]
