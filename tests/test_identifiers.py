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


# --- issue 8: identifier leaks ----------------------------------------------------------------

from pipeline.errors import UserError  # noqa: E402
from pipeline.ingest.identifiers import (  # noqa: E402
    looks_like_numeric_identifier,
    mask_path,
    mask_text,
)

# A token that is only digits, by length and check digit (issue 8, item 2).
NUMERIC_TOKENS = """
| token          | identifier | why                                        |
| 07700900123    | yes        | UK mobile, 11 digits                       |
| +447700900123  | yes        | E.164 with +                               |
| 447700900123   | yes        | E.164 without +, 12 digits                 |
| 9434765919     | yes        | NHS number, modulus-11 check digit valid   |
| 9434765918     | no         | 10 digits, check digit wrong: ordinary id  |
| 0123456789     | yes        | 10 digits starting 0: UK phone             |
| 123456789      | yes        | 9 digits: US SSN shape                     |
| 12345678       | no         | short numeric id                           |
| 12345          | no         | short numeric id                           |
| 1700000000     | no         | 10 digits, fails the check                 |
| P0012345       | no         | letters: pseudonymous                      |
| E070000002     | no         | letters: pseudonymous                      |
| 1234567890123456 | no       | 16 digits: longer than any phone number    |
"""


def _spec(text: str) -> list[dict[str, str]]:
    from tests.fixtures.ingest.helpers import spec_table

    return spec_table(text)


@pytest.mark.parametrize("row", _spec(NUMERIC_TOKENS), ids=lambda r: r["token"])
def test_digit_only_tokens_of_phone_nhs_ssn_length(row):
    found = pl.select(looks_like_numeric_identifier(pl.lit(row["token"]))).item()
    assert found == (row["identifier"] == "yes"), row["why"]


@pytest.mark.parametrize("value,masked", {
    "иван.петров@почта.рф": "и***@***.рф",
    "jane@exämple.de": "j***@***.de",
    "jane.roe@localhost": "j***@***",
    "see josé@nhs please": "see j***@*** please",
}.items())
def test_non_ascii_and_tld_less_emails_are_masked(value, masked):
    assert _detect([value]) == [True]
    assert _mask(value) == masked
    assert mask_text(value) == masked  # the pure-Python twin agrees


@pytest.mark.parametrize("value", list(IDENTIFIERS) + PSEUDONYMS_AND_ORDINARY_VALUES)
def test_python_and_polars_masks_agree(value):
    assert mask_text(value) == _mask(value)


@pytest.mark.parametrize("path,masked", [
    ("daily/jane.doe@example.com.csv", "daily/j***@***.com.csv"),
    ("jane@example.org.csv.gz", "j***@***.org.csv.gz"),
    ("daily/2025-01.csv", "daily/2025-01.csv"),
    ("call 07700 900123/x.jsonl", "call 0**** ******/x.jsonl"),
])
def test_file_names_are_masked_part_by_part_keeping_the_suffix(path, masked):
    assert mask_path(path) == masked


def test_user_error_messages_are_masked():
    error = UserError("column 'jane.doe@example.com' appears twice", path="daily/bob@x.org.csv")
    assert "jane" not in str(error) and "bob" not in str(error)
    assert str(error) == "daily/b***@***.csv: column 'j***@***.com' appears twice"


@pytest.mark.parametrize("name", ["phone_no", "Mobile No.", "emails", "NHS num", "patient_email",
                                  "\u0415mail", "ｅｍａｉｌ", "e\u200bmail", "Ph\u043ene",
                                  "ＮＨＳ Ｎｏ", "contact_phone_number", "home_address",
                                  "E-Mail-Addresses"])
def test_disguised_and_variant_identifier_column_names(name):
    assert is_identifier_column_name(name)


@pytest.mark.parametrize("name", ["subject_id", "patient_id", "hospital_site", "mobile_use_h",
                                  "phone_use_min", "emailed", "telemetry", "notes_no"])
def test_variant_matching_keeps_ordinary_names(name):
    assert not is_identifier_column_name(name)
