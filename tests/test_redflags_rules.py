"""The rule file: shipped rules quote the guidance verbatim; custom files are used or refused."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import polars as pl
import pytest

from pipeline.errors import UserError
from pipeline.redflags import evaluate, load_rules
from tests.test_redflags_tables import episodes

GUIDANCE = (
    "substantial or uncontrollable pain, numbness in one or both legs, noticeable swelling in the "
    "location of the cramp, skin changes in the area, or the inability to sleep due to cramping"
)
SHIPPED_TEXT = resources.files("pipeline.redflags").joinpath("rules.toml").read_text("utf-8")


# --- the shipped file -----------------------------------------------------------------------------

def test_shipped_rules_have_exactly_the_agreed_ids_and_severities():
    rules = load_rules()
    assert {r.id: r.severity for r in rules} == {
        "severe_pain": "red_flag",
        "numbness": "red_flag",
        "swelling": "red_flag",
        "skin_changes": "red_flag",
        "sleep_loss": "red_flag",
        "prolonged": "advisory",
        "emergency_visit": "advisory",
        "frequent": "advisory",
    }


def test_shipped_file_quotes_the_guidance_sentence_verbatim():
    rules = load_rules()
    assert rules.guidance_text == GUIDANCE
    # The header comment carries the full sentence too (wrapped over comment lines).
    header = " ".join(
        ln.lstrip("#").strip() for ln in SHIPPED_TEXT.splitlines() if ln.startswith("#")
    )
    assert f'"{GUIDANCE}"' in re.sub(r"\s+", " ", header)
    quotes = {r.id: r.source for r in rules if r.source_kind == "guidance_quote"}
    assert quotes == {
        "severe_pain": "substantial or uncontrollable pain",
        "numbness": "numbness in one or both legs",
        "swelling": "noticeable swelling in the location of the cramp",
        "skin_changes": "skin changes in the area",
        "sleep_loss": "the inability to sleep due to cramping",
    }
    assert all(q in GUIDANCE for q in quotes.values())


def test_advisories_say_their_rationale_is_not_a_quote():
    for rule in load_rules():
        if rule.severity == "advisory":
            assert rule.source_kind == "toolkit_rationale"
            assert "not a quote from the guidance" in rule.source
            assert rule.source_label.startswith("Toolkit rationale (not a quote")


def test_shipped_thresholds_are_named_documented_parameters():
    rules = load_rules()
    assert rules.rule("severe_pain").parameter("pain_threshold") == 7
    assert rules.rule("prolonged").parameter("duration_threshold_min") == 15
    assert rules.rule("frequent").parameter("min_episodes_per_week") == 3
    assert rules.rule("frequent").parameter("consecutive_weeks") == 4
    assert all(p.description for r in rules for p in r.parameters)


def test_rules_table_for_reports_shows_resolved_conditions():
    frame = load_rules().to_frame()
    row = frame.filter(pl.col("rule_id") == "severe_pain").to_dicts()[0]
    assert row["condition"] == "pain >= (7) OR pain_uncontrolled"
    assert row["parameters"] == "pain_threshold=7"
    assert row["source"] == 'Guidance (verbatim): "substantial or uncontrollable pain"'


# --- custom files ---------------------------------------------------------------------------------

HEADER = f'''
[guidance]
citation = "test guidance"
text = "{GUIDANCE}"
'''

CALF_RULE = '''
[[rule]]
id = "calf_pain"
title = "Painful calf cramp"
severity = "red_flag"
source = "substantial or uncontrollable pain"
condition = ["muscle_group = 'calf' AND pain >= {threshold}"]
columns = ["muscle_group", "pain"]
parameters.threshold = { value = 5, description = "Pain score from which a calf cramp counts." }
'''


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "my_rules.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_custom_rule_file_replaces_the_defaults_and_is_used(tmp_path):
    rules = load_rules(write(tmp_path, HEADER + CALF_RULE))
    assert rules.ids == ("calf_pain",)
    given = episodes("""
        | episode_id | subject_id | started_at       | muscle_group | pain |
        |------------|------------|------------------|--------------|------|
        | e1         | S1         | 2024-01-01 08:00 | calf         | 4    |
        | e2         | S1         | 2024-01-02 08:00 | calf         | 5    |
        | e3         | S1         | 2024-01-03 08:00 | foot         | 9    |
        | e4         | S1         | 2024-01-04 08:00 | calf         |      |
    """)
    result = evaluate(given, rules)
    assert result.flags.select("episode_id", "rule_id", "evidence").to_dicts() == [
        {"episode_id": "e2", "rule_id": "calf_pain", "evidence": "muscle_group=calf; pain=5"},
    ]
    assert result.not_recorded["n_not_recorded"].to_list() == [1]
    assert result.subject_flags.columns[-1] == "n_calf_pain"


def test_custom_frequency_rule_with_its_own_thresholds(tmp_path):
    text = HEADER + '''
[[rule]]
id = "weekly"
title = "Weekly cramps"
severity = "advisory"
kind = "frequency"
source_kind = "toolkit_rationale"
source = "Local protocol (not a quote from the guidance)."
parameters.min_episodes_per_week = { value = 1, description = "per week" }
parameters.consecutive_weeks = { value = 2, description = "weeks" }
'''
    rules = load_rules(write(tmp_path, text))
    given = episodes("""
        | episode_id | subject_id | started_at       |
        |------------|------------|------------------|
        | e1         | S1         | 2024-01-01 08:00 |
        | e2         | S1         | 2024-01-08 08:00 |
    """)
    assert evaluate(given, rules).flags["episode_id"].to_list() == ["e1"]


def test_negative_parameter_is_substituted_safely(tmp_path):
    # "duration_min - -1" would start a SQL comment; parameters are parenthesised.
    text = HEADER + '''
[[rule]]
id = "odd"
title = "Odd arithmetic"
severity = "advisory"
source_kind = "toolkit_rationale"
source = "test"
condition = ["duration_min - {offset} > 10"]
columns = ["duration_min"]
parameters.offset = { value = -1.5, description = "minutes" }
'''
    rule = load_rules(write(tmp_path, text)).rule("odd")
    assert rule.resolved_condition() == ("duration_min - (-1.5) > 10",)


def _calf(**replace: str) -> str:
    text = CALF_RULE
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


INVALID = {
    "unknown column": (
        _calf(**{"AND pain >=": "AND pain_score >="}),
        "unknown column(s) pain_score",
    ),
    "unknown column in columns": (
        _calf(**{'"muscle_group", "pain"]': '"muscle_group", "pain", "mood"]'}),
        "unknown column(s) mood in `columns`",
    ),
    "columns do not match the condition": (
        _calf(**{'"muscle_group", "pain"]': '"pain"]'}),
        "must list exactly the columns the condition reads",
    ),
    "bad expression": (
        _calf(**{"AND pain >= {threshold}": "AND pain >= {threshold} ))"}),
        "bad expression",
    ),
    "python is never evaluated": (
        _calf(**{"muscle_group = 'calf' AND pain >= {threshold}":
                 "__import__('os').system('echo hi') or pain >= {threshold}"}),
        "bad expression",
    ),
    "not true/false": (
        _calf(**{"muscle_group = 'calf' AND pain >= {threshold}":
                 "pain + {threshold} + length(muscle_group)"}),
        "must be true/false",
    ),
    "duplicate id": (CALF_RULE + CALF_RULE, "duplicate id"),
    "missing source quote": (
        _calf(**{'source = "substantial or uncontrollable pain"\n': ""}),
        "missing source quote",
    ),
    "source not verbatim": (
        _calf(**{"substantial or uncontrollable pain": "severe pain"}),
        "not a verbatim fragment",
    ),
    "bad severity": (_calf(**{'severity = "red_flag"': 'severity = "urgent"'}), "severity must be"),
    "unknown parameter": (
        _calf(**{"pain >= {threshold}": "pain >= {pain_threshold}"}),
        "unknown parameter {pain_threshold}",
    ),
    "unused parameter": (
        _calf(**{"AND pain >= {threshold}": "AND pain >= 5"}),
        "declared but not used",
    ),
    "parameter not a number": (
        _calf(**{"value = 5,": 'value = "5; DROP",'}),
        "parameter threshold must be a number",
    ),
    "parameter true/false": (
        _calf(**{"value = 5,": "value = true,"}),
        "parameter threshold must be a number",
    ),
    "parameter undocumented": (
        _calf(**{', description = "Pain score from which a calf cramp counts."': ""}),
        "needs a `description`",
    ),
    "unknown key": (_calf(**{"title =": "titel = 'x'\ntitle ="}), "unknown key(s) titel"),
    "frequency parameter unknown": (
        '''
[[rule]]
id = "calf_pain"
title = "x"
severity = "advisory"
kind = "frequency"
source_kind = "toolkit_rationale"
source = "x"
parameters.min_episodes_per_week = { value = 3, description = "d" }
parameters.consecutive_weeks = { value = 4, description = "d" }
parameters.window_days = { value = 10, description = "d" }
''',
        "unknown parameter(s) window_days",
    ),
    "frequency parameter not whole": (
        '''
[[rule]]
id = "calf_pain"
title = "x"
severity = "advisory"
kind = "frequency"
source_kind = "toolkit_rationale"
source = "x"
parameters.min_episodes_per_week = { value = 2.5, description = "d" }
parameters.consecutive_weeks = { value = 4, description = "d" }
''',
        "whole number of at least 1",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_rule_is_refused_naming_file_rule_and_problem(tmp_path, case):
    body, problem = INVALID[case]
    path = write(tmp_path, HEADER + body)
    with pytest.raises(UserError) as err:
        load_rules(path)
    message = str(err.value)
    assert str(path) in message
    assert "rule 'calf_pain'" in message
    assert problem in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[rule]\nid = 1", "not valid TOML"),
        (HEADER, "no rules"),
        (HEADER + "[extra]\nx = 1\n" + CALF_RULE, "unknown top-level key(s) extra"),
        (CALF_RULE, "no [guidance] text to quote from"),
        (HEADER + CALF_RULE.replace('id = "calf_pain"', 'id = "Calf Pain"'), "lower-case name"),
    ],
)
def test_invalid_file_is_refused_naming_the_file(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=re.escape(problem)) as err:
        load_rules(path)
    assert str(path) in str(err.value)


def test_missing_rule_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="rule file not found"):
        load_rules(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "condition", ["pain > avg(pain)", "count(pain) > 1", "pain > lag(pain) OVER (ORDER BY pain)"]
)
def test_condition_must_depend_on_the_episode_alone(tmp_path, condition):
    text = HEADER + _calf(**{"muscle_group = 'calf' AND pain >= {threshold}":
                             f"muscle_group = 'calf' AND {condition} AND pain >= {{threshold}}"})
    with pytest.raises(UserError, match="rule 'calf_pain': .* on each episode alone"):
        load_rules(write(tmp_path, text))
