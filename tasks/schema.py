"""Arrow schemas of the artifacts every step exchanges (docs/ARCHITECTURE.md, "The canonical record").

One place defines each table kind; readers, transforms and the catalog all use it.
"""
from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc

#: One call an assistant turn makes: `arguments` is a JSON text that parses to an object.
TOOL_CALL = pa.struct([("id", pa.string()), ("name", pa.string()), ("arguments", pa.string())])

#: One turn. `role` is system, user, assistant or tool; `content` is always a string ("" for an
#: assistant turn that only calls tools). `reasoning` (assistant): the reasoning trace, kept apart
#: from the content (null when none). `tool_calls` (assistant): the calls it makes (null when
#: none). `tool_call_id` / `name` (tool): the call the result answers and the tool's name.
MESSAGE = pa.struct([
    ("role", pa.string()),
    ("content", pa.string()),
    ("reasoning", pa.string()),
    ("tool_calls", pa.list_(TOOL_CALL)),
    ("tool_call_id", pa.string()),
    ("name", pa.string()),
])
ROLES = ("system", "user", "assistant", "tool")
MESSAGE_EXTRAS = ("reasoning", "tool_calls", "tool_call_id", "name")

#: Raw rows as a reader yields them, before conversion (`records_raw` view).
RAW = pa.schema(
    [
        ("source", pa.string()),
        ("format", pa.string()),
        ("origin_file", pa.string()),
        ("origin_row", pa.int64()),
        ("raw", pa.string()),  # the native row, re-serialised as JSON
    ]
)

#: The canonical record (`records` view).
RECORDS = pa.schema(
    [
        ("record_id", pa.string()),
        ("source", pa.string()),
        ("task", pa.string()),
        ("template_id", pa.string()),
        ("example_id", pa.string()),  # underlying source example; template variants share it
        ("messages", pa.list_(MESSAGE)),
        ("answer_choices", pa.list_(pa.string())),
        ("origin_file", pa.string()),
        ("origin_row", pa.int64()),
        ("n_turns", pa.int32()),
        ("n_chars", pa.int64()),
        ("lang", pa.string()),
        ("meta", pa.string()),  # JSON object of extra native fields
        ("tools", pa.string()),  # JSON array of the tool schemas offered (OpenAI function form); null: none
    ]
)

#: Every dropped or rejected row, from every step (`rejects` view).
REJECTS = pa.schema(
    [
        ("step", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("source", pa.string()),
        ("origin_file", pa.string()),
        ("origin_row", pa.int64()),
        ("record_id", pa.string()),  # null when the row never became a record
        ("related_id", pa.string()),  # e.g. the record a duplicate duplicates, the eval item matched
        ("raw_prefix", pa.string()),
    ]
)

RAW_PREFIX_CHARS = 200


def message(role: str, content: str, **extras) -> dict:
    """One MESSAGE dict with every field present (absent extras are None)."""
    return {"role": role, "content": content, **{k: extras.get(k) for k in MESSAGE_EXTRAS}}


def _turn_key(m: dict) -> list:
    """[role, content] plus the extras a turn carries (so plain turns hash as before)."""
    extras = {k: m[k] for k in MESSAGE_EXTRAS if m.get(k) is not None}
    return [m["role"], m["content"], extras] if extras else [m["role"], m["content"]]


def record_id(source: str, messages: list[dict], template_id: str = "", example_id: str = "",
              tools: str | None = None) -> str:
    """Stable content hash of a record: same content gives the same id on any machine."""
    parts = [source, template_id, example_id, [_turn_key(m) for m in messages]]
    if tools is not None:
        parts.append(tools)
    payload = json.dumps(parts, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def turn_text(m: dict) -> str:
    """Everything a turn says, as one text: reasoning, content, then each tool call as
    `name(arguments)` on its own line (dedup and decontamination projections, lengths)."""
    parts = [m.get("reasoning") or "", m.get("content") or ""]
    parts += [f"{c['name']}({c['arguments']})" for c in m.get("tool_calls") or []]
    return "\n".join(p for p in parts if p)


def reject_row(
    step: str,
    reason: str,
    *,
    source: str | None = None,
    origin_file: str | None = None,
    origin_row: int | None = None,
    record_id: str | None = None,
    related_id: str | None = None,
    detail: str = "",
    raw: str | bytes | None = None,
) -> dict:
    """One `rejects` row; `raw` is cut to a prefix so a huge broken row stays small."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return {
        "step": step,
        "reason": reason,
        "detail": detail,
        "source": source,
        "origin_file": origin_file,
        "origin_row": origin_row,
        "record_id": record_id,
        "related_id": related_id,
        "raw_prefix": None if raw is None else raw[:RAW_PREFIX_CHARS],
    }


def turn_text_expr():
    """Polars twin of `turn_text` over a frame of MESSAGE fields (one row per turn)."""
    import polars as pl

    calls = pl.col("tool_calls").list.eval(
        pl.concat_str(pl.element().struct.field("name").fill_null(""), pl.lit("("),
                      pl.element().struct.field("arguments").fill_null(""), pl.lit(")"))
    ).list.join("\n")
    parts = [pl.col("reasoning").replace("", None), pl.col("content").replace("", None), calls.replace("", None)]
    return pl.concat_str(parts, separator="\n", ignore_nulls=True).fill_null("")


def text_messages(messages: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`messages` as list<struct<role, content>> whose content is each turn's `turn_text`
    (reasoning, content, `name(arguments)` per call); rows of the two-field schema pass
    through unchanged."""
    import polars as pl

    messages = messages.combine_chunks() if isinstance(messages, pa.ChunkedArray) else messages
    flat = messages.flatten()
    if flat.type.get_field_index("tool_calls") < 0:
        return messages
    turns = pl.from_arrow(pa.table({"m": flat})).unnest("m").select("role", turn_text_expr().alias("content"))
    struct = pa.StructArray.from_arrays([turns["role"].to_arrow().cast(pa.string()),
                                         turns["content"].to_arrow().cast(pa.string())], names=["role", "content"])
    return pa.ListArray.from_arrays(pc.subtract(messages.offsets, messages.offsets[0]), struct)
