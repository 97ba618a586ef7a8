"""Row features the row-level expectations check, computed in Polars over a batch: lengths,
template leftovers, banned phrases, roles, tool-call problems, answer-in-choices."""
from __future__ import annotations

import json
import re

import polars as pl

from tasks.answers import choice_index
from tasks.config import ValidateConfig
from tasks.schema import turn_text_expr
from tasks.validate.suite import ROW_COLUMNS

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
    # The regexes run on the turns they can match only: a leftover holds "{" or "|||" (removing
    # code spans adds neither), banned phrases are looked for in assistant turns.
    content = pl.col("content")
    agg = turns.with_columns(
        pl.col("role").replace_strict(_ROLE_CODE, default="x").alias("code"),
        pl.col("text").str.len_chars().alias("chars"),
        _on_some(turns, content.str.contains("{", literal=True) | content.str.contains("|||", literal=True),
                 content.str.replace_all(_CODE, " ").str.extract(_LEFTOVER, 0).str.strip_chars()).alias("leftover"),
        (
            _on_some(turns, pl.col("role") == "assistant", content.str.to_lowercase().str.extract(banned, 1))
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


def _on_some(frame: pl.DataFrame, where: pl.Expr, value: pl.Expr) -> pl.Series:
    """`value` of the rows `where` holds, null elsewhere: the expression evaluated on those rows only."""
    at = frame.select(where.fill_null(False).arg_true())
    some = frame[at.to_series()].select(value).to_series()
    return pl.Series(some.name, [None] * frame.height, dtype=pl.String).scatter(at.to_series(), some)


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
