"""Alpaca reader: Alpaca, Self-Instruct instances, LIMA/LLaMA-Factory history, reasoning fields,
and the `columns` mapping (files written here in the published shapes)."""
import json

import pytest
from reader_helpers import records, rejects, run_reader

from tasks.errors import RecipeError
from tasks.recipe import parse_recipe


def test_instruction_input_output_and_the_hf_text_field(tmp_path):
    rows = [{"instruction": "Give three tips.", "input": "", "output": "Eat. Sleep. Move.", "text": "### Instruction..."},
            {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}]
    items, out = run_reader(tmp_path, "alpaca", rows, name="alpaca.json")
    a, b = records(out)
    assert a["messages"] == [{"role": "user", "content": "Give three tips."}, {"role": "assistant", "content": "Eat. Sleep. Move."}]
    assert a["template_id"] == "alpaca:instruction" and json.loads(a["meta"]) == {"text": "### Instruction..."}
    assert b["messages"][0]["content"] == "Translate.\n\nBonjour" and b["template_id"] == "alpaca:instruction_input"
    assert [r["origin_row"] for r in (a, b)] == [1, 2] and a["task"] == "instruction"


def test_history_and_system_become_earlier_turns(tmp_path):
    row = {"instruction": "And the third?", "input": "", "output": "Gamma.", "system": "Be terse.",
           "history": [["First letter?", "Alpha."], ["Second?", "Beta."]]}
    (r,) = records(run_reader(tmp_path, "alpaca", [row])[1])
    assert [(m["role"], m["content"]) for m in r["messages"]] == [
        ("system", "Be terse."), ("user", "First letter?"), ("assistant", "Alpha."), ("user", "Second?"),
        ("assistant", "Beta."), ("user", "And the third?"), ("assistant", "Gamma.")]


def test_self_instruct_instances_give_one_record_each(tmp_path):
    row = {"id": "seed_task_7", "name": "antonyms", "instruction": "Give the antonym.",
           "instances": [{"input": "hot", "output": "cold"}, {"input": "up", "output": ""}, {"input": "big", "output": "small"}],
           "is_classification": False}
    _, out = run_reader(tmp_path, "alpaca", [row])
    recs, rejs = records(out), rejects(out)
    assert [r["messages"][1]["content"] for r in recs] == ["cold", "small"]
    assert [r["example_id"] for r in recs] == ["seed_task_7:0", "seed_task_7:2"]
    assert json.loads(recs[0]["meta"]) == {"name": "antonyms", "is_classification": False, "instance": 0}
    (rej,) = rejs
    assert rej["reason"] == "empty_turn" and rej["detail"].startswith("instances[1]: ")


def test_reasoning_field_through_columns(tmp_path):
    # s1K / HuatuoGPT-o1 shape: question, a thinking trace and an answer in fields with other names
    row = {"Question": "Is 7 prime?", "Complex_CoT": "7 has no divisor but 1 and 7.", "Response": "Yes.", "answer_idx": "A"}
    (r,) = records(run_reader(tmp_path, "alpaca", [row], options={"columns": {
        "instruction": "Question", "output": "Response", "reasoning": "Complex_CoT"}})[1])
    assert r["messages"][1] == {"role": "assistant", "content": "Yes.", "reasoning": "7 has no divisor but 1 and 7."}
    assert json.loads(r["meta"]) == {"answer_idx": "A"}  # mapped fields are not repeated in meta


@pytest.mark.parametrize("row, reason, named", [
    ({"Instruction": "Write a poem.", "Skill": "Writting"}, "missing_field", "'output'"),  # an instructions-only test set
    ({"instruction": "x", "output": 3}, "wrong_type", "'output'"),
    ({"instruction": None, "output": "y"}, "null_field", "'instruction'"),
    ({"instruction": "x", "output": "y", "history": [["only one"]]}, "wrong_type", "history[0]"),
    ({"instruction": "x", "output": "  "}, "empty_turn", "empty"),
    ({"instruction": "x", "instances": []}, "wrong_type", "instances"),
])
def test_rejects(tmp_path, row, reason, named):
    (r,) = rejects(run_reader(tmp_path, "alpaca", [row], options={"columns": {"instruction": "Instruction"}}
                              if "Instruction" in row else {})[1])
    assert r["reason"] == reason and named in r["detail"]


def test_empty_instruction_after_history_keeps_the_complete_exchanges(tmp_path):
    row = {"instruction": "", "input": "", "output": "orphan answer", "history": [["q", "a"]]}
    (r,) = records(run_reader(tmp_path, "alpaca", [row])[1])
    assert [m["content"] for m in r["messages"]] == ["q", "a"]
    assert json.loads(r["meta"])["repairs"][0]["repair"] == "cut_at_empty_turn"


@pytest.mark.parametrize("columns, message", [
    ({"instructoin": "q"}, "unknown fields ['instructoin']"),
    ({"instruction": 3}, "instruction must be the dataset's field name"),
    ({"instruction": "q", "roles": {"a": "user"}}, "roles must map"),
    ("instruction=q", "must be a mapping"),
])
def test_columns_are_checked_at_recipe_load(tmp_path, columns, message):
    (tmp_path / "d.jsonl").write_text("")
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_recipe({"sources": [{"name": "s", "format": "alpaca", "path": str(tmp_path / "d.jsonl"),
                                   "options": {"columns": columns}}]}, tmp_path)


def test_unknown_role_mapping_is_refused_at_recipe_load(tmp_path):
    (tmp_path / "d.jsonl").write_text("")
    with pytest.raises(RecipeError, match="name no sharegpt role"):
        parse_recipe({"sources": [{"name": "s", "format": "sharegpt", "path": str(tmp_path / "d.jsonl"),
                                   "options": {"columns": {"roles": {"bot": "robot"}}}}]}, tmp_path)
