"""The expectation suite: loading and checking `expectations/records.json`, its levels,
columns, $PARAMETERs and requirements (see tasks/validate/__init__.py)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import decontam
from tasks.config import Recipe, ValidateConfig
from tasks.errors import RecipeError
from tasks.schema import RECORDS
from tasks.store import file_sha256

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_IDS = 5

ROW_COLUMNS = {
    "record_id": "record id",
    "source": "source name",
    "roles": "one letter per turn: s(ystem) u(ser) a(ssistant) t(ool) x(other)",
    "shortest_ua_chars": "shortest user/assistant turn, characters after stripping whitespace (an assistant "
                         "turn's tool calls and reasoning count)",
    "shortest_turn_chars": "shortest turn, characters",
    "longest_turn_chars": "longest turn, characters",
    "conversation_chars": "all turns, characters",
    "longest_turn_tokens": "longest turn, tokens (null without a tokenizer)",
    "conversation_tokens": "all turns, tokens (null without a tokenizer)",
    "template_leftover": "the first template leftover found, else null",
    "target_in_choices": "last assistant turn, or the final answer of a reasoned one, names one of answer_choices "
                         "(tasks.answers); null without choices",
    "banned_phrase": "the first banned phrase found in an assistant turn, else null",
    "lang": "language of the first user turn (ISO 639-1, `und` when too short)",
    "bad_tool_arguments": "the first tool call whose arguments are not a JSON object, else null",
    "unoffered_tool": "the first tool called that the record's `tools` do not offer, else null",
    "orphan_tool_result": "the first tool turn that answers no call made before it, else null",
    "unanswered_call": "the first tool call without a result before the next user turn, else null",
}
SOURCE_COLUMNS = ["source", "rows_in", "rows_rejected", "rows_contaminated", "rows_valid", "reject_share"]
LEVEL_COLUMNS = {"row": list(ROW_COLUMNS), "table": RECORDS.names, "source": SOURCE_COLUMNS}

_COLUMN_MAP = {
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_null",
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_not_be_in_set",
    "expect_column_values_to_match_regex",
    "expect_column_values_to_not_match_regex",
    "expect_column_value_lengths_to_be_between",
}
SUPPORTED = {
    "row": _COLUMN_MAP,
    "source": _COLUMN_MAP,
    "table": {
        "expect_table_columns_to_match_set",
        "expect_column_values_to_be_unique",
        "expect_column_values_to_not_be_null",
        "expect_table_row_count_to_be_between",
    },
}
PARAMETERS = [
    "min_turn_chars", "max_turn_chars", "max_conversation_chars", "max_turn_tokens",
    "max_conversation_tokens", "allowed_languages", "max_reject_share", "min_rows_per_source",
]
REQUIREMENTS = {"tokenizer", "languages", *PARAMETERS}


class SuiteError(RecipeError):
    """The expectation suite file is unusable; raised before any data is read."""


# -- the suite -------------------------------------------------------------------------
@dataclass(frozen=True)
class Expectation:
    """One expectation of the suite, as configured in the JSON file."""

    index: int
    name: str
    type: str
    level: str
    kwargs: dict
    meta: dict
    requires: tuple[str, ...] = ()

    @property
    def column(self) -> str | None:
        return self.kwargs.get("column")


@dataclass(frozen=True)
class Suite:
    file: str
    name: str
    expectations: tuple[Expectation, ...]
    sha256: str

    def at(self, level: str) -> list[Expectation]:
        return [e for e in self.expectations if e.level == level]


def suite_path(recipe: Recipe) -> Path:
    """The suite file: recipe-relative first, else relative to the project root."""
    p = Path(recipe.resolve(recipe.validate_cfg.suite))
    if not p.exists() and not Path(recipe.validate_cfg.suite).is_absolute():
        alt = PROJECT_ROOT / recipe.validate_cfg.suite
        if alt.exists():
            return alt
    return p


def _parameters_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            return [value["$PARAMETER"]]
        return [p for v in value.values() for p in _parameters_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in _parameters_in(v)]
    return []


def load_suite(path: str | Path) -> Suite:
    """Parse and check a suite file: JSON, known types per level, known columns and parameters."""
    path = Path(path)
    file = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SuiteError(f"{file}: expectation suite not found") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{file}: expectation suite is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise SuiteError(f"{file}: expected a JSON object with an `expectations` list (great-expectations suite)")
    out, names = [], set()
    for i, e in enumerate(data["expectations"], 1):
        where = f"{file}: expectation {i}"
        if not isinstance(e, dict) or not isinstance(e.get("type"), str):
            raise SuiteError(f"{where}: expected an object with a `type` string")
        meta = e.get("meta") or {}
        kwargs = e.get("kwargs") or {}
        level = meta.get("level", "row")
        if level not in SUPPORTED:
            raise SuiteError(f"{where}: meta.level {level!r} unknown; expected one of {sorted(SUPPORTED)}")
        if e["type"] not in SUPPORTED[level]:
            raise SuiteError(
                f"{where}: unknown expectation type {e['type']!r} for level {level!r}; "
                f"supported: {sorted(SUPPORTED[level])}"
            )
        name = meta.get("name") or e["type"]
        if name in names:
            raise SuiteError(f"{where}: meta.name {name!r} repeated; names must be unique (they become reject reasons)")
        names.add(name)
        cols = [kwargs["column"]] if "column" in kwargs else []
        if level == "table" and e["type"] == "expect_table_columns_to_match_set":
            cols = list(kwargs.get("column_set") or [])
        for c in cols:
            if c not in LEVEL_COLUMNS[level]:
                raise SuiteError(
                    f"{where} ({name}): unknown column {c!r} for level {level!r}; known: {LEVEL_COLUMNS[level]}"
                )
        for p in _parameters_in(kwargs):
            if p not in PARAMETERS:
                raise SuiteError(f"{where} ({name}): unknown $PARAMETER {p!r}; known: {PARAMETERS}")
        requires = tuple(meta.get("requires") or ())
        for r in requires:
            if r not in REQUIREMENTS:
                raise SuiteError(f"{where} ({name}): unknown requirement {r!r}; known: {sorted(REQUIREMENTS)}")
        out.append(Expectation(i, name, e["type"], level, kwargs, meta, requires))
    return Suite(file, str(data.get("name") or path.stem), tuple(out), file_sha256(path))


def check_validate(recipe: Recipe, file: str = "<recipe>") -> None:
    """Recipe-load checks: the suite parses and every benchmark file has its prompt field.

    Meant to be called from tasks.config.check_recipe; reads no training data.
    """
    try:
        load_suite(suite_path(recipe))
        decontam.check_benchmarks(recipe)
    except RecipeError as exc:
        raise type(exc)(f"{file}: validate: {exc}") from None


def parameters(cfg: ValidateConfig) -> dict[str, Any]:
    """Values the suite's {"$PARAMETER": name} entries resolve to."""
    return {
        "min_turn_chars": cfg.min_turn_chars,
        "max_turn_chars": cfg.max_turn_chars,
        "max_conversation_chars": cfg.max_conversation_chars,
        "max_turn_tokens": cfg.max_turn_tokens,
        "max_conversation_tokens": cfg.max_conversation_tokens,
        "allowed_languages": None if cfg.languages is None else sorted({*cfg.languages, "und"}),
        "max_reject_share": cfg.max_reject_share,
        "min_rows_per_source": cfg.min_rows_per_source,
    }


def resolve_parameters(value: Any, params: dict) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            return params[value["$PARAMETER"]]
        return {k: resolve_parameters(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_parameters(v, params) for v in value]
    return value


def skip_reason(e: Expectation, params: dict, have_tokenizer: bool) -> str | None:
    for r in e.requires:
        if r == "tokenizer" and not have_tokenizer:
            return "no tokenizer configured"
        if r == "languages" and params["allowed_languages"] is None:
            return "validate.languages not set"
        if r in params and params[r] is None:
            return f"validate.{r} not set"
    for p in _parameters_in(e.kwargs):
        if params[p] is None:
            return f"validate.{p} not set"
    return None
