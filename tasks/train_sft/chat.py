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
"""
from __future__ import annotations

import contextlib
import os

import re
from dataclasses import dataclass

from tasks.errors import TunelineError

IGNORE = -100
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


def _plain(messages) -> list[dict]:
    """Messages as plain {role, content} dicts (Arrow rows may carry extra keys or None)."""
    return [{"role": m["role"], "content": m["content"] if m["content"] is not None else ""} for m in messages]


def render(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    """The conversation as the text the model sees (chat template, no tokenisation)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
    return tokenizer.apply_chat_template(_plain(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _chatml(messages) -> str:
    """The tiny tokenizer's template rendered in Python (same text as the Jinja template, 10x faster)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content'] or ''}<|im_end|>\n" for m in messages)


def render_batch(tokenizer, batch_of_messages) -> list[str]:
    """Rendered texts of many conversations (no generation prompt)."""
    from tasks.train_sft.tokenizer import CHATML_TEMPLATE

    if not batch_of_messages:
        return []
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
    if tokenizer.chat_template == CHATML_TEMPLATE:
        return [_chatml(m) for m in batch_of_messages]
    return tokenizer.apply_chat_template([_plain(m) for m in batch_of_messages], tokenize=False)


def has_generation_blocks(tokenizer) -> bool:
    return bool(_GENERATION.search(tokenizer.chat_template or ""))


def assistant_char_spans(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the [start, end) character spans that are trained."""
    from transformers.utils.chat_template_utils import render_jinja_template

    msgs = _plain(messages)
    if has_generation_blocks(tokenizer):
        texts, indices = render_jinja_template(
            conversations=[msgs],
            chat_template=tokenizer.chat_template,
            return_assistant_tokens_mask=True,
            **tokenizer.special_tokens_map,
        )
        return texts[0], [tuple(s) for s in indices[0]]
    text = render(tokenizer, msgs)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, msgs[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, msgs[: i + 1])
        if not upto.startswith(before) or not text.startswith(upto):
            raise ChatTemplateError(
                f"chat template of {tokenizer.name_or_path!r} does not render a prefix of the conversation as a "
                f"prefix (assistant turn {i + 1}); add {{% generation %}} blocks to the template"
            )
        end = len(upto.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return text, spans


def encode(tokenizer, messages, max_seq_len: int | None, truncation: str = "truncate") -> Encoded:
    """Token ids and labels (-100 outside assistant turns) of one conversation."""
    if truncation not in ("truncate", "drop"):
        raise ValueError(f"truncation must be 'truncate' or 'drop', not {truncation!r}")
    text, spans = assistant_char_spans(tokenizer, messages)
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


def count_tokens(tokenizer, batch_of_messages, batch_size: int = 4096) -> list[int]:
    """Token count of each conversation as `encode` would give it without truncation.

    Renders and tokenises in batches (the Rust tokenizer encodes a batch at once).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    out: list[int] = []
    with tokenizer_threads():
        for i in range(0, len(batch_of_messages), batch_size):
            texts = render_batch(tokenizer, batch_of_messages[i : i + batch_size])
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


def check_trained_text(tokenizer, messages, enc: Encoded) -> str | None:
    """None when the decoded trained spans equal the assistant turns' text, else what differs.

    Each span decodes (special tokens skipped) to one assistant turn's content; a
    truncated conversation may end in a prefix of its last trained turn.
    """
    expected = [(m["content"] or "").strip() for m in messages if m["role"] == "assistant"]
    got = [tokenizer.decode(s, skip_special_tokens=True).strip() for s in trained_spans(enc.input_ids, enc.labels)]
    expected = [e for e in expected if e]  # an empty assistant turn trains only its end-of-turn token
    got_text = [g for g in got if g]
    if enc.truncated:
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
