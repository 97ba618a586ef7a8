"""The `validate` step: great-expectations suites that gate training, plus decontamination.

Input: the split manifest's `records_train` (the held-out `records_eval` is never trained
on; its user turns feed decontamination). Output tables: `records_valid` (RECORDS, the
rows that passed every row-level expectation and are not contaminated, with `lang` set)
and `rejects` (reason = the failed expectation's `meta.name`, or `contaminated`).
Files kept beside the tables: `ge_validation.json` (the great-expectations results) and
`validation.md` (the report, also `stats.report_markdown`).

The suite (`expectations/records.json`, great-expectations 1.x expectation
configurations) decides which checks exist. Each expectation carries `meta.level`:

- `row`: runs on a frame with one row per record and derived check columns
  (ROW_COLUMNS). Every row is checked, vectorised in Polars, batch by batch: each
  supported expectation type has a Polars twin with great-expectations' semantics
  (nulls are never unexpected except for `*_not_be_null`). great-expectations itself
  runs the same suite on pandas frames of the first `validate.ge_sample_rows` rows
  (input order, whole batches; None = every batch), and its unexpected counts must
  equal the Polars counts on those rows, else the gate fails. Failing rows go to
  `rejects`; they fail the gate only through the per-source reject share.
- `table`: runs on the records themselves; schema (names and Arrow types, every
  Parquet part), uniqueness and nulls are computed over all rows with DuckDB and
  great-expectations checks the sample; a failure fails the gate.
- `source`: runs on one row per source (SOURCE_COLUMNS: rows in, rejected by
  row-level expectations, contaminated, valid, reject share) with great-expectations
  and its Polars twin; a failure fails the gate. The reject share counts row-level
  rejects only: contamination is reported per source but is not a quality failure.

kwargs may name recipe values as {"$PARAMETER": name} (PARAMETERS). `meta.requires`
lists values that must be set (`tokenizer` = a tokenizer is available, `languages` =
validate.languages is set); otherwise the expectation is skipped and reported so.

Token bounds need a tokenizer: `train.tokenizer`, else `train.model` when it is a named
model (tasks.model_registry) or a local directory, loaded with AutoTokenizer.from_pretrained (local files only). Without one the
token columns are null and the token expectations are skipped.

Language: py3langid on the first `validate.lang_max_chars` (160) characters of the
first user turn: py3langid walks its model byte by byte in Python (about 10 ms per
1,000 chars), and a sentence or two is enough to tell a language. A turn shorter than
`validate.lang_min_chars` gets `und` (undetermined), which is always allowed, because
language ID on a few words is noise. `lang_max_chars: 0` turns detection off (`lang`
keeps its input value; then `allowed_language` checks that value).

Template leftovers, in any turn, outside Markdown code spans and fences: a Jinja
expression `{{ ... }}` or statement `{% ... %}` (one line, at most 100 chars: a lone
`}}` closing nested braces in LaTeX or code is not a leftover), `|||` (promptsource's
input/target separator), or a `{field}` placeholder (an identifier in braces not
preceded by a word character, backslash, quote, `{`, `}`, `^`, `_` or `$`, so LaTeX like
`\\frac{a}{b}`, `x^{2}` and format strings like `"{name}"` pass). Code pasted without
fences can still trip the `{field}` rule (e.g. `print(f"Hello {name}")`).
Banned phrases (`validate.banned_phrases`, English and Chinese by default) are searched in
assistant turns, case-insensitively, with any whitespace between words and optional
whitespace next to CJK characters, as whole words at Latin edges.

An empty suite, a run where no expectation was evaluated, or an expectation that
raised counts as a gate failure. A suite file that is not JSON, or names an unknown or
unsupported expectation type, an unknown column or an unknown $PARAMETER, raises
SuiteError naming the file before any data is read (`check_validate` at recipe load).
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tasks import decontam
from tasks.answers import choice_index
from tasks.config import Recipe, ValidateConfig, as_recipe
from tasks.errors import GateFailed, RecipeError
from tasks.langid import languages_later
from tasks.model_registry import is_named, resolve_model
from tasks.schema import RAW_PREFIX_CHARS, RECORDS, REJECTS, turn_text_expr
from tasks.step import Progress, input_ref, logger, run_step
from tasks.store import ArtifactStore, content_hash, file_sha256

STEP, VERSION = "validate", 4  # 4: tool turns, tool-call checks, the `tools` column; 3: tasks.answers choice check, item words, held-out prompts without exemplars; 2: template n-grams, reasoned targets
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONTAMINATED = "contaminated"
SAMPLE_IDS = 5
EXAMPLES_PER_REASON = 3  # per source, task and reject reason in the report

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


def _resolve(value: Any, params: dict) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            return params[value["$PARAMETER"]]
        return {k: _resolve(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, params) for v in value]
    return value


def _skip_reason(e: Expectation, params: dict, have_tokenizer: bool) -> str | None:
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


# -- row features (vectorised) -----------------------------------------------------------
_LEFTOVER = r"\{\{[^{}\n]{0,100}\}\}|\{%[^%\n]{0,100}%\}|\|\|\||(?:^|[^\w\\}^_$'\"{])\{[A-Za-z_][A-Za-z0-9_]*\}"
_CODE = r"(?s)```.*?```|`[^`\n]*`"
_ROLE_CODE = {"system": "s", "user": "u", "assistant": "a", "tool": "t"}


def _phrase_regex(phrase: str) -> str:
    """One banned phrase as a regex over lower-cased text: its words separated by any
    whitespace, optional whitespace next to a non-Latin character (`作为一个 AI 语言模型`),
    and an ASCII word boundary at an edge that is a Latin letter or digit ("has an ai ..." is not
    "as an ai ...", while "openai" next to a Chinese character is a whole word). Rust regex (Polars)."""
    out = []
    chars = phrase.lower().split()
    text = " ".join(chars)
    for i, ch in enumerate(text):
        if ch == " ":
            out.append(r"\s+")
            continue
        if i and text[i - 1] != " " and (not text[i - 1].isascii() or not ch.isascii()):
            out.append(r"\s*")
        out.append(re.escape(ch))
    edge = [r"(?-u:\b)" if c.isascii() and c.isalnum() else "" for c in (text[0], text[-1])]  # ASCII: "openai训练"
    return edge[0] + "".join(out) + edge[1]


def _banned_regex(phrases: list[str]) -> str | None:
    phrases = [p for p in phrases if p.strip()]
    return "(" + "|".join(_phrase_regex(p) for p in phrases) + ")" if phrases else None


def first_user_turns(df: pl.DataFrame) -> list[str | None]:
    """Each record's first user turn (a null content as ""); None without one."""
    user = pl.element().filter(pl.element().struct.field("role") == "user").struct.field("content").fill_null("")
    return df.select(pl.col("messages").list.eval(user).list.first())["messages"].to_list()


