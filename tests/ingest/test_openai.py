"""OpenAI `messages` reader: tool calls and results, reasoning, content parts, legacy functions,
and the dialects of published files (written here in their shapes)."""
import json

import pytest
from reader_helpers import records, rejects, run_reader

TOOLS = [{"type": "function", "function": {"name": "set_altitude", "description": "d",
                                           "parameters": {"type": "object", "properties": {}}}}]


def _one(tmp_path, row, **kw):
    _, out = run_reader(tmp_path, "openai", [row], **kw)
    assert len(out) == 1
    return out[0]


def test_fine_tuning_file_with_tools_and_a_call_without_content(tmp_path):
    # OpenAI fine-tuning layout: no `content` key on the assistant call; the record ends on the call
    row = {"messages": [{"role": "system", "content": "You fly drones."}, {"role": "user", "content": "Go up 100 m"},
                        {"role": "assistant", "tool_calls": [{"id": "call_id", "type": "function", "function": {
                            "name": "set_altitude", "arguments": "{\"altitude\": 100}"}}]}],
           "parallel_tool_calls": False, "tools": TOOLS}
    r = _one(tmp_path, row)
    assert r["messages"][-1] == {"role": "assistant", "content": "",
                                 "tool_calls": [{"id": "call_id", "name": "set_altitude", "arguments": '{"altitude": 100}'}]}
    assert json.loads(r["tools"]) == TOOLS
    assert json.loads(r["meta"]) == {"parallel_tool_calls": False}


@pytest.mark.parametrize("arguments, expected", [
    ('{"a": 1}', '{"a": 1}'),                  # a JSON string
    ({"a": 1}, '{"a": 1}'),                    # an object (xtuner)
    (json.dumps('{"a": 1}'), '{"a": 1}'),      # double-encoded (the cookbook's later records)
    ("import os", "import os"),                # raw code: kept, validate rejects it
    (None, "{}"),
])
def test_arguments_become_json_text(tmp_path, arguments, expected):
    row = {"messages": [{"role": "user", "content": "q"},
                        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": arguments}}]}]}
    call = _one(tmp_path, row)["messages"][1]["tool_calls"][0]
    assert call == {"id": None, "name": "f", "arguments": expected}


def test_two_system_messages_results_ids_reasoning_and_parts(tmp_path):
    row = {"messages": [
        {"role": "system", "content": "Rule one."}, {"role": "system", "content": "Rule two."},
        {"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Paris?"}]},
        {"role": "assistant", "content": None, "reasoning_content": "\nneed the tool\n",
         "tool_calls": [{"id": "1", "function": {"name": "w", "arguments": "{}"}, "type": "function"},
                        {"id": "1", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "1", "name": "w", "content": "{\"t\": 20}"},
        {"role": "tool", "tool_call_id": "1", "name": "w", "content": "{\"t\": 21}"},
        {"role": "assistant", "content": "20 degrees.", "tool_calls": None, "loss": False}], "tools": []}
    r = _one(tmp_path, row)
    m = r["messages"]
    assert [x["role"] for x in m] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert m[0]["content"] == "Rule one.\n\nRule two." and m[1]["content"] == "Weather\nin Paris?"
    assert m[2]["reasoning"] == "\nneed the tool\n" and len(m[2]["tool_calls"]) == 2
    assert m[3] == {"role": "tool", "content": "{\"t\": 20}", "tool_call_id": "1", "name": "w"}
    meta = json.loads(r["meta"])
    assert meta["turn_extras"] == {"6": {"loss": False}}
    assert {x["repair"] for x in meta["repairs"]} == {"merged_same_role"}
    assert r["tools"] is None  # an empty list offers nothing


def test_legacy_functions_api(tmp_path):
    row = {"functions": [{"name": "get_time", "parameters": {"type": "object"}}],
           "messages": [{"role": "user", "content": "Time?"},
                        {"role": "assistant", "content": None,
                         "function_call": {"name": "get_time", "arguments": "{\n  \"tz\": \"UTC\"\n}"}},
                        {"role": "function", "name": "get_time", "content": "{'time': '10:00'}"},
                        {"role": "assistant", "content": "It is ten."}]}
    r = _one(tmp_path, row)
    assert r["messages"][1]["tool_calls"][0]["name"] == "get_time"
    assert r["messages"][2] == {"role": "tool", "content": "{'time': '10:00'}", "name": "get_time"}
    assert json.loads(r["tools"]) == [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]


def test_growing_prefixes_read_the_longest_and_columns_reach_nested_fields(tmp_path):
    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
            {"role": "assistant", "content": None, "function_call": {"name": "Finish", "arguments": "{}"}},
            {"role": "function", "name": "Finish", "content": "ok"}, {"role": "assistant", "content": "done"}]
    row = {"answer": {"train_messages": [conv[:3], conv], "function": [{"name": "Finish"}]}, "win": True}
    r = _one(tmp_path, row, name="a.json",
             options={"columns": {"messages": "answer.train_messages", "functions": "answer.function"}})
    assert len(r["messages"]) == 5 and json.loads(r["meta"])["prefixes"] == [3, 5]
    assert json.loads(r["tools"])[0]["function"]["name"] == "Finish"


def test_inline_think_block_becomes_reasoning(tmp_path):
    row = {"messages": [{"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "<think>\n2 and 2 make 4.\n</think>\n\nFour."}]}
    m = _one(tmp_path, row)["messages"][1]
    assert m == {"role": "assistant", "content": "Four.", "reasoning": "2 and 2 make 4."}


@pytest.mark.parametrize("messages, reason, named", [
    ([{"role": "user", "content": [{"type": "video", "video": {"url": "v.mp4"}}, {"type": "text", "text": "what?"}]},
      {"role": "assistant", "content": "a cat"}], "unsupported_modality", "messages[0].content[0] is a 'video' part"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, {"role": "assistant", "content": "x"}],
     "unsupported_modality", "'image_url'"),
    ([{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}], "unknown_role", "narrator"),
    ([{"content": "x"}], "missing_field", "messages[0].role"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}],
     "missing_field", "name"),
    ([{"role": "user", "content": "x"}], "no_assistant_turn", "no assistant"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}], "empty_turn", "turn 1"),
])
def test_rejects_name_their_reason(tmp_path, messages, reason, named):
    (r,) = rejects(run_reader(tmp_path, "openai", [{"messages": messages}])[1])
    assert r["reason"] == reason and named in r["detail"] and r["origin_row"] == 1


