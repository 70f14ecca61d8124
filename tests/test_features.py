"""The feature dictionary: declared once, units as the issue fixes them, document never stale."""

from __future__ import annotations

from pipeline import schema
from pipeline.features import dictionary as fd
from tests.conftest import PROJECT_ROOT

#: The IRR units the models report (issue 4), written out once more on purpose: this is the spec.
EXPECTED_CORE_UNITS = {
    "exercise_min": "per 30 min",
    "exercise_rpe": "per 1 point",
    "fluid_l": "per 1 L",
    "heat_c": "per 5 °C",
    "electrolytes": "yes vs no",
    "recent_injury": "yes vs no",
    "sitting_h": "per 1 h",
    "poor_posture": "yes vs no",
    "stress": "per 1 point",
    "sleep_h": "per 1 h",
    "caffeine_mg": "per 100 mg",
    "alcohol_units": "per 1 unit",
}


def test_core_features_and_units_are_exactly_the_specified_ones():
    assert {f.name: f.unit for f in fd.CORE_FEATURES} == EXPECTED_CORE_UNITS


def test_every_feature_belongs_to_a_documented_factor_and_has_a_definition():
    for f in fd.CORE_FEATURES + fd.SECONDARY_FEATURES:
        assert f.factor in schema.FACTORS, f.name
        assert f.definition and f.source_columns
    # every daily factor column of the contract is a core feature
    assert set(schema.FACTOR_COLUMNS) <= {f.name for f in fd.CORE_FEATURES}


def test_secondary_features_live_only_in_their_own_models():
    core_models = {fd.POPULATION, fd.WITHIN_SUBJECT}
    for model in core_models:
        design, reported = fd.model_features(model)
        assert all(f.role == "core" for f in design) and design == reported
    for f in fd.SECONDARY_FEATURES:
        assert f.model not in core_models and f.model in fd.MODELS
        design, reported = fd.model_features(f.model)
        assert f in reported
        assert not {r for r in f.replaces} & {d.name for d in design}


def test_custom_factor_features_follow_their_declaration():
    airq = schema.CustomFactor(column="airq", factor="air_quality", label="Air quality",
                               kind="numeric", unit="index points", scale=10)
    f = fd.custom_feature(airq)
    assert (f.name, f.factor, f.unit, f.role) == ("airq", "air_quality",
                                                  "per 10 index points", "core")
    design, _ = fd.model_features(fd.WITHIN_SUBJECT_LAGGED, (airq,))
    assert f in design  # custom factors adjust the secondary models too


def test_feature_dictionary_document_is_not_stale():
    committed = (PROJECT_ROOT / "docs" / "feature-dictionary.md").read_text(encoding="utf-8")
    assert committed == fd.render_feature_dictionary(), "run `make docs` (cramp docs)"


def test_feature_dictionary_document_lists_every_feature():
    text = fd.render_feature_dictionary()
    for f in fd.CORE_FEATURES + fd.SECONDARY_FEATURES:
        assert f"| `{f.name}` | {f.unit} |" in text
    for model in fd.MODELS:
        assert f"| `{model}` |" in text
