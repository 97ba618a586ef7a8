"""Assistant-only label masks, trained-span decoding, truncation and token counts."""
from __future__ import annotations

import pytest

from tasks.tokens import chat
from tasks.tokens.tokenizer import CHATML_TEMPLATE, IM_END, load_tokenizer

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


# -- tool calls, tool results and reasoning ----------------------------------------------
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
TOOL_CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "", "reasoning": "I should ask the tool.",
     "tool_calls": [{"id": "c1", "name": "get_weather", "arguments": '{"city": "Oslo"}'}]},
    {"role": "tool", "content": "rain and wind", "tool_call_id": "c1", "name": "get_weather"},
    {"role": "assistant", "content": "It rains in Oslo.", "reasoning": "The tool said rain."},
]


def test_tiny_template_renders_tools_calls_and_reasoning_the_tuneline_way(tok):
    text = chat.render(tok, TOOL_CONV, tools=TOOLS)
    assert "<tools>\n" + '{"type": "function"' in text and "Be brief.\n\n<tools>" in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    assert "<|im_start|>tool\nrain and wind<|im_end|>" in text
    assert "<think>\nThe tool said rain.\n</think>\n\nIt rains in Oslo." in text


def test_loss_is_on_calls_and_answers_never_on_tool_results_system_or_user(tok):
    enc = chat.encode(tok, TOOL_CONV, None, tools=TOOLS)
    spans = [tok.decode(s, skip_special_tokens=True) for s in chat.trained_spans(enc.input_ids, enc.labels)]
    assert len(spans) == 2
    assert "get_weather" in spans[0] and "I should ask the tool." in spans[0]
    assert spans[1].strip() == "<think>\nThe tool said rain.\n</think>\n\nIt rains in Oslo."
    assert not any("rain and wind" in s or "Weather in Oslo" in s or "<tools>" in s for s in spans)
    assert chat.check_trained_text(tok, TOOL_CONV, enc) is None


@pytest.mark.parametrize("policy, kept", [("keep", [True, True]), ("drop", [False, False]),
                                          ("last_turn", [False, True])])
def test_reasoning_policy_decides_what_is_trained_and_the_audit_checks_it(tok, policy, kept):
    enc = chat.encode(tok, TOOL_CONV, None, tools=TOOLS, reasoning=policy)
    trained = tok.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != chat.IGNORE])
    assert ["I should ask the tool." in trained, "The tool said rain." in trained] == kept
    assert chat.check_trained_text(tok, TOOL_CONV, enc, reasoning=policy) is None
    if policy != "keep":  # a mask trained with every trace fails an audit that expects them dropped
        full = chat.encode(tok, TOOL_CONV, None, tools=TOOLS, reasoning="keep")
        assert "dropped reasoning trace is trained" in chat.check_trained_text(tok, TOOL_CONV, full, reasoning=policy)


def test_unknown_reasoning_policy_is_refused(tok):
    with pytest.raises(ValueError, match="reasoning must be one of"):
        chat.encode(tok, TOOL_CONV, None, reasoning="sometimes")


TOOL_TEMPLATE = (  # a template that renders tools and tool calls itself (Hermes style, no generation blocks)
    "{%- if tools %}{{ '<|im_start|>system\n' }}{% for t in tools %}{{ t | tojson }}{% endfor %}{{ '<|im_end|>\n' }}{% endif %}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{%- if message.tool_calls %}{% for c in message.tool_calls %}"
    "{{ '<call>' + c.function.name + ' ' + (c.function.arguments | tojson) + '</call>' }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def test_a_template_with_tool_support_gets_tools_and_calls_through_apply_chat_template(tok):
    tok.chat_template = TOOL_TEMPLATE
    assert chat.supports_tools(tok)
    text = chat.render(tok, TOOL_CONV, tools=TOOLS)
    assert '"name": "get_weather"' in text.split("<|im_end|>")[0]  # the tools block comes first
    assert '<call>get_weather {"city": "Oslo"}</call>' in text
    enc = chat.encode(tok, TOOL_CONV, None, tools=TOOLS, reasoning="drop")
    spans = [tok.decode(s, skip_special_tokens=True) for s in chat.trained_spans(enc.input_ids, enc.labels)]
    assert "<call>get_weather" in spans[0] and not any("rain and wind" in s for s in spans)
    assert chat.check_trained_text(tok, TOOL_CONV, enc, reasoning="drop") is None


def test_token_counts_include_tools(tok):
    plain, with_tools = chat.count_tokens(tok, [TOOL_CONV, TOOL_CONV], tools=[None, TOOLS])
    assert with_tools > plain
    assert with_tools == len(chat.encode(tok, TOOL_CONV, None, tools=TOOLS).input_ids)


def test_pretraining_text_is_rendered_as_is_and_every_token_is_trained(tok):
    doc = [{"role": "assistant", "content": "the blue cat sat on the red mat"}]
    enc = chat.encode(tok, doc, None)
    assert tok.decode(enc.input_ids) == "the blue cat sat on the red mat" + tok.eos_token
    assert enc.labels == enc.input_ids
    assert chat.check_trained_text(tok, doc, enc) is None
    assert chat.count_tokens(tok, [doc, CONV]) == [len(enc.input_ids), len(chat.encode(tok, CONV, None).input_ids)]