@pytest.mark.parametrize("row, reason", [({}, "missing_field"), ({"messages": None}, "null_field"),
                                         ({"messages": "hi"}, "wrong_type"), ({"messages": []}, "empty_conversation"),
                                         ({"messages": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]},
                                          "wrong_type"),
                                         ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                           "tools": "not json"}, "bad_json")])
def test_row_level_rejects(tmp_path, row, reason):
    (r,) = run_reader(tmp_path, "openai", [row])[1]
    assert r["reason"] == reason


def test_empty_turn_cuts_the_conversation_keeping_complete_exchanges(tmp_path):
    msgs = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": ""}, {"role": "assistant", "content": "a2"}]
    (r,) = records(run_reader(tmp_path, "openai", [{"messages": msgs}])[1])
    assert [m["content"] for m in r["messages"]] == ["q1", "a1"]
    assert json.loads(r["meta"])["repairs"] == [{"repair": "cut_at_empty_turn", "turns": [2, 3], "text": "a2"}]


def test_trailing_tool_result_is_dropped_so_the_record_ends_on_the_call(tmp_path):
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [{"id": "9", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "9", "content": "r"}]
    (r,) = records(run_reader(tmp_path, "openai", [{"messages": msgs}])[1])
    assert r["messages"][-1]["role"] == "assistant"
    assert json.loads(r["meta"])["repairs"][0]["repair"] == "dropped_trailing_tool"


def test_parquet_and_role_mapping(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"conv": [[{"speaker": "me", "text": "hi"}, {"speaker": "bot", "text": "hello"}]]}), p)
    from tasks.ingest.registry import READERS
    from tasks.recipe import parse_recipe

    rc = parse_recipe({"sources": [{"name": "s", "format": "openai", "path": str(p), "options": {"columns": {
        "messages": "conv", "role": "speaker", "content": "text", "roles": {"me": "user", "bot": "assistant"}}}}]}, tmp_path)
    items = list(READERS["openai"].read(rc, rc.sources[0], str(p)))
    (r,) = READERS["openai"].convert(rc, rc.sources[0], [(str(p), i[1], i[2]) for i in items])
    assert r["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
