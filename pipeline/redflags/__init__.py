"""Red-flag rules: the signs in an episode diary that mean "call your doctor".

Rules are data (``rules.toml``, or a user's file with the same layout); ``evaluate`` checks every
episode against them and ``write_flag_outputs`` writes ``red_flags.csv``, ``subject_flags.csv``
and ``red_flags_not_recorded.csv``.

>>> from pipeline.redflags import load_rules
>>> [r.id for r in load_rules() if r.severity == "red_flag"]
['severe_pain', 'numbness', 'swelling', 'skin_changes', 'sleep_loss']
"""

from pipeline.redflags.evaluate import (
    FLAG_SCHEMA,
    NOT_RECORDED_SCHEMA,
    SUBJECT_FLAG_SCHEMA,
    RedFlagResult,
    evaluate,
)
from pipeline.redflags.outputs import (
    NOT_RECORDED_CSV,
    RED_FLAGS_CSV,
    SUBJECT_FLAGS_CSV,
    write_flag_outputs,
)
from pipeline.redflags.rules import Parameter, Rule, RuleSet, load_rules

__all__ = [
    "FLAG_SCHEMA",
    "NOT_RECORDED_CSV",
    "NOT_RECORDED_SCHEMA",
    "RED_FLAGS_CSV",
    "SUBJECT_FLAGS_CSV",
    "SUBJECT_FLAG_SCHEMA",
    "Parameter",
    "RedFlagResult",
    "Rule",
    "RuleSet",
    "evaluate",
    "load_rules",
    "write_flag_outputs",
]
