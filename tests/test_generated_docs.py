"""Generated documents are never stale: the schema and the feature dictionary are the sources."""

import pytest

from pipeline.generated_docs import GENERATED_DOCS
from tests.conftest import PROJECT_ROOT


@pytest.mark.parametrize("relative", sorted(GENERATED_DOCS, key=str), ids=str)
def test_generated_document_matches_its_source(relative):
    committed = (PROJECT_ROOT / relative).read_text(encoding="utf-8")
    assert committed == GENERATED_DOCS[relative](), f"{relative} is stale: run `make docs`"


def test_data_contract_lists_every_column_and_reason():
    from pipeline import schema
    from pipeline.contract_doc import render_data_contract

    text = render_data_contract()
    for table in schema.TABLES.values():
        assert f"## `{table.name}`" in text
        for column in table.columns:
            assert f"| `{column.name}` |" in text
    for reason in schema.REASONS:
        assert f"| `{reason}` |" in text
