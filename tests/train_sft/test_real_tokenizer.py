"""The real tokenizer path: SmolLM2-135M-Instruct's tokenizer and chat template (no
`{% generation %}` blocks, a default system prompt), as `make install` converts it."""
from __future__ import annotations

import pytest

from tasks.model_registry import model_dir
from tasks.tokens import chat
from tasks.tokens.count import count_table

CONV = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?\n\nAnswer briefly."},
    {"role": "assistant", "content": "Rome.\n\nIt has been the capital since 1871."},
]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir("smollm2-135m")))


def test_labels_are_exactly_the_assistant_contents_and_their_end_of_turn_token(tok):
    assert not chat.has_generation_blocks(tok)  # the spans come from the documented prefix fallback
    text, _ = chat.assistant_char_spans(tok, CONV)
    assert text.startswith("<|im_start|>system\n")  # the template's default system prompt is not trained
    for messages in (CONV, [{"role": "system", "content": "Be brief."}, *CONV]):
        enc = chat.encode(tok, messages, None)
        spans = [tok.decode(s) for s in chat.trained_spans(enc.input_ids, enc.labels)]
        assert spans == [m["content"] + tok.eos_token for m in messages if m["role"] == "assistant"]
        assert tok.eos_token == "<|im_end|>"
        assert chat.check_trained_text(tok, messages, enc) is None
        # the token count mix uses is the length training sees
        assert chat.count_tokens(tok, [messages]) == [enc.total_tokens]


def test_truncation_keeps_a_prefix_of_the_trained_text(tok):
    full = chat.encode(tok, CONV, None)
    cut = chat.encode(tok, CONV, full.total_tokens - 5)
    assert cut.truncated and len(cut.input_ids) == full.total_tokens - 5
    assert cut.labels == full.labels[: full.total_tokens - 5]
    assert chat.check_trained_text(tok, CONV, cut) is None


def test_mix_says_why_it_counts_with_the_tokenizer(tok, tmp_path):
    counts, why = count_table([], str(model_dir("smollm2-135m") / "tokenizer.json"), tok.chat_template)
    assert counts is None and "ChatML" in why
