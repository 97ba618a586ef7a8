"""Opt-in: every file of ../shared/data/real/formats and ../shared/data/real/lima through the ingest
and convert steps: each row a record or a reject with a reason, no reject for a feature the schema
has (skipped when the samples are absent)."""
from __future__ import annotations

import collections
from pathlib import Path

import pytest

from tasks.config import Recipe
from tasks.convert import convert_shard
from tasks.ingest.run import ingest_file
from tasks.recipe import parse_recipe
from tasks.validate import tool_problems

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
F = "formats"
pytestmark = [pytest.mark.real_data, pytest.mark.skipif(not REAL.exists(), reason=f"{REAL} not found")]

S1K = {"columns": {"instruction": "question", "output": "gemini_attempt", "reasoning": "gemini_thinking_trajectory"}}
P3_COMPLETION = {"columns": {"instruction": "prompt", "output": "completion"}}
#: path (relative to REAL), format, options, (rows in, records, {reject reason: rows})
FILES = [
    (f"{F}/tool_calls/openai_cookbook_drone_training.first5.jsonl", "openai", {}, (5, 5, {})),
    (f"{F}/tool_calls/mistral_common_samples.DERIVED.jsonl", "openai", {}, (6, 6, {})),
    *[(f"{F}/tool_calls/mistral_common/{n}/sample.json", "openai", {}, (1, 1, {}))
      for n in ("get_weather_full", "get_weather_no_history", "get_weather_no_system_prompt", "no_tools",
                "parallel_calls", "several_calls")],
    *[(f"{F}/tool_calls/functionary/{n}", "openai", {}, (1, 1, {}))
      for n in ("test_case.json", "test_case_v1.json", "test_case_v2.json")],
    (f"{F}/tool_calls/toolbench/G1_answer_10_ChatGPT_DFS_woFilter_w2.json", "openai",
     {"columns": {"messages": "answer_generation.train_messages", "functions": "answer_generation.function"}}, (1, 1, {})),
    # queries without answers: nothing to train on
    (f"{F}/tool_calls/toolbench/G1_query.json", "alpaca", {"columns": {"instruction": "query", "id": "query_id"}},
     (5, 0, {"missing_field": 5})),
    (f"{F}/reasoning/xtuner_qwen35_tokenize_data.jsonl", "openai", {}, (17, 12, {"unsupported_modality": 5})),
    (f"{F}/reasoning/curator_s1k_format_reasoning_dataset.parquet", "alpaca", S1K, (5, 5, {})),
    (f"{F}/reasoning/curator_s1k_format_reasoning_dataset.DERIVED.jsonl", "alpaca", S1K, (5, 5, {})),
    (f"{F}/reasoning/huatuogpt_o1_demo_data.first50.json", "alpaca",
     {"columns": {"instruction": "Question", "output": "Response", "reasoning": "Complex_CoT"}}, (50, 50, {})),
    (f"{F}/alpaca_selfinstruct/torchtune_alpaca_tiny.json", "alpaca", {}, (100, 100, {})),
    (f"{F}/alpaca_selfinstruct/self_instruct_seed_tasks.jsonl", "alpaca", {}, (175, 175, {})),
    (f"{F}/alpaca_selfinstruct/self_instruct_user_oriented_instructions.jsonl", "alpaca", {}, (252, 252, {})),
    (f"{F}/oasst/oa_en_100_tree.first20.jsonl", "oasst", {}, (20, 103, {})),
    (f"{F}/oasst/oa_en_100_message.first20.jsonl", "oasst", {"paths": "best"}, (20, 20, {})),
    # 291 flat messages rebuilt into 49 trees (one row each)
    (f"{F}/oasst/oa_backend_realistic_seed_data.first291.json", "oasst",
     {"columns": {"message_id": "user_message_id", "parent_id": "parent_message_id"}}, (49, 102, {})),
    (f"{F}/super_ni/task1146_country_capital.first79.json", "super_ni", {}, (79, 79, {})),
    (f"{F}/super_ni/task1152_bard_analogical_reasoning_causation.first69.json", "super_ni", {}, (69, 69, {})),
    (f"{F}/xp3_p3/self_instruct_t0_train_50k_ag_news_classify_with_choices.jsonl", "alpaca", P3_COMPLETION, (200, 200, {})),
    (f"{F}/xp3_p3/self_instruct_t0_train_50k_cosmos_qa_context_question_description_answer_text.jsonl", "alpaca",
     P3_COMPLETION, (200, 200, {})),
    # the Evol-Instruct test set has instructions only
    (f"{F}/wizardlm_baize_unnatural/WizardLM_testset.jsonl", "alpaca", {"columns": {"instruction": "Instruction", "id": "idx"}},
     (218, 0, {"missing_field": 218})),
    (f"{F}/pretrain_text/dolma_cc_en_head-0091.jsonl", "text", {}, (10, 10, {})),
    (f"{F}/pretrain_text/dolma_cc_en_head-0091.jsonl.gz", "text", {}, (10, 10, {})),
    (f"{F}/pretrain_text/llm_foundry_arxiv.first16.jsonl", "text", {}, (16, 16, {})),
    ("lima/llamafactory_lima.json", "alpaca", {}, (1029, 1029, {})),
]