def row_features(df: pl.DataFrame, cfg: ValidateConfig, user: list[str | None], lang: list[str] | None,
                 tokenizer=None) -> pl.DataFrame:
    """One row per record with the ROW_COLUMNS check columns (same order as `df`), plus `_user`.

    `user`: the records' first user turns (`first_user_turns`); `lang`: their languages, or
    None to keep the records' own `lang` (detection switched off)."""
    turns = (
        df.select(pl.int_range(pl.len()).alias("i"), "messages")
        .explode("messages")
        .unnest("messages")
        .filter(pl.col("role").is_not_null() | pl.col("content").is_not_null())
        .with_columns(pl.col("content").fill_null(""))
        .with_columns(turn_text_expr().alias("text"))
    )
    if tokenizer is not None and turns.height:
        ids = tokenizer(turns["text"].to_list(), add_special_tokens=False)["input_ids"]
        turns = turns.with_columns(pl.Series("tokens", [len(x) for x in ids], dtype=pl.Int64))
    else:
        turns = turns.with_columns(pl.lit(None, dtype=pl.Int64).alias("tokens"))
    banned = _banned_regex(cfg.banned_phrases)
    is_ua = pl.col("role").is_in(["user", "assistant"])
    agg = turns.with_columns(
        pl.col("role").replace_strict(_ROLE_CODE, default="x").alias("code"),
        pl.col("text").str.len_chars().alias("chars"),
        pl.col("content").str.replace_all(_CODE, " ").str.extract(_LEFTOVER, 0).str.strip_chars().alias("leftover"),
        (
            pl.when(pl.col("role") == "assistant").then(pl.col("content").str.to_lowercase().str.extract(banned, 1))
            if banned else pl.lit(None, dtype=pl.String)
        ).alias("banned"),
    ).group_by("i").agg(
        pl.col("code").str.join("").alias("roles"),
        pl.col("text").filter(is_ua).str.strip_chars().str.len_chars().min().alias("shortest_ua_chars"),
        pl.col("chars").min().alias("shortest_turn_chars"),
        pl.col("chars").max().alias("longest_turn_chars"),
        pl.col("chars").sum().alias("conversation_chars"),
        pl.col("tokens").max().alias("longest_turn_tokens"),
        pl.col("tokens").sum().alias("_tok_sum"),
        pl.col("tokens").is_null().any().alias("_tok_missing"),
        pl.col("leftover").drop_nulls().first().alias("template_leftover"),
        pl.col("banned").drop_nulls().first().alias("banned_phrase"),
        pl.col("content").filter(pl.col("role") == "assistant").last().alias("_target"),
    )
    base = df.select("record_id", "source", "answer_choices").with_row_index("i").with_columns(pl.col("i").cast(pl.Int64))
    out = base.join(agg.with_columns(pl.col("i").cast(pl.Int64)), on="i", how="left", maintain_order="left")
    out = out.with_columns(
        pl.col("roles").fill_null(""),
        pl.col("conversation_chars").fill_null(0),
        pl.when(pl.col("_tok_missing")).then(None).otherwise(pl.col("_tok_sum")).alias("conversation_tokens"),
        pl.Series("target_in_choices", targets_in_choices(out["_target"].to_list(), out["answer_choices"].to_list()),
                  dtype=pl.Boolean),
        pl.Series("lang", lang, dtype=pl.String) if lang is not None else df["lang"],
        pl.Series("_user", user, dtype=pl.String),
        *tool_checks(df),
    )
    return out.select(list(ROW_COLUMNS) + ["_user"])


