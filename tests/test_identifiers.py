"""The identifier detector: catches formatted direct identifiers, never pseudonymous ids or numbers."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.ingest.identifiers import (
    identifier_label,
    is_identifier_column_name,
    looks_like_identifier,
    mask_identifiers,
)


def _detect(values: list[str]) -> list[bool]:
    return pl.select(looks_like_identifier(pl.Series(values, dtype=pl.String))).to_series().to_list()


def _mask(value: str) -> str:
    return pl.select(mask_identifiers(pl.lit(value))).item()


IDENTIFIERS = {
    # value: expected mask
    "jane.doe@example.com": "j***@***.com",
    "J.Smith+study@nhs.net": "J***@***.net",
    "contact: j@x.co.uk please": "contact: j***@***.uk please",
    "123-45-6789": "***-**-6789",
    "AB123456C": "*********",
    "ab 12 34 56 c": "*********",
    "943 476 5919": "*** *** ****",
    "943-476-5919": "*** *** ****",
    "555-123-4567": "*** *** ****",
    "555.123.4567": "*** *** ****",
    "(555) 123-4567": "(***) ***-****",
    "(020) 7946 0958": "(***) ***-****",
    "+44 20 7946 0958": "+** *** *** ****",
    "+1 (555) 123-4567": "+** *** *** ****",
    "+447946095800": "+** *** *** ****",
    "07700 900123": "0**** ******",
    "020 7946 0958": "0**** ******",
    "0161 496 0000": "0**** ******",
}

PSEUDONYMS_AND_ORDINARY_VALUES = [
    "P0012345", "E070000002", "S-000123", "S00001", "SUBJ123456A", "subject_42", "S-000123-01",
    "AB-123456-C", "12345", "3.14", "-12.5", "1e5", "0.5", "1700000000", "1,234,567",
    "2025-01-01", "2025-01-01T10:00", "2025-01-01T10:00Z", "2025-01-01T10:00:00+02:00",
    "2025-01-01 10:00:00-05:00", "2025-01-01 10:00:00.123456", "12/05/2025", "10:30",
    "18-29", "80+", "lower_back", "both_legs", "v1.2.3", "true", "", "x-01-2025",
]


@pytest.mark.parametrize("value,masked", IDENTIFIERS.items())
def test_identifiers_are_detected_and_masked(value, masked):
    assert _detect([value]) == [True]
    assert _mask(value) == masked
    assert _detect([_mask(value)]) == [False]


def test_pseudonymous_ids_numbers_and_dates_are_not_identifiers():
    assert _detect(PSEUDONYMS_AND_ORDINARY_VALUES) == [False] * len(PSEUDONYMS_AND_ORDINARY_VALUES)
    masked = pl.select(mask_identifiers(pl.Series(PSEUDONYMS_AND_ORDINARY_VALUES))).to_series()
    assert masked.to_list() == PSEUDONYMS_AND_ORDINARY_VALUES


def test_labels_name_the_kind_of_identifier():
    labels = pl.select(identifier_label(pl.Series(
        ["a@b.org", "123-45-6789", "AB123456C", "07700 900123", "S1"]))).to_series().to_list()
    assert labels == ["an e-mail address", "a national id number (US SSN)",
                      "a national id number (UK National Insurance)", "a phone number", None]


@pytest.mark.parametrize("name", ["Email", "E-mail", "email_address", "Phone Number", "tel",
                                  "DOB", "date_of_birth", "NHS No", "nhs_number", "Post Code",
                                  "ZIP", "First Name", "surname", "MRN", "Address Line 1",
                                  "national_insurance_number", "SSN"])
def test_identifier_column_names(name):
    assert is_identifier_column_name(name)


@pytest.mark.parametrize("name", ["subject_id", "episode_id", "date", "sleep_h", "notes",
                                  "age_band", "sex", "site", "telemetry", "emailed"])
def test_ordinary_column_names(name):
    assert not is_identifier_column_name(name)


@settings(deadline=None)
@given(st.from_regex(r"[A-Z]{1,3}-?[0-9]{4,9}", fullmatch=True))
def test_no_false_positives_on_generated_pseudonymous_ids(value):
    assert _detect([value]) == [False]


@settings(deadline=None)
@given(st.text(max_size=60))
def test_masking_never_leaves_anything_identifier_shaped(text):
    masked = _mask(text)
    assert _detect([masked]) == [False]
    if not _detect([text])[0]:
        assert masked == text
