"""ShareGPT reader: a JSON array, a single JSON object (`.json`) or JSONL of conversations
`{"id"?, "conversations": [{"from", "value"}], "system"?, "tools"?, ...}` (FastChat, and
LLaMA-Factory's tool-calling dialect).

- Roles (case-insensitive): `human`/`user` -> user; `gpt`/`assistant`/`chatgpt`/`bard` ->
  assistant; `system` -> system; `function_call` -> an assistant turn whose value is the call
  as JSON (`{"name", "arguments"}` or a list of them; text that is not JSON: reject
  `bad_tool_call`), merged into the assistant turn before it; `observation` / `tool` /
  `function` -> a tool result. Anything else: reject `unknown_role`.
- `system` (a string) becomes the leading system turn; `tools` (a list of schemas or a JSON
  string of one) the record's tools.
- A turn that is not an object / lacks `from` or `value` / has a non-string value:
  reject `wrong_type` / `missing_field` naming the turn.
- Option `columns` maps the dataset's names onto these (`conversations`, `from`, `value`,
  `system`, `tools`, `id`; `roles`: the dataset's role names onto the ones above).

The conversation policy (empty turns, system placement, leading/trailing turns, merges) is
tasks.ingest.chat's; every repair is in `meta.repairs`. Every other native field is kept in
`meta`; `id` is the `example_id` (a content hash when absent). task = the source's `task` or
`conversation`.
"""
from __future__ import annotations

import json
from typing import Iterator

from tasks.ingest.chat import Turn, normalize, tool_calls_of, tools_of
from tasks.ingest.common import FieldError, make_record, opt_str, stable_hash
from tasks.ingest.reader import Reader, register

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "chatgpt": "assistant", "bard": "assistant", "system": "system", "function_call": "call",
         "observation": "tool", "tool": "tool", "function": "tool"}


def _call_turn(i: int, value: str) -> Turn:
    try:
        calls = json.loads(value)
    except ValueError as exc:
        raise FieldError("bad_tool_call", f"conversations[{i}] (function_call) is not JSON: {exc}") from None
    return Turn(i, "assistant", tool_calls=tool_calls_of(calls, f"conversations[{i}].value"))


def _turn(i: int, t, cols) -> Turn:
    t = cols.turn(t)
    if not isinstance(t, dict):
        raise FieldError("wrong_type", f"conversations[{i}] is {type(t).__name__}, expected an object")
    for f in ("from", "value"):
        if f not in t or t[f] is None:
            raise FieldError("missing_field", f"conversations[{i}].{f} is missing")
        if not isinstance(t[f], str):
            raise FieldError("wrong_type", f"conversations[{i}].{f} is {type(t[f]).__name__}, expected a string")
    role = ROLES.get(cols.role(t["from"]).strip().lower())
    if role is None:
        raise FieldError("unknown_role", f"conversations[{i}].from is {t['from']!r}; known: {sorted(ROLES)}")
    if role == "call":
        return _call_turn(i, t["value"])
    return Turn(i, role, t["value"])


def _turns(raw: dict, cols) -> list[Turn]:
    """Every turn (the `system` field first); FieldError on a bad turn."""
    if "conversations" not in raw:
        raise FieldError("missing_field", "field 'conversations' is missing")
    conv = raw["conversations"]
    if conv is None:
        raise FieldError("null_field", "field 'conversations' is null, expected a list of turns")
    if not isinstance(conv, list):
        raise FieldError("wrong_type", f"field 'conversations' is {type(conv).__name__}, expected a list")
    if not conv:
        raise FieldError("empty_conversation", "field 'conversations' is an empty list")
    system = opt_str(raw, "system")
    head = [Turn(-1, "system", system)] if system and system.strip() else []
    return head + [_turn(i, t, cols) for i, t in enumerate(conv)]


@register
class ShareGPTReader(Reader):
    name = "sharegpt"
    version = 2  # 2: tool calls, tool results, system and tools fields, empty-turn repair
    fields = frozenset({"conversations", "system", "tools", "id"})
    turn_fields = frozenset({"from", "value"})
    roles = frozenset(ROLES)

    @classmethod
    def convert(cls, recipe, source, rows, pool=None) -> Iterator[dict]:
        def build(raw, cols, origin_file, origin_row, native) -> list[dict]:
            messages, repairs = normalize(_turns(raw, cols))
            tools = tools_of(raw.get("tools"))
            native_id = raw.get("id")
            example_id = str(native_id) if native_id not in (None, "") else stable_hash(raw["conversations"])[:20]
            meta = {k: v for k, v in raw.items() if k not in ("conversations", "system", "tools")}
            if repairs:
                meta["repairs"] = repairs
            return [make_record(source=source.name, task=source.task or "conversation", template_id="",
                                example_id=example_id, messages=messages, origin_file=origin_file,
                                origin_row=origin_row, meta=meta, tools=tools)]

        return cls.convert_each(source, rows, build)
