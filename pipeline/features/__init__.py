"""Features: the feature dictionary (declared once) and the subject-day panel."""

from pipeline.features.dictionary import (
    CORE_FEATURES,
    FEATURES,
    MODELS,
    SECONDARY_FEATURES,
    Feature,
    custom_feature,
    model_features,
    render_feature_dictionary,
)
from pipeline.features.panel import Panel, build_panel

__all__ = [
    "CORE_FEATURES",
    "FEATURES",
    "MODELS",
    "SECONDARY_FEATURES",
    "Feature",
    "Panel",
    "build_panel",
    "custom_feature",
    "model_features",
    "render_feature_dictionary",
]
