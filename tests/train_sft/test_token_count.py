"""The parallel token counter (tiktoken over the pipeline's byte-level BPE) against the tokenizer itself."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.schema import RECORDS
from tasks.tokens import count as token_count
from tasks.tokens.chat import count_tokens, render_batch
from tasks.tokens.tokenizer import CHATML_TEMPLATE, load_tokenizer, tokenizer_dir

ODD_TEXTS = [
    "It's what they're doing: we'll see, I'd say, you've 10,000.5 reasons",
    "tabs\tand\n\nnewlines  with   runs of spaces   \n ",
    "café naïve — “quotes” ½ ﬁ ligature",
    "中文没有空格的句子。日本語のテキスト",
    "emoji 🙂👍🏽 and zero\u200bwidth",
    "trailing space ",
    " leading space",
    "",
    "<|im_end|> inside the text, and <|im_start|>",
]


def _rows(records):
    """The fixture's records plus conversations of awkward text (None and empty contents too)."""
    rows = [dict(r) for r in records]
    for i, text in enumerate(ODD_TEXTS):
        msgs = [{"role": "system", "content": None}, {"role": "user", "content": text},
                {"role": "assistant", "content": text[::-1]}]
        rows.append({**records[0], "record_id": f"odd{i}", "messages": msgs, "n_turns": 3})
    return rows


def _table_files(tmp_path, rows, row_group_size=40):
    path = tmp_path / "records_valid-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORDS), path, row_group_size=row_group_size)
    return [path]


@pytest.fixture
def tokenizer_json(prepared):
    root, _recipe, _vm, tm = prepared
    return tokenizer_dir(root, tm) / "tokenizer.json", load_tokenizer(root, tm)


def test_chatml_texts_in_arrow_equal_the_template(tokenizer_json, records):
    _, tok = tokenizer_json
    rows = _rows(records)
    messages = pa.Table.from_pylist(rows, schema=RECORDS).column("messages")
    assert token_count.chatml_texts(messages) == render_batch(tok, [r["messages"] for r in rows])
    assert token_count.chatml_texts(messages.slice(5, 3)) == render_batch(tok, [r["messages"] for r in rows[5:8]])


def test_parallel_counts_equal_the_tokenizer(tmp_path, tokenizer_json, records):
    path, tok = tokenizer_json
    rows = _rows(records)
    files = _table_files(tmp_path, rows)
    counts, how = token_count.count_table(files, path, tok.chat_template, workers=2, min_rows=0)
    assert counts is not None, how
    assert "tiktoken on 2 threads" in how
    assert counts.tolist() == count_tokens(tok, [r["messages"] for r in rows])


