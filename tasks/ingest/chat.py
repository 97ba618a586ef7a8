"""Conversations from chat-style rows, one policy for every chat reader (`openai`, `sharegpt`,
`alpaca` history, `oasst` paths): native turns -> MESSAGE dicts (tasks.schema) + repairs.

A reader turns each native turn into a `Turn` (canonical role, text content, reasoning,
tool calls, the call a tool result answers) and hands the list to `normalize`, which
applies, in order (each repair is recorded in `meta.repairs` as {repair, turns (0-based
native indices), text (the dropped text, for drops)}):

- empty turn (no text, no reasoning, no tool call): the conversation is cut before it
  (repair `cut_at_empty_turn`), keeping the complete exchanges before it; when no
  assistant turn is left the row is rejected `empty_turn`;
- system turns only before the first user/assistant turn, else reject `misplaced_system`;
  several leading system turns become one (repair `merged_same_role`);
- leading assistant (or tool) turns are dropped (repair `dropped_leading_assistant`);
- consecutive user turns, or consecutive assistant turns, become one joined by a blank line
  (their reasoning joined, their tool calls concatenated; repair `merged_same_role`); tool
  results are never merged (parallel calls have one result each);
- trailing user turns and trailing tool results are dropped (`dropped_trailing_user`,
  `dropped_trailing_tool`): loss is computed on assistant turns only; a conversation may end
  on an assistant turn that calls a tool (the call is the target);
- without an assistant turn: reject `no_assistant_turn`.

An assistant turn without a separate reasoning field whose content starts with an inline
`<think>...</think>` block (DeepSeek-R1 / QwQ style) gets the block as its reasoning.

Content: a string, null / absent (empty), or a list of content parts: text parts
(`{"type": "text", "text": ...}` or bare strings) are joined with newlines; any other
part (image, audio, video, file) rejects the row `unsupported_modality` naming the part.
Tool-call arguments are kept as JSON text: an object is serialised, a JSON string that
holds JSON text (double-encoded) is decoded once; text that does not parse is kept as it
is and rejected by validate (`tool_arguments_parse`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from tasks.ingest.common import FieldError

TEXT_PART_TYPES = ("text", "input_text", "output_text")


@dataclass
class Turn:
    index: int  # native position, for repairs and details
    role: str  # system | user | assistant | tool
    content: str = ""
    reasoning: str | None = None
    tool_calls: list[dict] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None

    def empty(self) -> bool:
        return not self.content.strip() and not (self.reasoning or "").strip() and not self.tool_calls

    def message(self) -> dict:
        m = {"role": self.role, "content": self.content}
        extras = {"reasoning": self.reasoning, "tool_calls": self.tool_calls or None,
                  "tool_call_id": self.tool_call_id, "name": self.name}
        m.update({k: v for k, v in extras.items() if v is not None})
        return m


def text_of(value, where: str) -> str:
    """A turn's content as text: str, None (""), or a list of content parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise FieldError("wrong_type", f"{where} is {type(value).__name__}, expected a string or content parts")
    texts = []
    for i, part in enumerate(value):
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if not isinstance(part, dict) or kind not in TEXT_PART_TYPES + (None,) or not isinstance(part.get("text"), str):
            raise FieldError("unsupported_modality", f"{where}[{i}] is a {kind!r} part; only text parts are supported")
        texts.append(part["text"])
    return "\n".join(texts)


def arguments_text(args, where: str) -> str:
    """Call arguments as JSON text (module docstring)."""
    if args is None:
        return "{}"
    if not isinstance(args, str):
        return json.dumps(args, ensure_ascii=False)
    try:
        inner = json.loads(args)
    except ValueError:
        return args
    if isinstance(inner, str):
        try:
            json.loads(inner)
            return inner  # double-encoded: the string held JSON text
        except ValueError:
            return args
    return args


def tool_call(c, where: str) -> dict:
    """One call from OpenAI `{id, type, function: {name, arguments}}` or legacy `{name, arguments}`."""
    if not isinstance(c, dict):
        raise FieldError("wrong_type", f"{where} is {type(c).__name__}, expected an object")
    fn = c.get("function") if isinstance(c.get("function"), dict) else c
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise FieldError("missing_field", f"{where}.function.name is missing")
    cid = c.get("id")
    return {"id": None if cid is None else str(cid), "name": name, "arguments": arguments_text(fn.get("arguments"), where)}


def tool_calls_of(value, where: str) -> list[dict]:
    if value is None:
        return []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise FieldError("wrong_type", f"{where} is {type(value).__name__}, expected a list of calls")
    return [tool_call(c, f"{where}[{i}]") for i, c in enumerate(value)]


