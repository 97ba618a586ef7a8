"""Chat rendering and assistant-only label masks.

`encode` renders `messages` with the tokenizer's chat template and labels every token
-100 except the tokens of assistant turns, all of them, each with its end-of-turn token.

Where the trained spans come from:
- a template with `{% generation %}...{% endgeneration %}` blocks (the tiny tokenizer's
  template, many recent hub templates): the characters inside the blocks;
- any other template (documented fallback, as open-instruct does): for assistant turn i,
  the characters between the rendering of messages[:i] with the generation prompt and
  the rendering of messages[:i+1], trailing whitespace excluded. The template must
  render a prefix of the conversation as a prefix of the whole; if it does not, encoding
  fails loudly instead of guessing.

A token is trained when its first character lies inside a trained character span.

Tool calls, tool results and reasoning traces (tasks.schema.MESSAGE):
- `reasoning` first goes through the recipe's `train.reasoning` (REASONING): `keep` every
  trace, `drop` them all, `last_turn` keep only the last assistant turn's.
- A template that handles `tool_calls` gets the record's `tools` through
  `apply_chat_template(..., tools=...)` and the turns in transformers' form (an assistant's
  `tool_calls` as `{"type": "function", "function": {"name", "arguments": <object>}}`, a tool
  turn's `tool_call_id` / `name`, the trace as `reasoning_content` when the template reads it).
- Any other template (the tiny tokenizer's ChatML) gets Tuneline's rendering (`flatten`):
  the offered tools are appended to the system turn (one is added when there is none) as
  `<tools>` + one JSON schema per line + `</tools>`; an assistant turn's content becomes
  `<think>\n{reasoning}\n</think>\n\n{content}` followed, per call, by
  `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>` on its own lines; a tool turn
  keeps role `tool` with its content. A reasoning trace reaches a template that reads no
  `reasoning_content` the same `<think>` way.
Either way the trained spans are the assistant turns (content, kept reasoning and tool calls);
tool results, system and user turns are never trained.

Pretraining text (tasks.ingest.text: one assistant turn and nothing else) is rendered as the
text itself followed by the tokenizer's end-of-sequence token, with no chat template, and
every token is trained.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass

from tasks.errors import TunelineError

IGNORE = -100  # the label of a position that is not trained (PyTorch's cross-entropy ignore_index)
IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

#: ChatML with generation blocks: the trained part of an assistant turn is its content and <|im_end|>.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
_GENERATION = re.compile(r"\{\%-?\s*generation\s*-?\%\}")


class ChatTemplateError(TunelineError):
    """The tokenizer's chat template cannot give assistant spans for a conversation."""


@dataclass
class Encoded:
    """One tokenised conversation. `total_tokens` is the length before truncation."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool
    total_tokens: int
    dropped: bool = False  # too long with truncation="drop": input_ids/labels are empty

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


REASONING = ("keep", "drop", "last_turn")


def apply_reasoning(messages, policy: str = "keep") -> list[dict]:
    """The messages with reasoning traces kept, dropped, or kept on the last assistant turn only."""
    if policy not in REASONING:
        raise ValueError(f"reasoning must be one of {REASONING}, not {policy!r}")
    msgs = [dict(m) for m in messages]
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
    for i, m in enumerate(msgs):
        if policy == "drop" or (policy == "last_turn" and i != last):
            m["reasoning"] = None
    return msgs


def _arguments(text: str | None):
    """A call's arguments as the object templates expect (the text itself when it is not JSON)."""
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text


def _think(reasoning: str | None, content: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n\n{content}" if reasoning else content


def _call_text(call: dict) -> str:
    body = json.dumps({"name": call["name"], "arguments": _arguments(call["arguments"])}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def flat_content(m: dict) -> str:
    """Tuneline's rendering of one turn's content (module docstring)."""
    if m["role"] != "assistant":
        return m.get("content") or ""
    text = _think(m.get("reasoning"), m.get("content") or "")
    calls = [_call_text(c) for c in m.get("tool_calls") or []]
    return "\n".join(([text] if text else []) + calls)


def tools_block(tools: list[dict]) -> str:
    return "<tools>\n" + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools) + "\n</tools>"


def flatten(messages, tools: list[dict] | None = None) -> list[dict]:
    """Plain {role, content} turns in Tuneline's rendering of tools, calls and reasoning."""
    msgs = [{"role": m["role"], "content": flat_content(m)} for m in messages]
    if tools:
        if msgs and msgs[0]["role"] == "system":
            msgs[0]["content"] = f"{msgs[0]['content']}\n\n{tools_block(tools)}"
        else:
            msgs.insert(0, {"role": "system", "content": tools_block(tools)})
    return msgs


def _hf_message(m: dict, reads_reasoning: bool) -> dict:
    """One turn in transformers' chat form (for templates that handle tool calls)."""
    content = m.get("content") or ""
    out = {"role": m["role"], "content": content if reads_reasoning else _think(m.get("reasoning"), content)}
    if reads_reasoning and m.get("reasoning"):
        out["reasoning_content"] = m["reasoning"]
    if m.get("tool_calls"):
        out["tool_calls"] = [{"id": c.get("id"), "type": "function",
                              "function": {"name": c["name"], "arguments": _arguments(c["arguments"])}}
                             for c in m["tool_calls"]]
    for k in ("tool_call_id", "name"):
        if m.get(k) is not None:
            out[k] = m[k]
    return out


def supports_tools(tokenizer) -> bool:
    """Whether the chat template renders `tool_calls` itself (else Tuneline's rendering is used)."""
    return "tool_calls" in (getattr(tokenizer, "chat_template", None) or "")


def parse_tools(tools) -> list[dict] | None:
    """A record's `tools` (JSON text, a list or None) as a list of schemas, None when empty."""
    if isinstance(tools, str):
        tools = json.loads(tools)
    return list(tools) if tools else None


def prepare(tokenizer, messages, tools=None, reasoning: str = "keep") -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) as the tokenizer's chat template is given them."""
    msgs, tools = apply_reasoning(messages, reasoning), parse_tools(tools)
    if supports_tools(tokenizer):
        reads = "reasoning_content" in tokenizer.chat_template
        return [_hf_message(m, reads) for m in msgs], tools
    return flatten(msgs, tools), None