def _tool_rows(records):
    """Rows that the Arrow ChatML rendering does not cover: offered tools, tool calls and results,
    reasoning traces, pretraining text."""
    tools = json.dumps([{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}])
    call = [{"id": "c1", "name": "add", "arguments": '{"a": 2, "b": 3}'}]
    convs = [
        ([{"role": "user", "content": "Add 2 and 3."},
          {"role": "assistant", "content": "", "tool_calls": call},
          {"role": "tool", "content": "5", "tool_call_id": "c1", "name": "add"},
          {"role": "assistant", "content": "It is 5.", "reasoning": "The tool said 5."}], tools),
        ([{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because.", "reasoning": "Think."}],
         None),
        ([{"role": "assistant", "content": "Plain pretraining text, trained on every token."}], None),
    ]
    return [{**records[0], "record_id": f"tool{i}", "messages": m, "tools": t, "n_turns": len(m)}
            for i, (m, t) in enumerate(convs)]


@pytest.mark.parametrize("reasoning", ["keep", "drop"])
def test_parallel_counts_render_tools_reasoning_and_text_as_training_does(tmp_path, tokenizer_json, records,
                                                                          reasoning):
    path, tok = tokenizer_json
    rows = _rows(records)[:30] + _tool_rows(records) + _rows(records)[30:]
    table = pa.Table.from_pylist(rows, schema=RECORDS)
    plain = token_count.plain_chat_rows(table.column("messages").combine_chunks(),
                                        table.column("tools").combine_chunks())
    assert [r["record_id"] for r, p in zip(rows, plain) if not p] == ["tool0", "tool1", "tool2"]
    files = _table_files(tmp_path, rows)
    counts, how = token_count.count_table(files, path, tok.chat_template, workers=2, min_rows=0, reasoning=reasoning)
    assert counts is not None, how
    expected = count_tokens(tok, [r["messages"] for r in rows], tools=[r.get("tools") for r in rows],
                            reasoning=reasoning)
    assert counts.tolist() == expected
    # row 31 carries a reasoning trace: dropping it makes the row shorter
    assert (reasoning == "drop") == (expected[31] < count_tokens(tok, [rows[31]["messages"]], reasoning="keep")[0])


def test_a_disagreeing_conversion_falls_back(tmp_path, tokenizer_json, records):
    """A BPE without some of its merges (tokens it can no longer form, tiktoken still can): detected."""
    path, tok = tokenizer_json
    spec = json.loads(path.read_text())
    spec["model"]["merges"] = spec["model"]["merges"][20:]
    bad = tmp_path / "tok" / "tokenizer.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps(spec))
    files = _table_files(tmp_path, _rows(records))
    counts, how = token_count.count_table(files, bad, CHATML_TEMPLATE, workers=1, min_rows=0)
    assert counts is None and "disagrees" in how and "row group 0" in how


def test_what_does_not_qualify(tmp_path, tokenizer_json, records):
    path, tok = tokenizer_json
    files = _table_files(tmp_path, _rows(records))
    assert token_count.count_table(files, path, tok.chat_template + "{# mine #}", min_rows=0) == \
        (None, "the chat template is not Tuneline's ChatML")
    assert token_count.count_table(files, path, tok.chat_template)[0] is None  # small: in-process
    spec = json.loads(path.read_text())
    for change, why in [({"normalizer": {"type": "NFC"}}, "normalizer"),
                        ({"pre_tokenizer": {"type": "Whitespace"}}, "pre-tokenizer"),
                        ({"model": {**spec["model"], "continuing_subword_prefix": "##"}}, "plain byte-level BPE")]:
        other = tmp_path / why / "tokenizer.json"
        other.parent.mkdir()
        other.write_text(json.dumps({**spec, **change}))
        params, reason = token_count.tiktoken_params(other)
        assert params is None and why in reason
    assert token_count.tiktoken_params(tmp_path / "missing.json")[0] is None


#: Texts around the chunk split (tasks.tokens.count.ChunkCounts): a space starts a chunk only
#: when whitespace does not follow it; every kind of Unicode whitespace next to spaces.
CHUNK_TEXTS = ODD_TEXTS + [
    "a  b", "a   b", "a \u00a0b", "a\u00a0 b", "x\u3000 y", "x \u3000y", "line\u2028 next", "line \u2029next",
    "nel\u0085 x", "\t x", "x \t", "x \t ", " ", "  ", "\n", " \n ", "a\n\n b", "a \n\nb", "a\u200a b",
    " 's it's  's 'S", "don't 've 'll 'd 'm 're 's 't we'd", "'s", " 'x", "x' 's'",
    "12 345 6.7 8,9", " 1 22  333", "!!! ??? ... -- ,", "a.b c!d (e) [f]", "é è ê", "a\u0301 b\u0301",
    "tab\tsep\tfields and\x0bvertical\x0cfeed", "\x1c\x1d\x1e\x1f separators", "\u00a0lead", "trail\u3000",
    "ends with spaces  ", "  starts with spaces", "👍 👍🏽 👍", "中 文 空 格", "mixed 中文 and English words",
]


def test_chunk_counts_equal_tiktoken_on_every_kind_of_space(tokenizer_json):
    """Split at the spaces that start a piece, counted chunk by chunk with a cache: the same
    counts as tiktoken on the whole text (and as the tokenizer itself)."""
    path, tok = tokenizer_json
    fast, reference = token_count._encoders(str(path))
    texts = [t for t in CHUNK_TEXTS if "<|" not in t]
    texts += [a + b for a in texts[::3] for b in texts[1::4]]  # chunks that recur in new contexts
    chunks = token_count.ChunkCounts(fast)
    for _ in range(2):  # the second pass counts from the cache
        got = chunks.segments(pa.array(texts, pa.string())).tolist()
        assert got == [len(fast.encode_ordinary(t)) for t in texts]
    assert got == [len(e) for e in reference.encode_batch_fast(texts, add_special_tokens=False)]
    assert chunks.first and chunks.later


def test_conversation_counts_with_special_tokens_in_the_text(tmp_path, tokenizer_json, records):
    """A special token inside a turn (or an encoding whose special tokens could overlap the
    template's) sends the row to tiktoken on the whole text: counts still equal the tokenizer's."""
    import tiktoken

    path, tok = tokenizer_json
    rows = _rows(records)[:10]
    for i, text in enumerate(["<|im_start|>", "x<|im_end|>y", "<|endoftext|> end", "<|im_sta", "rt|>"]):
        rows.append({**records[0], "record_id": f"sp{i}", "n_turns": 2,
                     "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": text}]})
    table = pa.Table.from_pylist(rows, schema=RECORDS)
    expected = count_tokens(tok, [r["messages"] for r in rows])
    assert token_count.conversation_counts(str(path), table).tolist() == expected
    fast, _ = token_count._encoders(str(path))
    counts, easy = token_count.ChunkCounts(fast).chatml(table.column("messages").combine_chunks())
    assert [r["record_id"] for r, e in zip(rows, easy) if not e] == ["sp0", "sp1", "sp2"]
    params, _ = token_count.tiktoken_params(path)
    odd = tiktoken.Encoding("odd", **{**params, "special_tokens": {**params["special_tokens"], "|><|": 10**6}})
    assert not token_count.ChunkCounts(odd).chatml(table.column("messages").combine_chunks())[1].any()


def test_row_groups_on_an_executor_return_the_key_columns(tmp_path, tokenizer_json, records):
    """Any concurrent.futures executor (a Dask client's in the pipeline) counts the row groups;
    with `columns` the rows' keys come back beside the counts, in table order."""
    import concurrent.futures as cf

    path, tok = tokenizer_json
    rows = _rows(records)
    files = _table_files(tmp_path, rows, row_group_size=25)
    with cf.ThreadPoolExecutor(3) as ex:
        table, how = token_count.count_columns(files, path, tok.chat_template, executor=ex,
                                               columns=("record_id", "source"))
    assert "ThreadPoolExecutor" in how and table.column_names == ["record_id", "source", "n_tokens"]
    assert table.column("record_id").to_pylist() == [r["record_id"] for r in rows]
    assert table.column("n_tokens").to_pylist() == count_tokens(tok, [r["messages"] for r in rows])