TOOL_CHECKS = ("bad_tool_arguments", "unoffered_tool", "orphan_tool_result", "unanswered_call")


def tool_checks(df: pl.DataFrame) -> list[pl.Series]:
    """The TOOL_CHECKS columns; only rows with a tool call or tool turn are walked in Python."""
    has = df.select(pl.col("messages").list.eval(
        (pl.element().struct.field("role") == "tool") | pl.element().struct.field("tool_calls").list.len().gt(0)
    ).list.any().fill_null(False))["messages"].to_list()
    tools = df["tools"].to_list() if "tools" in df.columns else [None] * df.height
    cols: dict[str, list] = {k: [None] * df.height for k in TOOL_CHECKS}
    for i in (i for i, h in enumerate(has) if h):
        found = tool_problems(df["messages"][i].to_list(), tools[i])
        for k in TOOL_CHECKS:
            cols[k][i] = found.get(k)
    return [pl.Series(k, v, dtype=pl.String) for k, v in cols.items()]


def _offered(tools: str | None) -> set[str]:
    out = set()
    for t in json.loads(tools) if tools else []:
        fn = t.get("function", t) if isinstance(t, dict) else {}
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out.add(fn["name"])
    return out


def _arguments_problem(arguments: str | None) -> bool:
    try:
        return not isinstance(json.loads(arguments or ""), dict)
    except ValueError:
        return True


def tool_problems(messages: list[dict], tools: str | None) -> dict[str, str]:
    """The first problem of each TOOL_CHECKS kind in one conversation, described."""
    found: dict[str, str] = {}
    offered, pending = _offered(tools), []  # pending: [(turn, call id, name)] not yet answered

    def note(kind: str, text: str) -> None:
        found.setdefault(kind, text)

    for turn, m in enumerate(messages):
        if m["role"] == "user" and pending:
            note("unanswered_call", f"turn {pending[0][0]}: call {pending[0][2]!r} has no result")
        if m["role"] in ("user", "system"):
            pending = []
        for c in m.get("tool_calls") or []:
            if _arguments_problem(c["arguments"]):
                note("bad_tool_arguments", f"turn {turn}: {c['name']}({(c['arguments'] or '')[:80]})")
            if c["name"] not in offered:
                note("unoffered_tool", f"turn {turn}: {c['name']!r} is not among {sorted(offered)}")
            pending.append((turn, c.get("id"), c["name"]))
        if m["role"] == "tool":
            k = _answered(pending, m.get("tool_call_id"), m.get("name"))
            if k is None:
                note("orphan_tool_result", f"turn {turn}: no call for id {m.get('tool_call_id')!r} / {m.get('name')!r}")
            else:
                pending.pop(k)
    return found


def _answered(pending: list[tuple], call_id: str | None, name: str | None) -> int | None:
    """Index of the pending call a tool result answers: by id, else by name; a result naming
    neither answers the oldest call."""
    for key, pos in ((call_id, 1), (name, 2)):
        k = next((k for k, p in enumerate(pending) if key is not None and p[pos] == key), None)
        if k is not None:
            return k
    return 0 if pending and call_id is None and name is None else None


def targets_in_choices(targets: list[str | None], choices: list[list[str] | None]) -> list[bool | None]:
    """Per record: whether its last assistant turn, or that turn's final answer, names one of its
    answer choices (tasks.answers.choice_index: labels, `Sentence A`, yes/no, numbers); None
    (not checked) without choices."""
    return [None if not c else t is not None and choice_index(t, c) is not None for t, c in zip(targets, choices)]


