"""``dataset.toml``: custom factors are parsed into ``schema.CustomFactor`` and checked strictly."""

from __future__ import annotations

import pytest

from pipeline.dataset_config import load_dataset_config
from pipeline.errors import UserError
from pipeline.schema import CustomFactor

AIRQ = """
[[custom_factors]]
column = "airq"
factor = "air_quality"
label = "Air-quality index"
kind = "numeric"
unit = "index points"
scale = 10
minimum = 0
maximum = 500
"""
POLLEN = """
[[custom_factors]]
column = "pollen_high"
factor = "pollen"
label = "High pollen day"
kind = "boolean"
"""


def _load(tmp_path, text):
    (tmp_path / "dataset.toml").write_text(text)
    return load_dataset_config(tmp_path)


def test_absent_file_means_no_custom_factors(tmp_path):
    config = load_dataset_config(tmp_path)
    assert config.custom_factors == () and config.path is None


def test_custom_factors_are_parsed(tmp_path):
    config = _load(tmp_path, AIRQ + POLLEN)
    assert config.custom_factors == (
        CustomFactor(column="airq", factor="air_quality", label="Air-quality index",
                     kind="numeric", unit="index points", scale=10.0, minimum=0.0, maximum=500.0),
        CustomFactor(column="pollen_high", factor="pollen", label="High pollen day",
                     kind="boolean"),
    )
    assert config.custom_columns == ("airq", "pollen_high")


@pytest.mark.parametrize("text,problem", [
    ("[[custom_factor]]\ncolumn = 'x'\n", r"unknown key\(s\) custom_factor"),
    (AIRQ + "colour = 'red'\n", r"custom factor #1: unknown key\(s\) colour"),
    (AIRQ.replace('kind = "numeric"', 'kind = "categorical"'), "kind 'categorical' must be one of"),
    (AIRQ.replace('column = "airq"', 'column = "sleep_h"'), "'sleep_h' clashes with a contract column"),
    (AIRQ.replace('column = "airq"', 'column = "source_line"'), "clashes with a contract column"),
    (AIRQ.replace('column = "airq"', 'column = "episode_id"'), "clashes with a contract column"),
    (AIRQ + AIRQ.replace('factor = "air_quality"', 'factor = "other"'), "column 'airq' is declared twice"),
    (AIRQ + AIRQ.replace('column = "airq"', 'column = "airq2"'), "factor 'air_quality' is declared twice"),
    (AIRQ.replace('factor = "air_quality"', 'factor = "diet"'), "documented core factor"),
    (AIRQ.replace('label = "Air-quality index"\n', ""), r"missing required key\(s\) label"),
    (AIRQ.replace("maximum = 500", "maximum = -1"), "minimum is greater than maximum"),
    (AIRQ.replace("scale = 10", "scale = 0"), "scale must be positive"),
    (AIRQ.replace("scale = 10", 'scale = "10"'), "scale must be a finite number"),
    (AIRQ.replace('column = "airq"', 'column = "Air Q"'), "must be lower-case"),
    (POLLEN + "minimum = 0\n", "boolean factor takes no scale"),
    ("custom_factors = 3\n", "must be an array of tables"),
    ("[[custom_factors]\n", "not valid TOML"),
])
def test_invalid_configs_are_refused_naming_the_file(tmp_path, text, problem):
    with pytest.raises(UserError, match=problem) as error:
        _load(tmp_path, text)
    assert "dataset.toml" in str(error.value)
