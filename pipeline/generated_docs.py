"""Documents generated from code, and the functions that render them (``cramp docs``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def _feature_dictionary() -> str:
    from pipeline.features.dictionary import render_feature_dictionary

    return render_feature_dictionary()


def _data_contract() -> str:
    from pipeline.contract_doc import render_data_contract

    return render_data_contract()


def _outputs() -> str:
    from pipeline.outputs import render_outputs_doc

    return render_outputs_doc()


GENERATED_DOCS: dict[Path, Callable[[], str]] = {
    Path("docs/data-contract.md"): _data_contract,
    Path("docs/feature-dictionary.md"): _feature_dictionary,
    Path("docs/outputs.md"): _outputs,
}