# -- Polars twins of the supported column-map expectations --------------------------------
def unexpected_mask(e: Expectation, frame: pl.DataFrame, params: dict) -> pl.Series:
    """True where a row is unexpected under `e` (great-expectations semantics: nulls pass)."""
    kw = _resolve(e.kwargs, params)
    c = pl.col(e.column)
    t = e.type
    if t in ("expect_column_values_to_be_between", "expect_column_value_lengths_to_be_between"):
        v = c.str.len_chars() if t == "expect_column_value_lengths_to_be_between" else c
        bad = pl.lit(False)
        if kw.get("min_value") is not None:
            bad = bad | ((v <= kw["min_value"]) if kw.get("strict_min") else (v < kw["min_value"]))
        if kw.get("max_value") is not None:
            bad = bad | ((v >= kw["max_value"]) if kw.get("strict_max") else (v > kw["max_value"]))
        expr = c.is_not_null() & bad
    elif t == "expect_column_values_to_be_null":
        expr = c.is_not_null()
    elif t == "expect_column_values_to_not_be_null":
        expr = c.is_null()
    elif t == "expect_column_values_to_be_in_set":
        expr = c.is_not_null() & ~c.is_in(list(kw["value_set"]))
    elif t == "expect_column_values_to_not_be_in_set":
        expr = c.is_not_null() & c.is_in(list(kw["value_set"]))
    elif t == "expect_column_values_to_match_regex":
        expr = c.is_not_null() & ~c.cast(pl.String).str.contains(kw["regex"])
    elif t == "expect_column_values_to_not_match_regex":
        expr = c.is_not_null() & c.cast(pl.String).str.contains(kw["regex"])
    else:  # load_suite only admits the types above at row/source level
        raise AssertionError(t)
    return frame.select(expr.fill_null(False).alias("bad"))["bad"]


# -- great-expectations ------------------------------------------------------------------
class GE:
    """An ephemeral great-expectations context with one pandas dataframe asset per level."""

    def __init__(self, suite: Suite, params: dict, skipped: set[str]):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig
        from great_expectations.expectations.registry import get_expectation_impl

        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        ds = self.ctx.data_sources.add_pandas("tuneline")
        self.params = {k: v for k, v in params.items() if v is not None}
        self.suites, self.batch_defs = {}, {}
        for level in SUPPORTED:
            s = gx.ExpectationSuite(name=f"{suite.name}.{level}")
            for e in suite.at(level):
                if e.name in skipped:
                    continue
                try:
                    s.add_expectation(get_expectation_impl(e.type)(**e.kwargs, meta={**e.meta, "name": e.name}))
                except Exception as exc:  # pydantic errors of bad kwargs
                    raise SuiteError(f"{suite.file}: expectation {e.index} ({e.name}): {exc}") from None
            self.suites[level] = s
            self.batch_defs[level] = ds.add_dataframe_asset(level).add_batch_definition_whole_dataframe("whole")

    def validate(self, level: str, frame) -> dict | None:
        """The validation result (JSON dict) of one level's suite on a pandas frame."""
        if not self.suites[level].expectations:
            return None
        batch = self.batch_defs[level].get_batch(batch_parameters={"dataframe": frame})
        fmt = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_IDS}
        if level == "row":
            fmt["unexpected_index_column_names"] = ["record_id"]
        return batch.validate(self.suites[level], expectation_parameters=self.params, result_format=fmt).to_json_dict()


@dataclass
class Outcome:
    """What is known about one expectation after the run."""

    e: Expectation
    skipped: str | None = None
    unexpected: int = 0  # over every row (Polars / DuckDB)
    sample_ids: list[str] = field(default_factory=list)
    ge_unexpected: int = 0  # over the great-expectations sample
    ge_sample_mask_unexpected: int = 0  # the Polars twin on the same rows
    ge_evaluated: int = 0
    ge_success: bool = True
    errors: list[str] = field(default_factory=list)
    failed_detail: str = ""

    def add_ge(self, r: dict) -> None:
        self.ge_evaluated += 1
        exc = r.get("exception_info") or {}
        if exc.get("raised_exception"):
            self.errors.append(str(exc.get("exception_message"))[:500])
        self.ge_success = self.ge_success and bool(r.get("success"))
        self.ge_unexpected += int((r.get("result") or {}).get("unexpected_count") or 0)


def _ge_results(result: dict | None) -> list[tuple[str, dict]]:
    if not result:
        return []
    return [((r["expectation_config"].get("meta") or {}).get("name"), r) for r in result["results"]]


# -- the step ----------------------------------------------------------------------------
def _tokenizer_path(recipe: Recipe) -> str | None:
    """The local tokenizer directory token bounds use: train.tokenizer, else train.model (a named
    model's converted directory, or a local path); None for the tiny model or a hub name."""
    for cand in (recipe.train.tokenizer, None if recipe.train.model == "tiny" else recipe.train.model):
        if cand and (is_named(cand) or Path(recipe.resolve(cand)).exists()):
            return resolve_model(cand, recipe.resolve)
    return None


def _load_tokenizer(path: str | None):
    if path is None:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _benchmark_hashes(recipe: Recipe) -> dict:
    return {
        b.name: [file_sha256(f) for f in decontam.benchmark_files(recipe, b)]
        for b in recipe.validate_cfg.decontamination.benchmarks
    }


def validate(root: str, recipe: dict, split_manifest: dict) -> dict:
    """Run the suite and decontamination over `records_train`; see the module docstring."""
    recipe = as_recipe(recipe)
    cfg = recipe.validate_cfg
    suite = load_suite(suite_path(recipe))  # before any data is read
    decontam.check_benchmarks(recipe)
    store = ArtifactStore(root)
    tok_path = _tokenizer_path(recipe)
    config = {
        "validate": cfg.model_dump(),
        "suite_sha256": suite.sha256,
        "benchmarks": _benchmark_hashes(recipe),
        "tokenizer": tok_path,
        "tokenizer_files": content_hash(sorted(p.name for p in Path(tok_path).iterdir())) if tok_path and Path(tok_path).is_dir() else None,
    }
    return run_step(
        store, STEP, VERSION, input_ref(split_manifest), config, "expectations",
        lambda w: _body(w, store, recipe, suite, split_manifest, tok_path),
    )


