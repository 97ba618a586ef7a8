"""ShareGPT reader: a JSON array, a single JSON object (`.json`) or JSONL of conversations
`{"id"?, "conversations": [{"from", "value"}], ...}`.

Policy (each case has its own reject reason or a recorded repair):

- Roles (case-insensitive): `human`/`user` -> user; `gpt`/`assistant`/`chatgpt`/`bard` -> assistant;
  `system` -> system. Anything else: reject `unknown_role`.
- A turn whose value is empty or whitespace: reject `empty_turn` (the conversation would
  otherwise change meaning; we keep nothing half-way).
- A turn that is not an object / lacks `from` or `value` / has a non-string value:
  reject `wrong_type` / `missing_field` naming the turn.
- `system` turns are allowed only before the first user/assistant turn; later: reject
  `misplaced_system`.
- Assistant-first conversations: the leading assistant turn(s) are dropped (repair
  `dropped_leading_assistant`).
- Consecutive turns of one role are merged into one turn joined by a blank line
  (repair `merged_same_role`).
- A conversation ending on a user turn loses that trailing turn (repair
  `dropped_trailing_user`): loss is computed on assistant turns only, so it teaches nothing.
- After repairs, a conversation without an assistant turn: reject `no_assistant_turn`;
  an empty `conversations` list: reject `empty_conversation`.

Every repair is recorded in `meta.repairs` as {repair, turns (0-based native indices),
text (the dropped text, for drops)}, so nothing disappears silently. Every other native
field (model, lang, ...) is kept in `meta`; `id` is the `example_id` (a content hash when
absent). task = the source's `task` or `conversation`.
"""
from __future__ import annotations

from typing import Iterator

from tasks.ingest import Reader, register
from tasks.ingest.common import FieldError, convert_reject, iter_records, make_record, stable_hash

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "chatgpt": "assistant", "bard": "assistant", "system": "system"}


def _turns(raw: dict) -> list[tuple[int, str, str]]:
    """(native index, canonical role, text) of every turn; FieldError on a bad turn."""
    if "conversations" not in raw:
        raise FieldError("missing_field", "field 'conversations' is missing")
    conv = raw["conversations"]
    if conv is None:
        raise FieldError("null_field", "field 'conversations' is null, expected a list of turns")
    if not isinstance(conv, list):
        raise FieldError("wrong_type", f"field 'conversations' is {type(conv).__name__}, expected a list")
    if not conv:
        raise FieldError("empty_conversation", "field 'conversations' is an empty list")
    out = []
    for i, t in enumerate(conv):
        if not isinstance(t, dict):
            raise FieldError("wrong_type", f"conversations[{i}] is {type(t).__name__}, expected an object")
        for f in ("from", "value"):
            if f not in t or t[f] is None:
                raise FieldError("missing_field", f"conversations[{i}].{f} is missing")
            if not isinstance(t[f], str):
                raise FieldError("wrong_type", f"conversations[{i}].{f} is {type(t[f]).__name__}, expected a string")
        role = ROLES.get(t["from"].strip().lower())
        if role is None:
            raise FieldError("unknown_role", f"conversations[{i}].from is {t['from']!r}; known: {sorted(ROLES)}")
        if not t["value"].strip():
            raise FieldError("empty_turn", f"conversations[{i}] ({t['from']}) has an empty value")
        out.append((i, role, t["value"]))
    return out


def normalize(turns: list[tuple[int, str, str]]) -> tuple[list[dict], list[dict]]:
    """Apply the policy: (messages, repairs); FieldError for what is rejected."""
    repairs: list[dict] = []
    system = [t for t in turns if t[1] == "system"]
    n_lead = 0
    while n_lead < len(turns) and turns[n_lead][1] == "system":
        n_lead += 1
    if len(system) != n_lead:
        late = next(t for t in turns[n_lead:] if t[1] == "system")
        raise FieldError("misplaced_system", f"conversations[{late[0]}] is a system turn after the conversation started")
    body = turns[n_lead:]
    if body and body[0][1] == "assistant":
        k = 0
        while k < len(body) and body[k][1] == "assistant":
            k += 1
        repairs.append({"repair": "dropped_leading_assistant", "turns": [t[0] for t in body[:k]],
                        "text": "\n\n".join(t[2] for t in body[:k])})
        body = body[k:]
    merged: list[list] = []
    for i, role, text in body:
        if merged and merged[-1][1] == role:
            merged[-1][2] += "\n\n" + text
            merged[-1][0].append(i)
        else:
            merged.append([[i], role, text])
    for idx, role, _ in merged:
        if len(idx) > 1:
            repairs.append({"repair": "merged_same_role", "turns": idx})
    if merged and merged[-1][1] == "user":
        last = merged.pop()
        repairs.append({"repair": "dropped_trailing_user", "turns": last[0], "text": last[2]})
    if not any(m[1] == "assistant" for m in merged):
        raise FieldError("no_assistant_turn", "no assistant turn follows a user turn")
    messages = [{"role": "system", "content": t[2]} for t in turns[:n_lead]]
    if len(messages) > 1:  # several leading system turns become one
        repairs.append({"repair": "merged_same_role", "turns": [t[0] for t in turns[:n_lead]]})
        messages = [{"role": "system", "content": "\n\n".join(m["content"] for m in messages)}]
    messages += [{"role": role, "content": text} for _, role, text in merged]
    return messages, repairs


@register
class ShareGPTReader(Reader):
    name = "sharegpt"

    @classmethod
    def read(cls, recipe, source, file: str) -> Iterator[tuple]:
        return iter_records(file, source.options.get("layout"))

    @classmethod
    def convert(cls, recipe, source, rows, pool=None) -> Iterator[dict]:
        for origin_file, origin_row, raw in rows:
            try:
                messages, repairs = normalize(_turns(raw))
            except FieldError as e:
                yield convert_reject(source.name, origin_file, origin_row, e.reason, e.detail, raw)
                continue
            native_id = raw.get("id")
            example_id = str(native_id) if native_id not in (None, "") else stable_hash(raw["conversations"])[:20]
            meta = {k: v for k, v in raw.items() if k != "conversations"}
            if repairs:
                meta["repairs"] = repairs
            yield make_record(source=source.name, task=source.task or "conversation", template_id="",
                              example_id=example_id, messages=messages, origin_file=origin_file,
                              origin_row=origin_row, meta=meta)
