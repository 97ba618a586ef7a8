"""Assistant-only label masks, trained-span decoding, truncation and token counts."""
from __future__ import annotations

import pytest

from tasks.train_sft import chat
from tasks.train_sft.tokenizer import CHATML_TEMPLATE, IM_END, load_tokenizer

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say red"},
    {"role": "assistant", "content": "red"},
    {"role": "user", "content": "Now say the blue cat sat"},
    {"role": "assistant", "content": "the blue cat sat"},
]


@pytest.fixture
def tok(prepared):
    root, _recipe, _vm, tm = prepared
    return load_tokenizer(root, tm)


def test_only_assistant_turns_and_their_end_token_are_trained(tok):
    enc = chat.encode(tok, CONV, None)
    assert len(enc.input_ids) == len(enc.labels) == enc.total_tokens
    spans = chat.trained_spans(enc.input_ids, enc.labels)
    assert [tok.decode(s) for s in spans] == ["red" + IM_END, "the blue cat sat" + IM_END]
    end_id = tok.convert_tokens_to_ids(IM_END)
    # every turn ends with <|im_end|>; only the two assistant ones are trained
    ends = [i for i, t in enumerate(enc.input_ids) if t == end_id]
    assert len(ends) == 5
    assert [enc.labels[i] == end_id for i in ends] == [False, False, True, False, True]
    # trained labels equal the inputs at the same position (the model shifts them)
    assert all(lab in (chat.IGNORE, tid) for lab, tid in zip(enc.labels, enc.input_ids))
    assert chat.check_trained_text(tok, CONV, enc) is None


def test_audit_detects_a_shifted_mask(tok):
    enc = chat.encode(tok, CONV, None)
    shifted = chat.Encoded(enc.input_ids, [chat.IGNORE] + enc.labels[:-1], False, enc.total_tokens)
    assert chat.check_trained_text(tok, CONV, shifted) is not None
    user_too = chat.Encoded(enc.input_ids, list(enc.input_ids), False, enc.total_tokens)
    assert chat.check_trained_text(tok, CONV, user_too) is not None


def test_prefix_fallback_matches_generation_blocks(tok):
    """A template without {% generation %} gets the same mask through prefix rendering."""
    enc = chat.encode(tok, CONV, None)
    tok.chat_template = CHATML_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert not chat.has_generation_blocks(tok)
    fallback = chat.encode(tok, CONV, None)
    assert fallback.input_ids == enc.input_ids and fallback.labels == enc.labels


def test_truncate_and_drop(tok):
    full = chat.encode(tok, CONV, None)
    cut = chat.encode(tok, CONV, full.total_tokens - 3)
    assert cut.truncated and len(cut.input_ids) == full.total_tokens - 3 and cut.total_tokens == full.total_tokens
    assert cut.labels == full.labels[: full.total_tokens - 3]
    assert chat.check_trained_text(tok, CONV, cut) is None  # a prefix of the last turn is fine
    dropped = chat.encode(tok, CONV, full.total_tokens - 1, truncation="drop")
    assert dropped.dropped and dropped.input_ids == [] and dropped.trained_tokens == 0
    assert not chat.encode(tok, CONV, full.total_tokens).truncated


def test_count_tokens_matches_encode(tok, records):
    batch = [r["messages"] for r in records]
    counts = chat.count_tokens(tok, batch, batch_size=7)
    assert counts == [chat.encode(tok, m, None).total_tokens for m in batch]
    # the Jinja path (any other template) agrees with the fast ChatML path
    tok.chat_template = CHATML_TEMPLATE + "{# other #}"
    assert chat.count_tokens(tok, batch[:20]) == counts[:20]


def test_render_is_the_encoded_text(tok):
    enc = chat.encode(tok, CONV, None)
    assert tok.decode(enc.input_ids) == chat.render(tok, CONV)