def _body(writer, store: ArtifactStore, recipe: Recipe, suite: Suite, split_manifest: dict, tok_path) -> None:
    cfg = recipe.validate_cfg
    params = parameters(cfg)
    tokenizer = _load_tokenizer(tok_path)
    outcomes = {e.name: Outcome(e, skipped=_skip_reason(e, params, tokenizer is not None)) for e in suite.expectations}
    active = {n for n, o in outcomes.items() if o.skipped is None}
    ge = GE(suite, params, skipped=set(outcomes) - active)
    failures: list[str] = []
    ge_json: dict[str, Any] = {"suite": suite.name, "file": suite.file, "row": [], "table": None, "source": None}
    if not suite.expectations:
        failures.append(f"suite {suite.file} has no expectations")

    files = store.paths(split_manifest, "records_train")
    _table_checks(files, suite, outcomes, active, failures)

    dcfg = cfg.decontamination
    prompts = decontam.eval_prompts(
        recipe, decontam.heldout_prompts(store.iter_batches(split_manifest, "records_eval"))
        if dcfg.heldout and store.paths(split_manifest, "records_eval") else None,
    ) if dcfg.enabled else decontam.PROMPTS.empty_table()
    matcher = decontam.Decontaminator(prompts, dcfg)
    row_exps = [e for e in suite.at("row") if e.name in active]
    per_source: dict[str, dict[str, int]] = {}
    per_bench: dict[str, int] = {}
    breakdown = Breakdown()
    rows_in = rows_out = rejected = 0
    ge_rows_left = cfg.ge_sample_rows
    sample_frames = []
    progress = Progress("validate")
    for batch in store.iter_batches(split_manifest, "records_train", batch_size=cfg.batch_rows):
        df = pl.from_arrow(pa.Table.from_batches([batch]))
        # Language ID runs on the worker pool while this process matches every row's user
        # turns against the evaluation prompts; matches on rejected rows are dropped below.
        user = first_user_turns(df)
        lang = languages_later(user, cfg.lang_min_chars, cfg.lang_max_chars) if cfg.lang_max_chars else None
        matches = matcher.match(decontam.user_turns(df))
        feats = row_features(df, cfg, user, lang() if lang else None, tokenizer)
        masks = {e.name: unexpected_mask(e, feats, params) for e in row_exps}
        if ge_rows_left is None or ge_rows_left > 0:
            result = ge.validate("row", feats.drop("_user").to_pandas())
            ge_json["row"].append(result)
            for name, r in _ge_results(result):
                outcomes[name].add_ge(r)
                outcomes[name].ge_sample_mask_unexpected += int(masks[name].sum())
            sample_frames.append(batch.slice(0, min(batch.num_rows, 2_000)))
            if ge_rows_left is not None:
                ge_rows_left -= batch.num_rows
        breakdown.add_rows(df)
        kept, keep = _reject_rows(writer, df, feats, row_exps, masks, outcomes, breakdown)
        clean = _remove_contaminated(writer, kept, _on_kept(matches, keep), per_bench, breakdown)
        if clean.height:
            writer.write("records_valid", RECORDS, clean.to_arrow())
        _count(per_source, df, kept, clean)
        rows_in += df.height
        rows_out += clean.height
        rejected += df.height - clean.height
        progress.add(df.height)
    progress.done()
    matcher.close()
    writer.write("records_valid", RECORDS, RECORDS.empty_table())  # the table exists even when empty
    writer.write("rejects", REJECTS, REJECTS.empty_table())
    if rows_in == 0:
        failures.append("records_train has no rows")

    if sample_frames:  # table-level expectations through great-expectations, on the sample
        ge_json["table"] = ge.validate("table", pa.Table.from_batches(sample_frames).to_pandas())
        for name, r in _ge_results(ge_json["table"]):
            outcomes[name].add_ge(r)
    source_frame = _source_frame(per_source)
    ge_json["source"] = ge.validate("source", source_frame.to_pandas())
    for name, r in _ge_results(ge_json["source"]):
        outcomes[name].add_ge(r)
    for e in suite.at("source"):
        if e.name in active:
            bad = unexpected_mask(e, source_frame, params)
            outcomes[e.name].unexpected = int(bad.sum())
            outcomes[e.name].sample_ids = source_frame.filter(bad)["source"].to_list()[:SAMPLE_IDS]

    failures += _gate_failures(outcomes)
    if not any(o.ge_evaluated for o in outcomes.values()):
        failures.append(f"suite {suite.file}: no expectation was evaluated")
    writer.attach_file("ge_validation.json", json.dumps(ge_json, indent=1, default=str).encode())
    report = _report(suite, outcomes, source_frame, per_bench, matcher, failures) + "\n" + breakdown.markdown()
    writer.attach_file("validation.md", report.encode())
    writer.stats.update(
        rows_in=rows_in, rows_out=rows_out, rows_rejected=rejected,
        rows_contaminated=sum(per_bench.values()), contaminated_by_benchmark=per_bench,
        eval_prompts=matcher.n_prompts, boilerplate_ngrams=matcher.n_boilerplate, per_source=source_frame.to_dicts(),
        expectations={n: _outcome_stats(o) for n, o in outcomes.items()},
        gate_passed=not failures, gate_failures=failures, report_markdown=report,
    )
    log = logger()
    log.info(f"validate: {rows_in} in, {rows_out} valid, {rejected} rejected "
             f"({sum(per_bench.values())} contaminated); gate {'passed' if not failures else 'FAILED'}")
    for f in failures:
        log.warning(f"validate gate: {f}")


