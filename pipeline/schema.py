"""The v1 input contract: the single source of truth for every table and column.

Validators, the Parquet store's dtypes and ``docs/data-contract.md`` are all generated from the
declarations below; nothing else in the package restates a column's type, range or meaning.

A dataset is a directory of tables. Each table is ``NAME.csv``, ``NAME.csv.gz``, ``NAME.jsonl``
(or ``.ndjson``) or ``NAME.parquet``, or a directory ``NAME/`` of such files (one per export).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Literal

import polars as pl

CONTRACT_VERSION = "1"

Kind = Literal["token", "string", "enum", "int", "float", "bool", "date", "datetime"]

#: A pseudonymous token: 1 to 64 characters from A-Z a-z 0-9 _ -.
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
TOKEN_MAX_CHARS = 64

AGE_BANDS = ("18-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80+")
SEXES = ("F", "M", "X")
MUSCLE_GROUPS = (
    "calf",
    "foot",
    "hamstring",
    "quadriceps",
    "lower_back",
    "upper_back",
    "neck_shoulder",
    "hand_forearm",
    "abdomen",
    "other",
)
NUMBNESS_LEVELS = ("none", "one_leg", "both_legs")

#: Plausible calendar range of every date and date-time column. A value outside it (year 0, a
#: typo like 2205, a placeholder such as 9999-12-31) is quarantined as ``out_of_range``: later
#: stages do calendar arithmetic that such a year breaks, and it is never a real diary day.
MIN_DATE = _dt.date(1900, 1, 1)
#: The latest plausible date is today plus this many days (time zones, a diary filled in early).
MAX_DATE_DAYS_AHEAD = 1


def max_date(today: _dt.date | None = None) -> _dt.date:
    """The latest plausible date (``today + MAX_DATE_DAYS_AHEAD``), evaluated when validating."""
    return (today or _dt.date.today()) + _dt.timedelta(days=MAX_DATE_DAYS_AHEAD)


#: Resource limits: a small hostile input (a gzip bomb, a header of a million commas, a
#: ``dataset.toml`` declaring 100k factors) is refused with a clear message long before memory or
#: time run out. Each is far above anything a real diary export needs.
#: Bytes one ``.csv.gz`` file may decompress to.
MAX_DECOMPRESSED_BYTES = 2 << 30
#: Decompressed / compressed size a ``.csv.gz`` may reach once past ``RATIO_CHECK_FROM_BYTES``
#: (diary CSVs compress 5-20x; a zip bomb compresses about 1000x).
MAX_DECOMPRESSION_RATIO = 200
RATIO_CHECK_FROM_BYTES = 16 << 20
#: Columns one table file may have (the contract has 13 daily columns plus custom factors).
MAX_COLUMNS_PER_FILE = 1000
#: Custom factors one ``dataset.toml`` may declare.
MAX_CUSTOM_FACTORS = 100
#: Size of ``dataset.toml`` itself.
MAX_DATASET_CONFIG_BYTES = 1 << 20
#: Bytes of the header line; a data row longer than this is quarantined as ``malformed_row``.
MAX_LINE_BYTES = 1 << 20

#: Spellings accepted for booleans (compared case-insensitively, surrounding spaces ignored).
TRUE_SPELLINGS = ("1", "true", "yes", "y", "t")
FALSE_SPELLINGS = ("0", "false", "no", "n", "f")

#: The documented contributing factors, in the order patient guidance names them.
FACTORS: dict[str, str] = {
    "fatigue_overuse": "Muscle fatigue or overuse",
    "dehydration": "Dehydration",
    "low_electrolytes": "Low electrolytes",
    "prior_injury": "A prior injury",
    "sitting_posture": "Prolonged sitting and poor posture",
    "stress_sleep": "Stress, with poor sleep",
    "diet": "Diet",
}


@dataclass(frozen=True)
class Column:
    """One input column: its type, constraints, unit and meaning."""

    name: str
    kind: Kind
    description: str
    #: The column must be present in every file of the table.
    required: bool = False
    #: Null (empty) values are allowed. Required columns are never nullable here.
    nullable: bool = True
    minimum: float | None = None
    maximum: float | None = None
    #: Whether the minimum itself is allowed (``duration_min`` must be strictly positive).
    minimum_inclusive: bool = True
    values: tuple[str, ...] = ()
    unit: str | None = None
    #: Key of ``FACTORS`` for daily exposure columns.
    factor: str | None = None
    #: How this column can mislead an analyst.
    caveat: str | None = None
    max_chars: int | None = None

    @property
    def dtype(self) -> pl.DataType:
        return _DTYPES[self.kind]

    def range_text(self) -> str:
        if self.kind in ("date", "datetime"):
            ahead = f"{MAX_DATE_DAYS_AHEAD} day{'s' if MAX_DATE_DAYS_AHEAD != 1 else ''}"
            return f"{MIN_DATE.isoformat()} ≤ date ≤ today + {ahead}"
        if self.minimum is None and self.maximum is None:
            return ""
        low = "" if self.minimum is None else f"{_fmt(self.minimum)}"
        high = "" if self.maximum is None else f"{_fmt(self.maximum)}"
        low_op = "≤" if self.minimum_inclusive else "<"
        if self.minimum is not None and self.maximum is not None:
            return f"{low} {low_op} x ≤ {high}"
        if self.minimum is not None:
            return f"x {'≥' if self.minimum_inclusive else '>'} {low}"
        return f"x ≤ {high}"


@dataclass(frozen=True)
class Table:
    """One input table of a dataset."""

    name: str
    description: str
    required: bool
    columns: tuple[Column, ...]
    #: Columns that identify a row; two rows with the same key and different content conflict.
    key: tuple[str, ...]
    #: Fallback key used for rows whose primary key column is null (episodes without an id).
    fallback_key: tuple[str, ...] = ()
    caveats: tuple[str, ...] = field(default_factory=tuple)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def polars_schema(self) -> dict[str, pl.DataType]:
        """The dtypes of the table as stored (without provenance columns)."""
        return {c.name: c.dtype for c in self.columns}


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_DTYPES: dict[str, pl.DataType] = {
    "token": pl.String(),
    "string": pl.String(),
    "enum": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
    "datetime": pl.Datetime("us"),
}

#: Provenance columns that the store adds to every accepted row.
SOURCE_FILE = "source_file"
SOURCE_LINE = "source_line"
PROVENANCE_SCHEMA: dict[str, pl.DataType] = {SOURCE_FILE: pl.String(), SOURCE_LINE: pl.Int64()}

_SUBJECT_ID = Column(
    "subject_id",
    "token",
    "Pseudonymous subject token (1 to 64 characters from A–Z a–z 0–9 _ -). Never a name, "
    "e-mail, phone or national id number.",
    required=True,
    nullable=False,
    max_chars=TOKEN_MAX_CHARS,
)


def _subject_ref() -> Column:
    return Column(
        "subject_id",
        "token",
        "The subject this row belongs to; must appear in `subjects`.",
        required=True,
        nullable=False,
        max_chars=TOKEN_MAX_CHARS,
    )


def _factor(name, kind, description, factor, unit=None, minimum=None, maximum=None, caveat=None):
    return Column(
        name,
        kind,
        description,
        minimum=minimum,
        maximum=maximum,
        unit=unit,
        factor=factor,
        caveat=caveat,
    )


SUBJECTS = Table(
    name="subjects",
    description="One row per subject.",
    required=True,
    key=("subject_id",),
    columns=(
        _SUBJECT_ID,
        Column("age_band", "enum", "Age band at enrolment.", values=AGE_BANDS),
        Column("sex", "enum", "Sex as recorded by the study (F, M or X).", values=SEXES),
    ),
)

DAILY = Table(
    name="daily",
    description=(
        "One row per subject per logged day. A logged day is a day at risk: a day with no row is "
        "unobserved, not a day without cramps. Factor columns are optional (a study may log only "
        "some factors) and nullable."
    ),
    required=True,
    key=("subject_id", "date"),
    columns=(
        _subject_ref(),
        Column("date", "date", "Calendar date of the diary day (YYYY-MM-DD).", required=True,
               nullable=False),
        _factor("exercise_min", "float", "Minutes of exercise or strenuous physical work.",
                "fatigue_overuse", unit="min", minimum=0, maximum=1440),
        _factor("exercise_rpe", "float", "Perceived exertion of the day's exercise (Borg CR10).",
                "fatigue_overuse", unit="points (0–10)", minimum=0, maximum=10,
                caveat="Self-rated; meaningful only on days with exercise."),
        _factor("fluid_l", "float", "Total fluid intake.", "dehydration", unit="L", minimum=0,
                maximum=20, caveat="Self-estimated; people tend to under-report intake."),
        _factor("heat_c", "float", "The day's highest outdoor temperature.", "dehydration",
                unit="°C", minimum=-60, maximum=60,
                caveat="Outdoor maximum, not the subject's own exposure."),
        _factor("electrolytes", "bool", "Took an electrolyte drink or supplement that day.",
                "low_electrolytes",
                caveat="A proxy for electrolyte intake, not a measured serum level."),
        _factor("sitting_h", "float", "Hours spent sitting.", "sitting_posture", unit="h",
                minimum=0, maximum=24),
        _factor("poor_posture", "bool", "Subject reported poor posture for much of the day.",
                "sitting_posture"),
        _factor("stress", "float", "Self-rated stress.", "stress_sleep", unit="points (0–10)",
                minimum=0, maximum=10),
        _factor("sleep_h", "float", "Hours slept the night before.", "stress_sleep", unit="h",
                minimum=0, maximum=24),
        _factor("caffeine_mg", "float", "Caffeine intake.", "diet", unit="mg", minimum=0,
                maximum=3000, caveat="Usually estimated from drinks (a cup of coffee ≈ 95 mg)."),
        _factor("alcohol_units", "float", "Alcohol intake in UK units (8 g of ethanol).", "diet",
                unit="units", minimum=0, maximum=100),
    ),
)

INJURIES = Table(
    name="injuries",
    description="Optional. One row per muscle injury a subject logged.",
    required=False,
    key=("subject_id", "date", "muscle_group"),
    columns=(
        _subject_ref(),
        Column("date", "date", "Date of the injury (YYYY-MM-DD).", required=True, nullable=False),
        Column("muscle_group", "enum", "Injured muscle group.", required=True, values=MUSCLE_GROUPS),
    ),
)

EPISODES = Table(
    name="episodes",
    description="One row per cramp or spasm episode.",
    required=True,
    key=("episode_id",),
    fallback_key=("subject_id", "started_at", "muscle_group"),
    columns=(
        Column("episode_id", "token", "Optional unique episode id (at most 64 characters).",
               max_chars=TOKEN_MAX_CHARS),
        _subject_ref(),
        Column("started_at", "datetime",
               "Local date-time the episode started (ISO 8601). A UTC offset, if present, is "
               "dropped and the local wall-clock time kept.", required=True, nullable=False),
        Column("duration_min", "float", "How long the episode lasted.", unit="min", minimum=0,
               minimum_inclusive=False, maximum=1440,
               caveat="Often unknown or estimated after the fact."),
        Column("muscle_group", "enum", "Muscle group that cramped.", required=True,
               nullable=False, values=MUSCLE_GROUPS),
        Column("pain", "int", "Pain at its worst (0 none – 10 worst imaginable).",
               unit="points (0–10)", minimum=0, maximum=10),
        Column("pain_uncontrolled", "bool", "Pain could not be relieved by stretching or rest."),
        Column("swelling", "bool", "Noticeable swelling where the cramp was."),
        Column("skin_changes", "bool", "Skin changes in the area of the cramp."),
        Column("sleep_loss", "bool", "Could not sleep because of the cramp."),
        Column("er_visit", "bool", "Went to an emergency department for this episode."),
        Column("numbness", "enum", "Numbness in the legs with the episode.",
               values=NUMBNESS_LEVELS),
    ),
)

TABLES: dict[str, Table] = {t.name: t for t in (SUBJECTS, DAILY, INJURIES, EPISODES)}

#: Daily columns that measure a documented contributing factor.
FACTOR_COLUMNS: dict[str, Column] = {c.name: c for c in DAILY.columns if c.factor is not None}

#: Quarantine reason codes: part of the output contract (``quarantine.csv``).
REASONS: dict[str, str] = {
    "missing_required": "A required value is empty.",
    "type": "The value cannot be read as the column's type.",
    "out_of_range": "The value is outside the column's allowed range (dates and date-times: "
    f"from {MIN_DATE.isoformat()} to today + {MAX_DATE_DAYS_AHEAD} day).",
    "invalid_value": "The value is not one of the column's allowed values.",
    "invalid_token": "The id is not a pseudonymous token (1–64 of A–Z a–z 0–9 _ -).",
    "malformed_row": "The row cannot be parsed (wrong number of fields, invalid JSON).",
    "identifier": "The value looks like a direct identifier (e-mail, phone, national id); "
    "stored masked.",
    "unknown_subject": "The subject_id does not appear in `subjects`.",
    "conflict": "Another row has the same key with different content; both are quarantined.",
}

#: Column names refused outright because they name a direct identifier.
#: Compared after lower-casing and removing everything but letters and digits.
IDENTIFIER_COLUMN_NAMES: tuple[str, ...] = (
    "name", "firstname", "lastname", "surname", "fullname", "givenname", "familyname",
    "patientname", "forename", "middlename", "maidenname",
    "email", "emailaddress", "mail", "emailaddr",
    "phone", "phonenumber", "telephone", "tel", "mobile", "mobilenumber", "cellphone", "cell",
    "address", "streetaddress", "homeaddress", "street", "addressline1", "addressline2",
    "postcode", "postalcode", "zip", "zipcode",
    "dob", "dateofbirth", "birthdate", "birthday", "birthdt",
    "mrn", "medicalrecordnumber", "medicalrecordno", "medicalrecord", "hospitalnumber",
    "nhsnumber", "nhsno", "ssn", "socialsecuritynumber", "nationalid", "nationalidnumber",
    "nationalinsurancenumber", "nino", "passport", "passportnumber", "insurancenumber",
)

#: Stems that only ever name a direct identifier; with a prefix from ``IDENTIFIER_NAME_PREFIXES``
#: and/or a suffix from ``IDENTIFIER_NAME_SUFFIXES`` they are refused too (``phone_no``,
#: ``Mobile No.``, ``emails``, ``NHS num``, ``patient_email``).
IDENTIFIER_COLUMN_STEMS: tuple[str, ...] = (
    "email", "emailaddress", "mail", "phone", "telephone", "tel", "mobile", "cellphone", "nhs",
    "ssn", "socialsecurity", "nino", "nationalinsurance", "nationalid", "passport", "mrn",
    "medicalrecord", "postcode", "postalcode", "zipcode", "address", "dob",
    "dateofbirth", "birthdate", "fullname", "firstname", "lastname", "surname", "forename",
)
IDENTIFIER_NAME_PREFIXES: tuple[str, ...] = (
    "patient", "participant", "subject", "contact", "home", "work", "personal", "primary",
    "mobile", "my", "pt",
)
IDENTIFIER_NAME_SUFFIXES: frozenset[str] = frozenset({
    "", "s", "es", "no", "nos", "num", "nums", "nr", "number", "numbers", "id", "address",
    "addresses", "addr",
})


@dataclass(frozen=True)
class CustomFactor:
    """An extra daily exposure column a dataset declares in ``DATA/dataset.toml``.

    Example (``dataset.toml``)::

        [[custom_factors]]
        column = "airq"               # daily column holding the exposure
        factor = "air_quality"        # factor name used in effects.csv
        label = "Air-quality index"
        kind = "numeric"              # or "boolean"
        unit = "index points"
        scale = 10                    # the IRR is reported per 10 index points
        minimum = 0
        maximum = 500
        max_lag_days = 10             # optional: lags 0..10 in the lag model (default: the
                                      # [analysis] max_lag_days; at most 28)

        # Optional: how every within-subject model is fitted (pipeline/analysis_config.py).
        [analysis]
        max_lag_days = 3              # lags 0..N of every factor (0-28; default 3)
        strata = "subject"            # or "subject_month" (the time-stratified design)
        adjust = ["day_of_week", "days_in_study"]   # either, both or none (the default)
    """

    column: str
    factor: str
    label: str
    kind: Literal["numeric", "boolean"]
    unit: str | None = None
    scale: float = 1.0
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""
    max_lag_days: int | None = None

    def as_column(self) -> Column:
        """The validator's view of the custom column (stored in ``daily`` like a core factor)."""
        return Column(
            self.column,
            "bool" if self.kind == "boolean" else "float",
            self.description or self.label,
            minimum=self.minimum,
            maximum=self.maximum,
            unit=self.unit,
            factor=self.factor,
        )