def tools_of(value, where: str = "tools") -> list[dict]:
    """Offered tools as OpenAI `{"type": "function", "function": {...}}` schemas; a JSON string
    is parsed; a bare function schema (legacy `functions`) is wrapped; other tool types
    (e.g. `code_interpreter`) are kept as they are."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError as exc:
            raise FieldError("bad_json", f"{where} is not JSON: {exc}") from None
    if value is None:
        return []
    if not isinstance(value, list):
        raise FieldError("wrong_type", f"{where} is {type(value).__name__}, expected a list of tool schemas")
    out = []
    for i, t in enumerate(value):
        if not isinstance(t, dict):
            raise FieldError("wrong_type", f"{where}[{i}] is {type(t).__name__}, expected an object")
        out.append(t if "type" in t or "function" in t else {"type": "function", "function": t})
    return out


# -- the policy ----------------------------------------------------------------------
def _cut_at_empty(turns: list[Turn], repairs: list[dict]) -> tuple[list[Turn], Turn | None]:
    k = next((i for i, t in enumerate(turns) if t.empty()), None)
    if k is None:
        return turns, None
    repairs.append({"repair": "cut_at_empty_turn", "turns": [t.index for t in turns[k:]],
                    "text": "\n\n".join(t.content for t in turns[k:] if t.content)})
    return turns[:k], turns[k]


def _system(turns: list[Turn], repairs: list[dict]) -> tuple[list[Turn], list[Turn]]:
    n = 0
    while n < len(turns) and turns[n].role == "system":
        n += 1
    late = next((t for t in turns[n:] if t.role == "system"), None)
    if late is not None:
        raise FieldError("misplaced_system", f"turn {late.index} is a system turn after the conversation started")
    head = turns[:n]
    if len(head) > 1:
        repairs.append({"repair": "merged_same_role", "turns": [t.index for t in head]})
        head = [Turn(head[0].index, "system", "\n\n".join(t.content for t in head))]
    return head, turns[n:]


def _drop_edges(body: list[Turn], repairs: list[dict]) -> list[Turn]:
    k = 0
    while k < len(body) and body[k].role in ("assistant", "tool"):
        k += 1
    if k:
        repairs.append({"repair": "dropped_leading_assistant", "turns": [t.index for t in body[:k]],
                        "text": "\n\n".join(t.content for t in body[:k])})
        body = body[k:]
    while body and body[-1].role in ("user", "tool"):
        last = body[-1]
        end = len(body)
        while end and body[end - 1].role == last.role:
            end -= 1
        repairs.append({"repair": f"dropped_trailing_{last.role}", "turns": [t.index for t in body[end:]],
                        "text": "\n\n".join(t.content for t in body[end:])})
        body = body[:end]
    return body


def _join(a: str | None, b: str | None) -> str | None:
    parts = [x for x in (a, b) if x]
    return "\n\n".join(parts) if parts else None


def _merge(body: list[Turn], repairs: list[dict]) -> list[Turn]:
    out: list[tuple[list[int], Turn]] = []
    for t in body:
        if out and out[-1][1].role == t.role and t.role in ("user", "assistant"):
            idx, prev = out[-1]
            idx.append(t.index)
            out[-1] = (idx, Turn(prev.index, t.role, _join(prev.content, t.content) or "",
                                 _join(prev.reasoning, t.reasoning), prev.tool_calls + t.tool_calls))
        else:
            out.append(([t.index], t))
    repairs.extend({"repair": "merged_same_role", "turns": idx} for idx, _ in out if len(idx) > 1)
    return [t for _, t in out]


_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.S)


def split_think(t: Turn) -> Turn:
    """An assistant turn's leading inline `<think>` block moved into its reasoning."""
    m = _THINK.match(t.content) if t.role == "assistant" and t.reasoning is None else None
    if m:
        t.reasoning, t.content = m.group(1).strip() or None, t.content[m.end():]
    return t


def normalize(turns: list[Turn]) -> tuple[list[dict], list[dict]]:
    """Apply the policy: (messages, repairs); FieldError for what is rejected."""
    if not turns:
        raise FieldError("empty_conversation", "the conversation has no turns")
    turns = [split_think(t) for t in turns]
    repairs: list[dict] = []
    turns, empty = _cut_at_empty(turns, repairs)
    head, body = _system(turns, repairs)
    body = _merge(_drop_edges(body, repairs), repairs)
    if not any(t.role == "assistant" for t in body):
        if empty is not None:
            raise FieldError("empty_turn", f"turn {empty.index} ({empty.role}) is empty and no complete exchange "
                                           f"comes before it")
        raise FieldError("no_assistant_turn", "no assistant turn follows a user turn")
    return [t.message() for t in head + body], repairs
