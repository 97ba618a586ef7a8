"""Decontamination's prompt side covers tool results and pretraining text, not what the model writes."""
import pyarrow as pa

from tasks import decontam
from tasks.schema import RECORDS

QUESTION = "which planet in the solar system has the largest number of confirmed natural moons today"


def rows(*conversations):
    out = []
    for i, msgs in enumerate(conversations):
        out.append({"record_id": f"r{i}", "source": "s", "task": "t", "template_id": "", "example_id": f"e{i}",
                    "messages": msgs, "answer_choices": [], "origin_file": "f", "origin_row": i + 1,
                    "n_turns": len(msgs), "n_chars": 0, "lang": None, "meta": "{}", "tools": None})
    return pa.Table.from_pylist(out, schema=RECORDS)


def test_prompt_turns_are_user_turns_tool_results_and_pretraining_text():
    table = rows(
        [{"role": "user", "content": "u0"}, {"role": "assistant", "content": "a0", "reasoning": "r0",
                                             "tool_calls": [{"id": "1", "name": "f", "arguments": "{}"}]},
         {"role": "tool", "content": "t0"}, {"role": "assistant", "content": "a1"}],
        [{"role": "assistant", "content": "a pretraining document"}],
    )
    got = decontam.user_turns(table).to_pylist()
    assert got == [{"row_idx": 0, "text": "u0"}, {"row_idx": 0, "text": "t0"}, {"row_idx": 1, "text": "a pretraining document"}]


def test_a_benchmark_question_in_a_tool_result_or_a_document_is_contamination():
    heldout = decontam.heldout_prompts(rows([{"role": "user", "content": QUESTION.capitalize() + "?"},
                                             {"role": "assistant", "content": "Saturn."}]).to_batches())
    from tasks.config import DecontaminationConfig

    matcher = decontam.Decontaminator(heldout, DecontaminationConfig())
    train = rows(
        [{"role": "user", "content": "Look this up."}, {"role": "assistant", "content": "",
                                                       "tool_calls": [{"id": "1", "name": "search", "arguments": "{}"}]},
         {"role": "tool", "content": f"Top result: {QUESTION}? Saturn, with 146."}, {"role": "assistant", "content": "Saturn."}],
        [{"role": "assistant", "content": f"Blog post. Readers asked {QUESTION}. The answer changes often."}],
        [{"role": "user", "content": "Name a planet."}, {"role": "assistant", "content": f"You may wonder {QUESTION}."}],
    )
    hit = sorted(set(matcher.match(decontam.user_turns(train)).column("row_idx").to_pylist()))
    assert hit == [0, 1]  # an assistant reply is what the model writes, not a prompt