def is_text(messages) -> bool:
    """Pretraining text: one assistant turn without reasoning or tool calls, and nothing else."""
    return (len(messages) == 1 and messages[0]["role"] == "assistant" and not messages[0].get("tool_calls")
            and not messages[0].get("reasoning"))


def plain_text(tokenizer, messages) -> str:
    return (messages[0]["content"] or "") + (getattr(tokenizer, "eos_token", None) or "")


def render(tokenizer, messages, add_generation_prompt: bool = False, tools=None, reasoning: str = "keep") -> str:
    """The conversation as the text the model sees (chat template, no tokenisation)."""
    if is_text(messages) and not add_generation_prompt:
        return plain_text(tokenizer, messages)
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
    msgs, tools = prepare(tokenizer, messages, tools, reasoning)
    return _apply(tokenizer, msgs, tools, add_generation_prompt)


def _apply(tokenizer, msgs: list[dict], tools, add_generation_prompt: bool = False) -> str:
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)


def _chatml(messages) -> str:
    """The tiny tokenizer's template rendered in Python (same text as the Jinja template, 10x faster)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content'] or ''}<|im_end|>\n" for m in messages)


def render_batch(tokenizer, batch_of_messages, tools=None, reasoning: str = "keep") -> list[str]:
    """Rendered texts of many conversations (no generation prompt); `tools`: one entry per conversation."""
    if not batch_of_messages:
        return []
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
    tools = tools if tools is not None else [None] * len(batch_of_messages)
    chats = [i for i, m in enumerate(batch_of_messages) if not is_text(m)]
    out = [plain_text(tokenizer, m) if is_text(m) else None for m in batch_of_messages]
    prepared = [prepare(tokenizer, batch_of_messages[i], tools[i], reasoning) for i in chats]
    if tokenizer.chat_template == CHATML_TEMPLATE:
        texts = [_chatml(m) for m, _ in prepared]
    elif not any(t for _, t in prepared):
        texts = tokenizer.apply_chat_template([m for m, _ in prepared], tokenize=False) if prepared else []
    else:
        texts = [_apply(tokenizer, m, t) for m, t in prepared]
    for i, text in zip(chats, texts):
        out[i] = text
    return out


def has_generation_blocks(tokenizer) -> bool:
    return bool(_GENERATION.search(tokenizer.chat_template or ""))


def assistant_char_spans(tokenizer, messages, tools=None, reasoning: str = "keep") -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the [start, end) character spans that are trained."""
    from transformers.utils.chat_template_utils import render_jinja_template

    if is_text(messages):
        text = plain_text(tokenizer, messages)
        return text, [(0, len(text))]
    msgs, tools = prepare(tokenizer, messages, tools, reasoning)
    if has_generation_blocks(tokenizer):
        texts, indices = render_jinja_template(
            conversations=[msgs],
            tools=tools,
            chat_template=tokenizer.chat_template,
            return_assistant_tokens_mask=True,
            **tokenizer.special_tokens_map,
        )
        return texts[0], [tuple(s) for s in indices[0]]
    text = _apply(tokenizer, msgs, tools)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = _apply(tokenizer, msgs[:i], tools, add_generation_prompt=True) if i else ""
        upto = _apply(tokenizer, msgs[: i + 1], tools)
        if not upto.startswith(before) or not text.startswith(upto):
            raise ChatTemplateError(
                f"chat template of {tokenizer.name_or_path!r} does not render a prefix of the conversation as a "
                f"prefix (assistant turn {i + 1}); add {{% generation %}} blocks to the template"
            )
        end = len(upto.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return text, spans


def encode(tokenizer, messages, max_seq_len: int | None, truncation: str = "truncate", tools=None,
           reasoning: str = "keep") -> Encoded:
    """Token ids and labels (-100 outside assistant turns) of one conversation."""
    if truncation not in ("truncate", "drop"):
        raise ValueError(f"truncation must be 'truncate' or 'drop', not {truncation!r}")
    text, spans = assistant_char_spans(tokenizer, messages, tools, reasoning)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    j = 0
    for t, (start, _end) in enumerate(enc["offset_mapping"]):
        while j < len(spans) and start >= spans[j][1]:
            j += 1
        if j < len(spans) and spans[j][0] <= start < spans[j][1]:
            labels[t] = ids[t]
    total = len(ids)
    if max_seq_len is not None and total > max_seq_len:
        if truncation == "drop":
            return Encoded([], [], truncated=True, total_tokens=total, dropped=True)
        return Encoded(ids[:max_seq_len], labels[:max_seq_len], truncated=True, total_tokens=total)
    return Encoded(ids, labels, truncated=False, total_tokens=total)


def count_tokens(tokenizer, batch_of_messages, batch_size: int = 4096, tools=None, reasoning: str = "keep") -> list[int]:
    """Token count of each conversation as `encode` would give it without truncation.

    Renders and tokenises in batches (the Rust tokenizer encodes a batch at once).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    out: list[int] = []
    with tokenizer_threads():
        for i in range(0, len(batch_of_messages), batch_size):
            texts = render_batch(tokenizer, batch_of_messages[i : i + batch_size],
                                 None if tools is None else tools[i : i + batch_size], reasoning)
            if backend is not None:
                out.extend(len(e.ids) for e in backend.encode_batch_fast(texts, add_special_tokens=False))
            else:
                out.extend(len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return out


@contextlib.contextmanager
def tokenizer_threads():
    """Let the Rust tokenizer encode a batch on every core (about 2x on 2 cores).

    Tuneline runs with TOKENIZERS_PARALLELISM=false so that processes forked after a
    tokenizer was used do not deadlock or warn; Tuneline's own worker processes are
    spawned, not forked, so turning it on around a batch encode is safe."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def trained_spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    """Contiguous runs of trained token ids."""
    runs, cur = [], []
    for tok, lab in zip(ids, labels):
        if lab != IGNORE:
            cur.append(tok)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def check_trained_text(tokenizer, messages, enc: Encoded, reasoning: str = "keep") -> str | None:
    """None when the decoded trained spans are the assistant turns' text, else what differs.

    Each span decodes (special tokens skipped) to one assistant turn as trained: in Tuneline's
    rendering its `flat_content` after the reasoning policy, compared exactly; a template that
    renders tool calls itself must show each turn's content and kept reasoning inside its span.
    A reasoning trace the policy drops must appear in no trained span. A truncated
    conversation may end in a prefix of its last trained turn.
    """
    msgs = [m for m in apply_reasoning(messages, reasoning) if m["role"] == "assistant"]
    got = [tokenizer.decode(s, skip_special_tokens=True).strip() for s in trained_spans(enc.input_ids, enc.labels)]
    got_text = [g for g in got if g]
    leaked = _dropped_reasoning_trained(messages, msgs, got_text)
    if leaked:
        return leaked
    if supports_tools(tokenizer):
        return _check_contained(msgs, got_text, enc.truncated)
    expected = [e for e in (flat_content(m).strip() for m in msgs) if e]  # an empty turn trains only its end token
    return _check_equal(expected, got_text, enc.truncated)


def _dropped_reasoning_trained(messages, kept: list[dict], got_text: list[str]) -> str | None:
    kept_traces = {(m.get("reasoning") or "").strip() for m in kept}
    for m in messages:
        trace = (m.get("reasoning") or "").strip() if m["role"] == "assistant" else ""
        if trace and trace not in kept_traces and any(trace in g for g in got_text):
            return f"a dropped reasoning trace is trained: {trace[:80]!r}"
    return None


def _check_contained(msgs: list[dict], got_text: list[str], truncated: bool) -> str | None:
    for i, (m, g) in enumerate(zip(msgs, got_text)):
        last = truncated and i == len(got_text) - 1
        for part in ((m.get("content") or "").strip(), (m.get("reasoning") or "").strip()):
            if part and part not in g and not last:
                return f"assistant turn {i + 1}: {part[:80]!r} is not in the trained text {g[:80]!r}"
    return None


def _check_equal(expected: list[str], got_text: list[str], truncated: bool) -> str | None:
    if truncated:
        if len(got_text) > len(expected):
            return f"{len(got_text)} trained spans for {len(expected)} assistant turns"
        for i, g in enumerate(got_text):
            exp = expected[i]
            if (i < len(got_text) - 1 and g != exp) or not exp.startswith(g):
                return f"assistant turn {i + 1}: trained text {g[:80]!r} != {exp[:80]!r}"
        return None
    if got_text != expected:
        for i, (g, e) in enumerate(zip(got_text, expected)):
            if g != e:
                return f"assistant turn {i + 1}: trained text {g[:80]!r} != {e[:80]!r}"
        return f"{len(got_text)} trained spans for {len(expected)} assistant turns"
    return None
