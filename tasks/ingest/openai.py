"""OpenAI chat reader: rows `{"messages": [{"role", "content", ...}], "tools"?, ...}` as JSONL,
a JSON array or one JSON object (`.json`), or Parquet (OpenAI fine-tuning files, Tulu /
open-instruct, mistral-common and functionary samples, xtuner's `reasoning_content`).

Per message:
- `role`: `system` / `developer` -> system, `user`, `assistant`, `tool`, and the legacy
  `function` -> tool (case-insensitive). Anything else: reject `unknown_role`.
- `content`: a string, null or absent (""), or content parts (tasks.ingest.chat.text_of:
  text parts joined, any other part rejects `unsupported_modality`).
- assistant: `tool_calls` (`{id?, type?, function: {name, arguments}}`; arguments an object,
  a JSON string or a double-encoded one) or the legacy `function_call: {name, arguments}`;
  the reasoning trace from `reasoning_content`, `reasoning` or `thinking`.
- tool: `tool_call_id` and `name` when given (functionary and the legacy API give no id).
- Other per-message keys (`loss`, `metadata`, `weight`, ...) are kept in
  `meta.turn_extras` under the message's index.

Per row: `tools` (a list, or a JSON string of one) or the legacy `functions` (bare schemas,
wrapped as `{"type": "function", "function": ...}`) are the record's tools. `messages` may
be a list of growing conversation prefixes (ToolBench's `train_messages`): the longest is
read when every other is a prefix of it (meta `prefixes`), else reject `wrong_type`.
Option `columns` maps the dataset's names onto `messages`, `tools`, `functions`, `id` and
the message keys `role`, `content`, `tool_calls`, `function_call`, `reasoning_content`,
`tool_call_id`, `name` (a dotted path reaches into nested objects, e.g.
`messages: answer_generation.train_messages`), and `roles` the dataset's role names.
The conversation policy is tasks.ingest.chat's. `id` is the `example_id` (a content hash
when absent); task = the source's `task` or `conversation`.
"""
from __future__ import annotations

from typing import Iterator

from tasks.ingest.chat import Turn, normalize, text_of, tool_calls_of, tools_of
from tasks.ingest.common import FieldError, make_record, stable_hash
from tasks.ingest.reader import Reader, register

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
         "tool": "tool", "function": "tool"}
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
KNOWN_KEYS = {"role", "content", "tool_calls", "function_call", "tool_call_id", "name", *REASONING_KEYS}


def _opt_text(m: dict, key: str, where: str) -> str | None:
    v = m.get(key)
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return str(v)
    raise FieldError("wrong_type", f"{where}.{key} is {type(v).__name__}, expected a string")


def _turn(i: int, m, cols) -> Turn:
    m = cols.turn(m)
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise FieldError("wrong_type", f"{where} is {type(m).__name__}, expected an object")
    if not isinstance(m.get("role"), str):
        raise FieldError("missing_field", f"{where}.role is missing")
    role = ROLES.get(cols.role(m["role"]).strip().lower())
    if role is None:
        raise FieldError("unknown_role", f"{where}.role is {m['role']!r}; known: {sorted(ROLES)}")
    turn = Turn(i, role, text_of(m.get("content"), f"{where}.content"))
    if role == "assistant":
        turn.tool_calls = tool_calls_of(m.get("tool_calls"), f"{where}.tool_calls") + \
            tool_calls_of(m.get("function_call"), f"{where}.function_call")
        turn.reasoning = next((r for k in REASONING_KEYS if (r := _opt_text(m, k, where))), None)
    if role == "tool":
        turn.tool_call_id = _opt_text(m, "tool_call_id", where)
        turn.name = _opt_text(m, "name", where)
    return turn


def _conversation(raw: dict) -> tuple[list, dict]:
    """The message list (the longest of growing prefixes) and what to note in meta."""
    if "messages" not in raw:
        raise FieldError("missing_field", "field 'messages' is missing")
    msgs = raw["messages"]
    if msgs is None:
        raise FieldError("null_field", "field 'messages' is null, expected a list of messages")
    if not isinstance(msgs, list):
        raise FieldError("wrong_type", f"field 'messages' is {type(msgs).__name__}, expected a list")
    if msgs and all(isinstance(p, list) for p in msgs):
        longest = max(msgs, key=len)
        if any(p != longest[: len(p)] for p in msgs):
            raise FieldError("wrong_type", "field 'messages' holds lists that are not prefixes of one conversation")
        return longest, {"prefixes": [len(p) for p in msgs]}
    return msgs, {}


def _turn_extras(msgs: list) -> dict:
    return {str(i): extra for i, m in enumerate(msgs) if isinstance(m, dict)
            and (extra := {k: v for k, v in m.items() if k not in KNOWN_KEYS})}


@register
class OpenAIReader(Reader):
    name = "openai"
    fields = frozenset({"messages", "tools", "functions", "id"})
    turn_fields = frozenset(KNOWN_KEYS - {"reasoning", "thinking"})
    roles = frozenset(ROLES)

    @classmethod
    def convert(cls, recipe, source, rows, pool=None) -> Iterator[dict]:
        def build(raw, cols, origin_file, origin_row, native) -> list[dict]:
            msgs, note = _conversation(raw)
            messages, repairs = normalize([_turn(i, m, cols) for i, m in enumerate(msgs)])
            tools = tools_of(raw.get("tools"), "tools") + tools_of(raw.get("functions"), "functions")
            return [cls._record(source, origin_file, origin_row, raw, msgs, messages, repairs, tools, note)]

        return cls.convert_each(source, rows, build)

    @classmethod
    def _record(cls, source, origin_file, origin_row, raw, msgs, messages, repairs, tools, note) -> dict:
        native_id = raw.get("id")
        example_id = str(native_id) if native_id not in (None, "") else stable_hash(msgs)[:20]
        meta = {k: v for k, v in raw.items() if k not in ("messages", "tools", "functions")}
        meta.update(note)
        if extras := _turn_extras(msgs):
            meta["turn_extras"] = extras
        if repairs:
            meta["repairs"] = repairs
        return make_record(source=source.name, task=source.task or "conversation", template_id="",
                           example_id=example_id, messages=messages, origin_file=origin_file,
                           origin_row=origin_row, meta=meta, tools=tools)