def _table_checks(files: list[Path], suite: Suite, outcomes: dict, active: set, failures: list) -> None:
    """Dataset-level checks over every row: Arrow schema of each part, DuckDB for the rest."""
    import duckdb

    con = duckdb.connect()
    src = "read_parquet([" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "])" if files else None
    for e in suite.at("table"):
        if e.name not in active:
            continue
        o = outcomes[e.name]
        if e.type == "expect_table_columns_to_match_set":
            want = list(e.kwargs.get("column_set") or [])
            for f in files:
                schema = pq.read_schema(f)
                missing = [c for c in want if c not in schema.names]
                extra = [c for c in schema.names if c not in want] if e.kwargs.get("exact_match", True) else []
                wrong = [f"{c}: {schema.field(c).type} (expected {RECORDS.field(c).type})"
                         for c in want if c in schema.names and c in RECORDS.names
                         and not schema.field(c).type.equals(RECORDS.field(c).type)]
                if missing or extra or wrong:
                    o.unexpected += 1
                    o.failed_detail = f"{f}: missing {missing} extra {extra} wrong types {wrong}"
        elif src is None:
            continue
        elif e.type == "expect_column_values_to_be_unique":
            col = '"' + e.column + '"'
            rows = con.sql(f"SELECT {col} FROM {src} WHERE {col} IS NOT NULL GROUP BY 1 HAVING count(*) > 1").fetchall()
            n = con.sql(f"SELECT count(*) FROM {src} WHERE {col} IN (SELECT {col} FROM {src} GROUP BY 1 HAVING count(*) > 1)").fetchall()[0][0]
            o.unexpected, o.sample_ids = n, [str(r[0]) for r in rows[:SAMPLE_IDS]]
        elif e.type == "expect_column_values_to_not_be_null":
            o.unexpected = con.sql(f'SELECT count(*) FROM {src} WHERE "{e.column}" IS NULL').fetchall()[0][0]
        elif e.type == "expect_table_row_count_to_be_between":
            n = con.sql(f"SELECT count(*) FROM {src}").fetchall()[0][0]
            lo, hi = e.kwargs.get("min_value"), e.kwargs.get("max_value")
            o.unexpected = int((lo is not None and n < lo) or (hi is not None and n > hi))
            o.failed_detail = f"row count {n}"
    con.close()


def _reject_rows(writer, df: pl.DataFrame, feats: pl.DataFrame, exps: list[Expectation],
                 masks: dict[str, pl.Series], outcomes: dict, breakdown: Breakdown) -> tuple[pl.DataFrame, np.ndarray]:
    """Write rows failing any row-level expectation to rejects; return (the rest with `lang`
    set, a mask of the rows kept)."""
    if not exps:
        return df.with_columns(feats["lang"]), np.ones(df.height, bool)
    f = feats.with_columns([masks[e.name].alias(f"_m{i}") for i, e in enumerate(exps)])
    for i, e in enumerate(exps):
        o = outcomes[e.name]
        o.unexpected += int(f[f"_m{i}"].sum())
        if len(o.sample_ids) < SAMPLE_IDS:
            o.sample_ids += f.filter(pl.col(f"_m{i}"))["record_id"].head(SAMPLE_IDS - len(o.sample_ids)).to_list()
    reason = pl.lit(None, dtype=pl.String)
    for i, e in reversed(list(enumerate(exps))):  # the first failed expectation in suite order wins
        reason = pl.when(pl.col(f"_m{i}")).then(pl.lit(e.name)).otherwise(reason)
    detail = pl.concat_str(
        [pl.when(pl.col(f"_m{i}")).then(pl.lit(f"{e.name}: {e.column}=") + pl.col(e.column).cast(pl.String).fill_null("null"))
         for i, e in enumerate(exps)],
        separator="; ", ignore_nulls=True,
    )
    f = f.with_columns(reason.alias("_reason"), detail.str.slice(0, 500).alias("_detail"))
    bad = f["_reason"].is_not_null()
    if bad.any():
        both = pl.concat([df.select("source", "task", "origin_file", "origin_row", "record_id"),
                          f.select("_reason", "_detail", "_user")], how="horizontal").filter(bad)
        _write_rejects(writer, breakdown, both.select(
            pl.lit(STEP).alias("step"), pl.col("_reason").alias("reason"), pl.col("_detail").alias("detail"),
            "source", "origin_file", "origin_row", "record_id", pl.lit(None, dtype=pl.String).alias("related_id"),
            pl.col("_user").str.slice(0, RAW_PREFIX_CHARS).alias("raw_prefix"), "task",
        ))
    return df.with_columns(feats["lang"]).filter(~bad), ~bad.to_numpy()


