"""ShareGPT reader: layouts (array, single object, JSONL) and the documented policy."""
import json

import pytest

from tasks.ingest.registry import READERS
from tasks.recipe import parse_recipe


def _run(tmp_path, convs, name="c.jsonl", layout="jsonl"):
    p = tmp_path / name
    if layout == "jsonl":
        p.write_text("\n".join(json.dumps(c, ensure_ascii=False) for c in convs) + "\n", encoding="utf-8")
    else:
        p.write_text(json.dumps(convs, ensure_ascii=False, indent=2), encoding="utf-8")
    rc = parse_recipe({"sources": [{"name": "sg", "format": "sharegpt", "path": str(p)}]}, tmp_path)
    src = rc.sources[0]
    items = list(READERS["sharegpt"].read(rc, src, str(p)))
    return items, list(READERS["sharegpt"].convert(rc, src, [(str(p), i[1], i[2]) for i in items if i[0] == "row"]))


def turns(*pairs):
    return [{"from": f, "value": v} for f, v in pairs]


def test_layouts(tmp_path):
    conv = {"id": "x1", "conversations": turns(("human", "hi"), ("gpt", "hello")), "model": "m"}
    for name, layout, data in [("a.json", "doc", [conv, conv]), ("o.json", "doc", conv), ("l.jsonl", "jsonl", [conv])]:
        items, out = _run(tmp_path, data, name, layout)
        assert all(i[0] == "row" for i in items)
        assert out[0]["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        assert out[0]["example_id"] == "x1" and json.loads(out[0]["meta"]) == {"id": "x1", "model": "m"}
    assert [r["origin_row"] for r in _run(tmp_path, [conv, conv], "a.json", "doc")[1]] == [1, 2]


def test_roles_and_multi_turn(tmp_path):
    conv = {"conversations": turns(("system", "Be brief."), ("user", "a"), ("chatgpt", "b"), ("Human", "c"),
                                   ("bard", "d"), ("human", "e"), ("assistant", "f"))}
    _, (r,) = _run(tmp_path, [conv])
    assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert r["n_turns"] == 7 and r["task"] == "conversation" and len(r["example_id"]) == 20


@pytest.mark.parametrize("conv,reason", [
    (turns(("narrator", "x"), ("gpt", "y")), "unknown_role"),
    (turns(("human", "x"), ("gpt", "  ")), "empty_turn"),
    (turns(("human", "x")), "no_assistant_turn"),
    (turns(("human", "x"), ("gpt", "y"), ("system", "z"), ("gpt", "w")), "misplaced_system"),
    ([], "empty_conversation"),
    ([{"from": "human"}], "missing_field"),
    ([{"from": "human", "value": 3}], "wrong_type"),
    ("text", "wrong_type"),
    (None, "null_field"),
])
def test_rejects(tmp_path, conv, reason):
    _, (r,) = _run(tmp_path, [{"conversations": conv}])
    assert r["reason"] == reason and r["step"] == "convert" and r["origin_row"] == 1 and r["detail"]


def test_repairs_are_recorded(tmp_path):
    convs = [
        {"conversations": turns(("gpt", "Welcome."), ("human", "q"), ("gpt", "a"))},
        {"conversations": turns(("human", "q1"), ("human", "q2"), ("gpt", "a1"), ("gpt", "a2"))},
        {"conversations": turns(("human", "q"), ("gpt", "a"), ("human", "bye"))},
    ]
    _, out = _run(tmp_path, convs)
    first, merged, trailing = out
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert json.loads(first["meta"])["repairs"] == [{"repair": "dropped_leading_assistant", "turns": [0], "text": "Welcome."}]
    assert merged["messages"] == [{"role": "user", "content": "q1\n\nq2"}, {"role": "assistant", "content": "a1\n\na2"}]
    assert [r["repair"] for r in json.loads(merged["meta"])["repairs"]] == ["merged_same_role", "merged_same_role"]
    assert trailing["messages"][-1]["role"] == "assistant"
    assert json.loads(trailing["meta"])["repairs"] == [{"repair": "dropped_trailing_user", "turns": [2], "text": "bye"}]


# -- tool calling (LLaMA-Factory's ShareGPT dialect), system and tools fields, columns ------------
TOOLS = [{"name": "weather", "description": "d", "parameters": {"type": "object", "properties": {}}}]


def test_function_call_and_observation_roles_with_tools_and_system(tmp_path):
    conv = {"conversations": turns(("human", "Weather in Oslo?"), ("gpt", "Let me look."),
                                   ("function_call", json.dumps({"name": "weather", "arguments": {"city": "Oslo"}})),
                                   ("observation", "{\"sky\": \"rain\"}"), ("gpt", "Rain.")),
            "system": "You are a helper.", "tools": json.dumps(TOOLS)}
    _, (r,) = _run(tmp_path, [conv])
    m = r["messages"]
    assert [x["role"] for x in m] == ["system", "user", "assistant", "tool", "assistant"]
    assert m[0]["content"] == "You are a helper."
    assert m[2] == {"role": "assistant", "content": "Let me look.",
                    "tool_calls": [{"id": None, "name": "weather", "arguments": '{"city": "Oslo"}'}]}
    assert m[3]["content"] == "{\"sky\": \"rain\"}"
    assert json.loads(r["tools"]) == [{"type": "function", "function": TOOLS[0]}]
    assert "tools" not in json.loads(r["meta"]) and "system" not in json.loads(r["meta"])


def test_function_call_that_is_not_json_is_rejected_with_its_reason(tmp_path):
    conv = {"conversations": turns(("human", "q"), ("function_call", "weather(Oslo)"), ("observation", "r"), ("gpt", "a"))}
    _, (r,) = _run(tmp_path, [conv])
    assert r["reason"] == "bad_tool_call" and "conversations[1]" in r["detail"]


def test_empty_turn_cuts_after_the_complete_exchanges(tmp_path):
    conv = {"conversations": turns(("human", "q1"), ("gpt", "a1"), ("human", "q2"), ("gpt", " "))}
    _, (r,) = _run(tmp_path, [conv])
    assert [x["content"] for x in r["messages"]] == ["q1", "a1"]
    assert [x["repair"] for x in json.loads(r["meta"])["repairs"]] == ["cut_at_empty_turn", "dropped_trailing_user"]


def test_columns_and_roles_map_another_dataset_shape(tmp_path):
    p = tmp_path / "o.jsonl"
    p.write_text(json.dumps({"dialog": [{"speaker": "Q", "text": "hi"}, {"speaker": "A", "text": "hello"}]}) + "\n")
    rc = parse_recipe({"sources": [{"name": "sg", "format": "sharegpt", "path": str(p), "options": {"columns": {
        "conversations": "dialog", "from": "speaker", "value": "text", "roles": {"Q": "human", "A": "gpt"}}}}]}, tmp_path)
    items = list(READERS["sharegpt"].read(rc, rc.sources[0], str(p)))
    (r,) = READERS["sharegpt"].convert(rc, rc.sources[0], [(str(p), i[1], i[2]) for i in items])
    assert r["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
