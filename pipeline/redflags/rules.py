"""Red-flag rules as data: load and validate a rule file (``rules.toml`` layout).

The shipped ``rules.toml`` implements the patient guidance on when to call a doctor; a user's file
(``cramp run --rules FILE``) replaces it. Conditions are polars SQL expressions parsed with
``pl.sql_expr`` (never Python ``eval``) after their ``{parameter}`` placeholders are replaced by
validated numbers. Everything that can be checked without data is checked here, so a bad file is
refused before any work with one ``UserError`` naming the file, the rule and the problem.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import polars as pl

from pipeline import schema
from pipeline.errors import UserError

Severity = Literal["red_flag", "advisory"]
SourceKind = Literal["guidance_quote", "toolkit_rationale"]
RuleKind = Literal["episode", "frequency"]

#: Highest first: the order used for "highest severity".
SEVERITIES: tuple[str, ...] = ("red_flag", "advisory")
SOURCE_KINDS: tuple[str, ...] = ("guidance_quote", "toolkit_rationale")
RULE_KINDS: tuple[str, ...] = ("episode", "frequency")

#: Parameters of a ``frequency`` rule: both whole numbers of at least 1.
FREQUENCY_PARAMETERS: tuple[str, ...] = ("min_episodes_per_week", "consecutive_weeks")

#: Episode columns a condition may read: the contract's episode columns.
RULE_COLUMNS: dict[str, pl.DataType] = schema.EPISODES.polars_schema()

DEFAULT_RULES_FILE = "rules.toml"

_RULE_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PARAMETER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TOP_KEYS = {"guidance", "rule"}
_GUIDANCE_KEYS = {"citation", "text"}
_RULE_KEYS = {
    "id", "title", "severity", "source", "source_kind", "kind", "condition", "columns",
    "parameters", "description",
}
_PARAMETER_KEYS = {"value", "description"}


@dataclass(frozen=True)
class Parameter:
    """A named, documented threshold of a rule."""

    name: str
    value: int | float
    description: str


@dataclass(frozen=True)
class Rule:
    """One validated rule."""

    id: str
    title: str
    severity: Severity
    #: Verbatim fragment of the guidance, or the toolkit's rationale (see ``source_kind``).
    source: str
    source_kind: SourceKind
    kind: RuleKind
    #: Condition clauses as written, with ``{parameter}`` placeholders; the rule fires when any is
    #: true. Empty for ``frequency`` rules.
    condition: tuple[str, ...]
    #: Episode columns the condition reads, as declared (and checked against the condition).
    columns: tuple[str, ...]
    parameters: tuple[Parameter, ...] = ()
    description: str = ""

    def parameter(self, name: str) -> int | float:
        for p in self.parameters:
            if p.name == name:
                return p.value
        raise KeyError(f"rule {self.id!r} has no parameter {name!r}")

    def resolved_condition(self) -> tuple[str, ...]:
        """The condition clauses with each parameter replaced by its number."""
        values = {p.name: p.value for p in self.parameters}
        return tuple(_substitute(clause, values) for clause in self.condition)

    def clause_exprs(self) -> tuple[pl.Expr, ...]:
        """One boolean expression per condition clause (null where a value it needs is null)."""
        return tuple(pl.sql_expr(c) for c in self.resolved_condition())

    def clause_columns(self) -> tuple[tuple[str, ...], ...]:
        """The columns each clause reads, in the declared column order."""
        out = []
        for e in self.clause_exprs():
            roots = set(e.meta.root_names())
            out.append(tuple(c for c in self.columns if c in roots))
        return tuple(out)

    @property
    def source_label(self) -> str:
        if self.source_kind == "guidance_quote":
            return f'Guidance (verbatim): "{self.source}"'
        return f"Toolkit rationale (not a quote from the guidance): {self.source}"


@dataclass(frozen=True)
class RuleSet:
    """The rules of one file, in file order, with the guidance they quote."""

    rules: tuple[Rule, ...]
    #: The file the rules came from (``None``: the shipped defaults).
    path: Path | None
    guidance_citation: str = ""
    guidance_text: str = ""

    def __iter__(self):
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(f"no rule {rule_id!r}")

    def to_frame(self) -> pl.DataFrame:
        """The rules as a table for reports: what each checks, its thresholds and its source."""
        return pl.DataFrame(
            {
                "rule_id": [r.id for r in self.rules],
                "title": [r.title for r in self.rules],
                "severity": [r.severity for r in self.rules],
                "kind": [r.kind for r in self.rules],
                "condition": [" OR ".join(r.resolved_condition()) for r in self.rules],
                "parameters": [
                    "; ".join(f"{p.name}={p.value}" for p in r.parameters) for r in self.rules
                ],
                "source": [r.source_label for r in self.rules],
            },
            schema={k: pl.String() for k in
                    ("rule_id", "title", "severity", "kind", "condition", "parameters", "source")},
        )


def load_rules(path: Path | None = None) -> RuleSet:
    """Read and validate a rule file; ``None`` reads the shipped ``rules.toml``.

    Raises ``UserError`` naming the file, the rule and the problem for anything invalid.

    >>> rules = load_rules()
    >>> rules.ids[:2]
    ('severe_pain', 'numbness')
    >>> rules.rule("severe_pain").resolved_condition()
    ('pain >= (7)', 'pain_uncontrolled')
    """
    if path is None:
        ref = resources.files("pipeline.redflags").joinpath(DEFAULT_RULES_FILE)
        text = ref.read_text(encoding="utf-8")
        where = f"shipped {DEFAULT_RULES_FILE}"
    else:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError("rule file not found", path=str(path)) from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read the rule file: {e}", path=str(path)) from None
        where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"not valid TOML: {e}", path=where) from None
    return _parse(data, where, path)


def _parse(data: dict, where: str, path: Path | None) -> RuleSet:
    def fail(message: str) -> UserError:
        return UserError(message, path=where)

    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise fail(f"unknown top-level key(s) {', '.join(unknown)}; expected [guidance] and "
                   "[[rule]] tables")
    guidance = data.get("guidance", {})
    if not isinstance(guidance, dict):
        raise fail("[guidance] must be a table with `citation` and `text`")
    bad = sorted(set(guidance) - _GUIDANCE_KEYS)
    if bad:
        raise fail(f"[guidance]: unknown key(s) {', '.join(bad)}; expected citation, text")
    citation = guidance.get("citation", "")
    text = guidance.get("text", "")
    if not isinstance(citation, str) or not isinstance(text, str):
        raise fail("[guidance]: `citation` and `text` must be strings")

    raw_rules = data.get("rule")
    if not raw_rules:
        raise fail("no rules: add at least one [[rule]] table")
    if not isinstance(raw_rules, list):
        raise fail("rules must be written as [[rule]] tables")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_rules, start=1):
        rule = _parse_rule(raw, i, text, fail)
        if rule.id in seen:
            raise fail(f"rule {rule.id!r}: duplicate id (rule number {i}); ids must be unique")
        seen.add(rule.id)
        rules.append(rule)
    return RuleSet(tuple(rules), path, guidance_citation=citation, guidance_text=text)


def _parse_rule(raw: object, number: int, guidance_text: str, fail) -> Rule:
    if not isinstance(raw, dict):
        raise fail(f"rule number {number} is not a table")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _RULE_ID.match(rule_id):
        raise fail(f"rule number {number}: `id` must be a lower-case name (a-z, 0-9, _), "
                   f"got {rule_id!r}")

    def rfail(problem: str) -> UserError:
        return fail(f"rule {rule_id!r}: {problem}")

    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise rfail(f"unknown key(s) {', '.join(unknown)}; expected "
                    f"{', '.join(sorted(_RULE_KEYS))}")
    title = raw.get("title")
    if not isinstance(title, str) or not title.strip():
        raise rfail("missing `title`")
    severity = raw.get("severity")
    if severity not in SEVERITIES:
        raise rfail(f"severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    source_kind = raw.get("source_kind", "guidance_quote")
    if source_kind not in SOURCE_KINDS:
        raise rfail(f"source_kind must be one of {', '.join(SOURCE_KINDS)}, got {source_kind!r}")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise rfail("missing source quote: `source` must quote the guidance sentence the rule "
                    "implements (or give a toolkit rationale with "
                    "source_kind = \"toolkit_rationale\")")
    if source_kind == "guidance_quote":
        if not guidance_text:
            raise rfail("`source` is a guidance quote but the file has no [guidance] text to "
                        "quote from")
        if source not in guidance_text:
            raise rfail(f"`source` {source!r} is not a verbatim fragment of the [guidance] text")
    kind = raw.get("kind", "episode")
    if kind not in RULE_KINDS:
        raise rfail(f"kind must be one of {', '.join(RULE_KINDS)}, got {kind!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise rfail("`description` must be a string")
    parameters = _parse_parameters(raw.get("parameters", {}), rfail)

    if kind == "frequency":
        for key in ("condition", "columns"):
            if key in raw:
                raise rfail(f"a frequency rule has no `{key}`: it counts every episode of the "
                            "subject by date")
        names = {p.name for p in parameters}
        extra = sorted(names - set(FREQUENCY_PARAMETERS))
        if extra:
            raise rfail(f"unknown parameter(s) {', '.join(extra)}; a frequency rule takes "
                        f"{', '.join(FREQUENCY_PARAMETERS)}")
        missing = [n for n in FREQUENCY_PARAMETERS if n not in names]
        if missing:
            raise rfail(f"missing parameter(s) {', '.join(missing)}")
        for p in parameters:
            if not isinstance(p.value, int) or p.value < 1:
                raise rfail(f"parameter {p.name} must be a whole number of at least 1, "
                            f"got {p.value!r}")
        return Rule(rule_id, title, severity, source, source_kind, kind, (), (), parameters,
                    description)

    condition = raw.get("condition")
    if isinstance(condition, str):
        condition = [condition]
    if (not isinstance(condition, list) or not condition
            or not all(isinstance(c, str) and c.strip() for c in condition)):
        raise rfail("`condition` must be a non-empty list of SQL expressions (strings)")
    columns = raw.get("columns")
    if (not isinstance(columns, list) or not columns
            or not all(isinstance(c, str) for c in columns)):
        raise rfail("`columns` must list the episode columns the condition reads")
    unknown_cols = [c for c in columns if c not in RULE_COLUMNS]
    if unknown_cols:
        raise rfail(f"unknown column(s) {', '.join(unknown_cols)} in `columns`; episode columns "
                    f"are {', '.join(RULE_COLUMNS)}")
    if len(set(columns)) != len(columns):
        raise rfail("`columns` lists a column twice")

    declared = {p.name: p.value for p in parameters}
    used: set[str] = set()
    resolved = []
    for clause in condition:
        for name in _PLACEHOLDER.findall(clause):
            if name not in declared:
                raise rfail(f"unknown parameter {{{name}}} in condition {clause!r}; declared: "
                            f"{', '.join(declared) or 'none'}")
            used.add(name)
        resolved.append(_substitute(clause, declared))
    unused = [n for n in declared if n not in used]
    if unused:
        raise rfail(f"parameter(s) {', '.join(unused)} declared but not used in the condition")

    read: set[str] = set()
    for clause, text in zip(condition, resolved):
        roots = _check_clause(text, clause, rfail)
        read |= roots
    not_in_schema = sorted(read - set(RULE_COLUMNS))
    if not_in_schema:
        raise rfail(f"unknown column(s) {', '.join(not_in_schema)} in the condition; episode "
                    f"columns are {', '.join(RULE_COLUMNS)}")
    if read != set(columns):
        raise rfail(f"`columns` {sorted(columns)} must list exactly the columns the condition "
                    f"reads {sorted(read)} (they decide when a value is 'not recorded')")
    return Rule(rule_id, title, severity, source, source_kind, kind, tuple(condition),
                tuple(columns), parameters, description)


def _parse_parameters(raw: object, rfail) -> tuple[Parameter, ...]:
    if not isinstance(raw, dict):
        raise rfail("`parameters` must be a table of name = {value = ..., description = ...}")
    out = []
    for name, spec in raw.items():
        if not _PARAMETER_NAME.match(name):
            raise rfail(f"parameter name {name!r} must be lower-case (a-z, 0-9, _)")
        if not isinstance(spec, dict):
            raise rfail(f"parameter {name} must be {{value = <number>, description = \"...\"}}")
        bad = sorted(set(spec) - _PARAMETER_KEYS)
        if bad:
            raise rfail(f"parameter {name}: unknown key(s) {', '.join(bad)}")
        value = spec.get("value")
        # bool is an int in Python; a threshold is never true/false.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise rfail(f"parameter {name} must be a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise rfail(f"parameter {name} must be a finite number, got {value!r}")
        description = spec.get("description")
        if not isinstance(description, str) or not description.strip():
            raise rfail(f"parameter {name} needs a `description` saying what it means")
        out.append(Parameter(name, value, description))
    return tuple(out)


def _substitute(clause: str, values: dict[str, int | float]) -> str:
    # Parenthesised so that a negative number can never form a SQL comment ("x - -1") or bind
    # differently from what the author wrote.
    return _PLACEHOLDER.sub(lambda m: f"({_number_text(values[m.group(1)])})", clause)


def _number_text(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _check_clause(text: str, written: str, rfail) -> set[str]:
    """Parse one clause and check it is a boolean expression over episode columns."""
    try:
        expr = pl.sql_expr(text)
        roots = set(expr.meta.root_names())
    except Exception as e:  # polars raises several SQL error types
        raise rfail(f"bad expression {written!r}: {_first_line(e)}") from None
    unknown = sorted(roots - set(RULE_COLUMNS))
    if unknown:
        raise rfail(f"unknown column(s) {', '.join(unknown)} in condition {written!r}; episode "
                    f"columns are {', '.join(RULE_COLUMNS)}")
    if not roots:
        raise rfail(f"condition {written!r} reads no episode column")
    # Evaluate on varied probe episodes to catch type errors before any data is read, and check
    # that each episode's answer depends on that episode alone (no avg(), count(), lag() ...):
    # the same expression evaluated one row at a time (over a row index) must agree.
    try:
        together = _PROBE.lazy().select(expr.alias("fires")).collect()
    except Exception as e:
        raise rfail(f"bad expression {written!r}: {_first_line(e)}") from None
    if together.schema["fires"] != pl.Boolean():
        raise rfail(f"condition {written!r} must be true/false, but gives "
                    f"{together.schema['fires']}")
    try:
        alone = (
            _PROBE.lazy().with_row_index("__episode")
            .select(expr.over("__episode").alias("fires"))
            .collect()
        )
        row_wise = together.height == _PROBE.height and together.equals(alone)
    except Exception:
        row_wise = False
    if not row_wise:
        raise rfail(f"condition {written!r} must be checked on each episode alone (no "
                    "aggregates or window functions over other episodes)")
    return roots


def _probe_frame(n: int = 256, seed: int = 20240101) -> pl.DataFrame:
    """Varied episodes (about 1 value in 5 null) drawn from each column's declared domain."""
    rng = random.Random(seed)
    data: dict[str, list[object]] = {}
    for col in schema.EPISODES.columns:
        if col.values:
            draw = lambda col=col: rng.choice(col.values)  # noqa: E731
        elif col.kind == "bool":
            draw = lambda: rng.random() < 0.5  # noqa: E731
        elif col.kind == "datetime":
            draw = lambda: (  # noqa: E731
                dt.datetime(2024, 1, 1) + dt.timedelta(minutes=rng.randrange(525600))
            )
        elif col.kind == "int":
            lo, hi = int(col.minimum or 0), int(col.maximum or 100)
            draw = lambda lo=lo, hi=hi: rng.randint(lo, hi)  # noqa: E731
        elif col.kind == "float":
            lo, hi = float(col.minimum or 0), float(col.maximum or 100)
            draw = lambda lo=lo, hi=hi: round(rng.uniform(lo, hi), 1) or hi  # noqa: E731
        else:
            draw = lambda: rng.choice("abcxyz") * rng.randint(1, 3)  # noqa: E731
        data[col.name] = [None if rng.random() < 0.2 else draw() for _ in range(n)]
    return pl.DataFrame(data, schema=RULE_COLUMNS)


_PROBE = _probe_frame()


def _first_line(e: Exception, limit: int = 160) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
