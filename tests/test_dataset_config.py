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


# --- issue 8: limits, nesting and links ----------------------------------------------------------

import time  # noqa: E402

from pipeline.schema import MAX_CUSTOM_FACTORS, MAX_DATASET_CONFIG_BYTES  # noqa: E402


def _factors(n: int) -> str:
    return "".join(f'[[custom_factors]]\ncolumn = "c{i}"\nfactor = "f{i}"\nlabel = "x"\n'
                   'kind = "boolean"\n' for i in range(n))


def _load(tmp_path, text: str):
    (tmp_path / "dataset.toml").write_text(text, encoding="utf-8")
    return load_dataset_config(tmp_path)


def test_the_custom_factor_limit_itself_is_accepted(tmp_path):
    assert len(_load(tmp_path, _factors(MAX_CUSTOM_FACTORS)).custom_factors) == MAX_CUSTOM_FACTORS


def test_more_custom_factors_than_the_limit_are_refused(tmp_path):
    with pytest.raises(UserError, match="MAX_CUSTOM_FACTORS"):
        _load(tmp_path, _factors(MAX_CUSTOM_FACTORS + 1))


def test_100k_custom_factors_refused_within_seconds(tmp_path):
    text = _factors(100_000)
    assert len(text.encode()) > MAX_DATASET_CONFIG_BYTES
    started = time.perf_counter()
    with pytest.raises(UserError, match="MAX_DATASET_CONFIG_BYTES"):
        _load(tmp_path, text)
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("nested", ["a = " + "[" * 5000 + "]" * 5000,
                                    "a = " + "{b = " * 3000 + "1" + "}" * 3000])
def test_deeply_nested_toml_is_a_user_error(tmp_path, nested):
    with pytest.raises(UserError, match="nested too deeply"):
        _load(tmp_path, nested + "\n")


def test_dataset_toml_linked_from_outside_is_refused(tmp_path):
    outside = tmp_path / "outside.toml"
    outside.write_text("secret = 'TOP-SECRET'\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.toml").symlink_to(outside)
    with pytest.raises(UserError, match="symbolic link") as error:
        load_dataset_config(data)
    assert "TOP-SECRET" not in str(error.value) and "outside.toml" not in str(error.value)


def test_identifier_in_a_factor_label_is_refused_masked(tmp_path):
    text = AIRQ.replace('label = "Air-quality index"', 'label = "ask jane.doe@example.com"')
    with pytest.raises(UserError, match="looks like it holds an e-mail address") as error:
        _load(tmp_path, text)
    assert "jane.doe" not in str(error.value)