def _on_kept(matches: pa.Table, keep: np.ndarray) -> pa.Table:
    """Matches whose row was kept, `row_idx` renumbered from positions in the batch to
    positions among the kept rows."""
    rows = matches.column("row_idx").to_numpy()
    hit = keep[rows]
    new_idx = (np.cumsum(keep) - 1)[rows[hit]]
    column = matches.schema.get_field_index("row_idx")
    return matches.filter(pa.array(hit)).set_column(column, "row_idx", pa.array(new_idx, pa.int64()))


def _remove_contaminated(writer, kept: pl.DataFrame, matches: pa.Table, per_bench: dict,
                         breakdown: Breakdown) -> pl.DataFrame:
    """Write contaminated rows to rejects (benchmark name, matched eval item id); return the rest."""
    if matches.num_rows == 0:
        return kept
    m = pl.from_arrow(matches)
    k = kept.with_row_index("row_idx").with_columns(pl.col("row_idx").cast(pl.Int64))
    hit = k.join(m, on="row_idx", how="inner")
    for bench, n in hit.group_by("bench").len().iter_rows():
        per_bench[bench] = per_bench.get(bench, 0) + n
    _write_rejects(writer, breakdown, hit.select(
        pl.lit(STEP).alias("step"), pl.lit(CONTAMINATED).alias("reason"),
        pl.col("bench").alias("detail"),
        "source", "origin_file", "origin_row", "record_id", pl.col("item_id").alias("related_id"),
        pl.col("messages").list.eval(pl.element().struct.field("content")).list.first().str.slice(0, RAW_PREFIX_CHARS).alias("raw_prefix"),
        "task",
    ))
    return k.join(m, on="row_idx", how="anti").drop("row_idx")


def _write_rejects(writer, breakdown: Breakdown, rejects: pl.DataFrame) -> None:
    """Write rejects (the REJECTS columns, then `task`) and count them in the report's breakdown."""
    breakdown.add_rejects(rejects)
    writer.write("rejects", REJECTS, rejects.drop("task").to_arrow())


class Breakdown:
    """The report's per source and task view: rows in, rejects by reason, the first
    EXAMPLES_PER_REASON of each reason (record id, detail, start of the user turn)."""

    def __init__(self):
        self.rows_in: dict[tuple[str, str], int] = defaultdict(int)
        self.rejected: dict[tuple[str, str, str], int] = defaultdict(int)
        self.examples: dict[tuple[str, str, str], list[str]] = defaultdict(list)

    def add_rows(self, df: pl.DataFrame) -> None:
        for source, task, n in df.group_by("source", "task").len().iter_rows():
            self.rows_in[(source or "", task or "")] += n

    def add_rejects(self, rejects: pl.DataFrame) -> None:
        example = pl.concat_str([
            pl.format("`{}` {}", "record_id", pl.col("detail").fill_null("")),
            pl.format(" (eval item `{}`)", "related_id"),  # null, so left out, on non-contamination rejects
            pl.format(": {}", pl.col("raw_prefix").fill_null("").str.slice(0, 80)),
        ], ignore_nulls=True)
        groups = rejects.group_by("source", "task", "reason", maintain_order=True).agg(
            pl.len().alias("n"), example.head(EXAMPLES_PER_REASON).alias("examples"))
        for source, task, reason, n, examples in groups.iter_rows():
            key = (source or "", task or "", reason)
            self.rejected[key] += n
            self.examples[key] += examples[: EXAMPLES_PER_REASON - len(self.examples[key])]

    def markdown(self) -> str:
        lines = ["### Per source and task", "", "| source | task | rows in | kept | rejected | reason | rows | examples |",
                 "|---|---|---:|---:|---:|---|---:|---|"]
        for (source, task), n_in in sorted(self.rows_in.items()):
            reasons = sorted(((r, n) for (s, t, r), n in self.rejected.items() if (s, t) == (source, task)),
                             key=lambda x: -x[1])
            n_rej = sum(n for _, n in reasons)
            head = f"| {source} | {task} | {n_in} | {n_in - n_rej} | {n_rej} |"
            if not reasons:
                lines.append(f"{head} | | |")
            for i, (reason, n) in enumerate(reasons):
                cells = "<br>".join(_cell(e) for e in self.examples[(source, task, reason)])
                lines.append(f"{head if i == 0 else '| | | | | |'} {reason} | {n} | {cells} |")
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text fit for one markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _count(per_source: dict, df: pl.DataFrame, kept: pl.DataFrame, clean: pl.DataFrame) -> None:
    for name, frame in (("rows_in", df), ("kept", kept), ("rows_valid", clean)):
        for source, n in frame.group_by("source").len().iter_rows():
            s = per_source.setdefault(source, {"rows_in": 0, "kept": 0, "rows_valid": 0})
            s[name] += n


