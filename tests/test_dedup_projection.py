"""Dedup projections see reasoning traces and tool calls (tasks.schema.text_messages)."""
import pyarrow as pa

from tasks.dedup import minhash as mh
from tasks.schema import MESSAGE, text_messages


def conv(city, reasoning=None):
    return [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "reasoning": reasoning,
             "tool_calls": [{"id": "1", "name": "get_weather", "arguments": f'{{"city": "{city}"}}'}]},
            {"role": "tool", "content": "rain"}, {"role": "assistant", "content": "Rain."}]


def test_projections_cover_calls_reasoning_and_tool_results():
    msgs = text_messages(pa.array([conv("Oslo", "ask the tool"), conv("Lima"), conv("Oslo")], pa.list_(MESSAGE)))
    prompt, response, conversation = (mh.project(msgs, p) for p in ("prompt", "response", "conversation"))
    assert prompt == ["Weather?"] * 3
    assert response[0] == 'ask the tool\nget_weather({"city": "Oslo"})\nRain.'
    assert response[1] != response[2]  # calls that differ in their arguments are different responses
    assert response[0] != response[2]  # so are replies that differ only in their reasoning
    assert conversation[2] == 'Weather?\nget_weather({"city": "Oslo"})\nrain\nRain.'


def test_sliced_and_plain_two_field_arrays():
    full = pa.array([conv("A"), [], conv("B")], pa.list_(MESSAGE)).slice(1, 2)
    assert [len(x) for x in text_messages(full).to_pylist()] == [0, 4]
    legacy = pa.array([[{"role": "user", "content": "x"}]], pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))
    assert text_messages(legacy) is legacy