def ingest_and_convert(store, tmp_path, path: str, fmt: str, options: dict):
    """(ingest manifest, convert manifest, rejects by reason) of one file through both steps."""
    rd = parse_recipe({"max_reject_share": 1.0,
                       "sources": [{"name": "real", "format": fmt, "path": str(REAL / path), "options": options}]},
                      tmp_path).model_dump(by_alias=True)
    rc = Recipe.model_validate(rd)
    (file,) = rc.source_files(rc.sources[0])
    ing = ingest_file(str(store.root), rd, "real", file)
    conv = convert_shard(str(store.root), rd, ing)
    reasons = collections.Counter(r["reason"] for m in (ing, conv) for r in store.read(m, "rejects").to_pylist())
    return ing, conv, dict(reasons)


def test_every_shared_file_is_listed():
    listed = {p for p, *_ in FILES}
    on_disk = {str(p.relative_to(REAL)) for d in ("formats", "lima") for p in (REAL / d).rglob("*")
               if p.is_file() and p.name != "SOURCES.md"}
    assert on_disk == listed


@pytest.mark.parametrize("path, fmt, options, expected", FILES, ids=[f[0].split("/", 1)[-1] for f in FILES])
def test_real_file_rows_are_records_or_rejects_with_a_reason(tmp_path, store, path, fmt, options, expected):
    ing, conv, reasons = ingest_and_convert(store, tmp_path, path, fmt, options)
    si, sc = ing["stats"], conv["stats"]
    assert si["rows_in"] == si["rows_out"] + si["rows_rejected"] and sc["rows_in"] == si["rows_out"]
    raw = {r["origin_row"] for r in store.read(ing, "records_raw", columns=["origin_row"]).to_pylist()}
    rec = {r["origin_row"] for r in store.read(conv, "records", columns=["origin_row"]).to_pylist()}
    rej = {r["origin_row"] for r in store.read(conv, "rejects", columns=["origin_row"]).to_pylist()}
    assert raw == rec | rej
    assert (si["rows_in"], sc["records_out"], reasons) == expected
    assert not {"unknown_role", "empty_turn", "wrong_type", "bad_tool_call"} & set(reasons)


def test_real_tool_calls_and_reasoning_reach_the_records(tmp_path, store):
    found = collections.Counter()
    for path, fmt, options, _ in FILES:
        if "tool_calls" in path or "reasoning" in path:
            _, conv, _ = ingest_and_convert(store, tmp_path / Path(path).stem, path, fmt, options)
            for r in store.read(conv, "records").to_pylist():
                msgs = r["messages"]
                found["tools"] += bool(r["tools"])
                found["calls"] += sum(len(m["tool_calls"] or []) for m in msgs)
                found["results"] += sum(m["role"] == "tool" for m in msgs)
                found["reasoning"] += sum(bool(m["reasoning"]) for m in msgs)
                for kind in tool_problems(msgs, r["tools"]):
                    found[f"{Path(path).name}:{kind}"] += 1
    assert found["tools"] >= 15 and found["calls"] >= 25 and found["results"] >= 15 and found["reasoning"] >= 60
    # quirks of the sources the validate step rejects, each with its own reason
    assert found["xtuner_qwen35_tokenize_data.jsonl:unoffered_tool"] >= 1  # calls get_weather, offers others
    assert found["test_case.json:bad_tool_arguments"] == 1  # functionary's python tool takes raw code
    assert not any(k.endswith("orphan_tool_result") for k in found)