def _source_frame(per_source: dict) -> pl.DataFrame:
    rows = [
        {"source": s, "rows_in": c["rows_in"], "rows_rejected": c["rows_in"] - c["kept"],
         "rows_contaminated": c["kept"] - c["rows_valid"], "rows_valid": c["rows_valid"],
         "reject_share": (c["rows_in"] - c["kept"]) / c["rows_in"] if c["rows_in"] else 0.0}
        for s, c in sorted(per_source.items())
    ]
    schema = {"source": pl.String, "rows_in": pl.Int64, "rows_rejected": pl.Int64, "rows_contaminated": pl.Int64,
              "rows_valid": pl.Int64, "reject_share": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def _gate_failures(outcomes: dict[str, Outcome]) -> list[str]:
    out = []
    for name, o in outcomes.items():
        if o.skipped:
            continue
        for err in o.errors:
            out.append(f"{name}: great-expectations raised: {err}")
        if o.e.level == "row":
            if o.ge_evaluated and o.ge_unexpected != o.ge_sample_mask_unexpected:
                out.append(f"{name}: great-expectations counted {o.ge_unexpected} unexpected rows on the sample, "
                           f"the vectorised check {o.ge_sample_mask_unexpected}")
        elif o.unexpected or not o.ge_success:
            ids = f" (e.g. {', '.join(map(str, o.sample_ids))})" if o.sample_ids else ""
            what = o.failed_detail or f"{o.unexpected} unexpected{ids}"
            out.append(f"{name} ({o.e.level}-level) failed: {what}")
    return out


def _outcome_stats(o: Outcome) -> dict:
    return {"level": o.e.level, "type": o.e.type, "skipped": o.skipped, "unexpected": o.unexpected,
            "ge_unexpected_sample": o.ge_unexpected, "errors": o.errors, "sample_ids": o.sample_ids}


def _report(suite: Suite, outcomes: dict, source_frame: pl.DataFrame, per_bench: dict, matcher, failures) -> str:
    lines = [f"## Validation: gate {'passed' if not failures else '**FAILED**'}", "",
             f"Suite `{suite.file}` ({len(suite.expectations)} expectations).", ""]
    if failures:
        lines += ["### Gate failures", ""] + [f"- {f}" for f in failures] + [""]
    lines += ["| expectation | level | type | result | unexpected | GE sample unexpected | sample ids |",
              "|---|---|---|---|---|---|---|"]
    for name, o in outcomes.items():
        if o.skipped:
            result = f"skipped ({o.skipped})"
        elif o.errors:
            result = "error"
        elif o.e.level == "row":
            result = "pass" if not o.unexpected else "rows rejected"
        else:
            result = "pass" if not o.unexpected and o.ge_success else "FAIL"
        ids = ", ".join(f"`{i}`" for i in o.sample_ids)
        lines.append(f"| {name} | {o.e.level} | {o.e.type} | {result} | {o.unexpected} | {o.ge_unexpected} | {ids} |")
    lines += ["", "### Per source", "", "| source | in | rejected | contaminated | valid | reject share |",
              "|---|---|---|---|---|---|"]
    for r in source_frame.iter_rows(named=True):
        lines.append(f"| {r['source']} | {r['rows_in']} | {r['rows_rejected']} | {r['rows_contaminated']} | "
                     f"{r['rows_valid']} | {r['reject_share']:.1%} |")
    lines += ["", f"### Decontamination ({matcher.n_prompts} eval prompts, {matcher.n}-grams; "
                  f"{matcher.n_boilerplate} template n-grams shared by many eval items not matched)", ""]
    lines += [f"- {b}: {n} rows removed" for b, n in sorted(per_bench.items())] or ["- no contaminated rows"]
    return "\n".join(lines) + "\n"


def gate(validate_manifest: dict) -> None:
    """Raise GateFailed with the failures when the validate step's gate did not pass."""
    stats = validate_manifest.get("stats", {})
    if "gate_passed" not in stats:
        raise GateFailed(f"validate manifest {validate_manifest.get('key')}: no gate result (stats.gate_passed)")
    if not stats["gate_passed"]:
        fails = stats.get("gate_failures") or ["(no reason recorded)"]
        raise GateFailed("quality gate failed; mix, train and evaluate will not run:\n" + "\n".join(f"- {f}" for f in fails))
