"""The validate step: row-level expectations, the dataset-level gate, suite errors, reports."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

from tasks.config import Recipe
from tasks.errors import GateFailed, RecipeError
from tasks.model_registry import model_dir
from tasks.schema import RECORDS, record_id
from tasks.store import ArtifactStore
from tasks.validate import SuiteError, check_validate, gate, load_suite, validate
from tasks.validate.step import _tokenizer_path

SUITE = Path(__file__).resolve().parents[1] / "expectations" / "records.json"


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


def T(text, call_id=None, name=None):
    return {"role": "tool", "content": text, "tool_call_id": call_id, "name": name}


def CALL(name, arguments='{"city": "Oslo"}', call_id="c1", text=""):
    return {"role": "assistant", "content": text, "tool_calls": [{"id": call_id, "name": name, "arguments": arguments}]}


WEATHER = json.dumps([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}])
ASK = U("What is the weather in Oslo today, please?")


def rec(messages, source="src", choices=(), i=0, rid=None, tools=None):
    return {
        "record_id": rid or record_id(source, messages, example_id=str(i)), "source": source, "task": "t",
        "template_id": "", "example_id": str(i), "messages": messages, "answer_choices": list(choices),
        "origin_file": f"{source}.jsonl", "origin_row": i + 1, "n_turns": len(messages), "n_chars": 0,
        "lang": None, "meta": "{}", "tools": tools,
    }


def good_rows(n, source="src", start=0):
    topics = ["rivers", "mountains", "bread", "violins", "comets", "gardens", "bridges", "owls"]
    return [
        rec([U(f"Please write two sentences about {topics[i % len(topics)]} and why people like them, number {i}."),
             A(f"People like {topics[i % len(topics)]} because they are interesting. This is answer {i}.")],
            source=source, i=start + i)
        for i in range(n)
    ]


def split_manifest(store, train, eval_rows=(), key="k1"):
    w = store.begin("split", key, label="split")
    w.write("records_train", RECORDS, train)
    w.write("records_eval", RECORDS, list(eval_rows))
    return w.commit()


def recipe(tmp_path, **validate_cfg):
    return {"sources": [{"name": "src", "format": "dolly", "path": "x"}], "base_dir": str(tmp_path),
            "validate": {"suite": str(SUITE), **validate_cfg}}


#: (the bad row, the expectation that must reject it)
BAD = {
    "empty_user": ([U("   "), A("An answer that is fine.")], (), "non_empty_turns"),
    "empty_assistant": ([U("A perfectly normal question here?"), A("")], (), "non_empty_turns"),
    "two_users": ([U("First question, quite normal?"), U("Second question?"), A("Answer.")], (), "roles_alternate"),
    "ends_with_user": ([U("A normal question here?"), A("Answer."), U("And a follow-up?")], (), "roles_alternate"),
    "system_not_first": ([U("A normal question here?"), S("You are helpful."), A("Answer.")], (), "roles_alternate"),
    "too_long_turn": ([U("Summarise this: " + "word " * 80), A("Short.")], (), "turn_max_chars"),
    "jinja_leftover": ([U("Premise: {{premise}} Does it follow?"), A("Yes.")], (), "no_template_leftovers"),
    "pipes_leftover": ([U("Is the sky blue on a clear day? ||| Yes")], (), "roles_alternate"),
    "pipes_leftover2": ([U("Is the sky blue on a clear day?"), A("Yes ||| no")], (), "no_template_leftovers"),
    "field_leftover": ([U("Answer the question about {topic} in detail."), A("Fine.")], (), "no_template_leftovers"),
    "target_not_choice": ([U("Is water wet? Options: yes, no"), A("maybe")], ("yes", "no"), "target_in_answer_choices"),
    "reasoned_not_choice": ([U("Is water wet? Options: yes, no"), A("Water makes things wet.\nThe answer: maybe.")],
                            ("yes", "no"), "target_in_answer_choices"),
    "banned": ([U("Who are you, tell me about yourself?"), A("As an AI Language Model, I have no name.")], (),
               "no_banned_phrases"),
}
#: (a tool-use row, its tools, the expectation that must reject it)
TOOL_BAD = {
    "bad_arguments": ([ASK, CALL("weather", "print('Oslo')"), T("rain"), A("It rains.")], WEATHER, "tool_arguments_parse"),
    "arguments_not_object": ([ASK, CALL("weather", '"Oslo"'), T("rain"), A("It rains.")], WEATHER,
                             "tool_arguments_parse"),
    "unoffered": ([ASK, CALL("forecast"), T("rain", "c1"), A("It rains.")], WEATHER, "tool_offered"),
    "no_tools_at_all": ([ASK, CALL("weather"), T("rain", "c1"), A("It rains.")], None, "tool_offered"),
    "orphan_result": ([ASK, CALL("weather"), T("rain", "c9"), A("It rains.")], WEATHER, "tool_result_has_call"),
    "result_without_any_call": ([ASK, A("Let me see."), T("rain"), A("It rains.")], WEATHER, "tool_result_has_call"),
    "unanswered": ([ASK, CALL("weather"), U("Never mind: is it cold there too?"), A("Maybe.")], WEATHER,
                   "tool_call_answered"),
}
TOOL_FINE = {
    "call_result_answer": ([S("You help."), ASK, CALL("weather"), T("rain", "c1", "weather"), A("It rains.")], WEATHER),
    "ends_on_the_call": ([ASK, CALL("weather")], WEATHER),
    "result_by_name_without_ids": ([ASK, CALL("weather", call_id=None), T("rain", name="weather"), A("It rains.")],
                                   WEATHER),
    "two_calls_in_a_row": ([ASK, CALL("weather"), T("rain", "c1"), CALL("weather", call_id="c2"), T("wind", "c2"),
                            A("Rain and wind.")], WEATHER),
}
#: rows that look suspicious but must pass
FINE = {
    "system_first": [S("You are terse."), U("What is two plus two, exactly?"), A("Four.")],
    "multi_turn": [U("Name a colour of the sky?"), A("Blue."), U("And at night, usually?"), A("Black.")],
    "latex": [U("Simplify \\frac{a}{b} times x^{2} please, step by step."), A("It is \\frac{a x^{2}}{b}.")],
    "fenced_code": [U("Fix this code for me please:\n```js\nconst s = `${name}`; if (x) {{ y }}\n```"), A("Done.")],
    "target_choice": [U("Is fire hot? Options: yes, no"), A(" yes ")],
    "pretraining_text": [A("Rivers carry water from the hills down to the sea, and people like them for it.")],
    "reasoned_choice": [U("Is fire hot? Options: yes, no"), A("Fire burns at hundreds of degrees.\nSo the answer is: yes.")],
}


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    store = ArtifactStore(tmp / "art")
    rows = good_rows(60)
    ids = {}
    for i, (name, (msgs, choices, _)) in enumerate(BAD.items()):
        r = rec(msgs, choices=choices, i=1000 + i)
        ids[name] = r["record_id"]
        rows.append(r)
    for i, (name, msgs) in enumerate(FINE.items()):
        r = rec(msgs, choices=("yes", "no") if name in ("target_choice", "reasoned_choice") else (), i=2000 + i)
        ids[name] = r["record_id"]
        rows.append(r)
    for i, (name, (msgs, tools, *_)) in enumerate({**TOOL_BAD, **TOOL_FINE}.items()):
        r = rec(msgs, i=3000 + i, tools=tools)
        ids[name] = r["record_id"]
        rows.append(r)
    m = split_manifest(store, rows)
    out = validate(str(store.root), recipe(tmp, max_turn_chars=300), m)
    return store, out, ids, len(rows)


@pytest.mark.parametrize("name", sorted(BAD))
def test_row_level_expectation_rejects_with_its_name(mixed_run, name):
    store, out, ids, _ = mixed_run
    rejects = store.read(out, "rejects").to_pylist()
    by_id = {r["record_id"]: r for r in rejects}
    assert ids[name] in by_id, f"{name} was not rejected"
    r = by_id[ids[name]]
    assert r["reason"] == BAD[name][2] and r["step"] == "validate"
    assert r["origin_file"] == "src.jsonl" and r["origin_row"] >= 1001
    assert BAD[name][2] in r["detail"]


@pytest.mark.parametrize("name", sorted(TOOL_BAD))
def test_tool_use_problems_are_rejected_with_their_own_reason(mixed_run, name):
    store, out, ids, _ = mixed_run
    by_id = {r["record_id"]: r for r in store.read(out, "rejects").to_pylist()}
    assert ids[name] in by_id, f"{name} was not rejected"
    assert by_id[ids[name]]["reason"] == TOOL_BAD[name][2]


@pytest.mark.parametrize("name", sorted(TOOL_FINE))
def test_well_formed_tool_use_passes(mixed_run, name):
    store, out, ids, _ = mixed_run
    valid = store.read(out, "records_valid", columns=["record_id", "messages", "tools"]).to_pylist()
    kept = {r["record_id"]: r for r in valid}
    assert ids[name] in kept
    assert kept[ids[name]]["tools"] == WEATHER  # the offered tools travel with the record


@pytest.mark.parametrize("name", sorted(FINE))
def test_suspicious_but_fine_rows_pass(mixed_run, name):
    store, out, ids, _ = mixed_run
    valid = set(store.read(out, "records_valid", columns=["record_id"])["record_id"].to_pylist())
    assert ids[name] in valid


def test_counts_lang_reports_and_gate_pass(mixed_run):
    store, out, ids, n = mixed_run
    s = out["stats"]
    assert s["rows_in"] == n == s["rows_out"] + s["rows_rejected"]
    assert s["rows_rejected"] == len(BAD) + len(TOOL_BAD)
    assert s["gate_passed"] is True and s["gate_failures"] == []
    gate(out)  # does not raise
    valid = store.read(out, "records_valid")
    assert valid.schema == RECORDS
    assert set(valid["lang"].to_pylist()) <= {"en", "und"} and "en" in valid["lang"].to_pylist()
    d = store.root / out["dir"]
    ge = json.loads((d / "ge_validation.json").read_text())
    assert ge["row"] and ge["row"][0]["results"] and ge["source"]["success"] is True
    md = (d / "validation.md").read_text()
    assert md == s["report_markdown"]
    assert "| roles_alternate | row |" in md and ids["two_users"] in md
    assert "skipped (no tokenizer configured)" in md
    # failures are queryable the way the catalog exposes them
    files = [str(p) for p in store.paths(out, "rejects")]
    got = dict(duckdb.sql(f"select reason, count(*) from read_parquet({files}) where step = 'validate' group by 1").fetchall())
    assert got["roles_alternate"] == 4 and got["no_template_leftovers"] == 3


def test_rerun_is_cached(mixed_run, tmp_path):
    store, out, _, _ = mixed_run
    split = store.load("split", "k1")
    again = validate(str(store.root), recipe(tmp_path, max_turn_chars=300), split)
    assert again["skipped"] is True and again["key"] == out["key"]


def test_language_expectation(tmp_path):
    store = ArtifactStore(tmp_path / "art")
    rows = good_rows(20)
    german = rec([U("Wie kann ich meine Zeit besser einteilen, wenn ich viel arbeite und wenig schlafe?"), A("Gut.")], i=99)
    short = rec([U("Hola?"), A("Hi.")], i=98)
    m = split_manifest(store, rows + [german, short])
    out = validate(str(store.root), recipe(tmp_path, languages=["en"]), m)
    rejects = store.read(out, "rejects").to_pylist()
    assert [(r["record_id"], r["reason"]) for r in rejects] == [(german["record_id"], "allowed_language")]
    assert "lang=de" in rejects[0]["detail"]
    langs = dict(zip(*store.read(out, "records_valid", columns=["record_id", "lang"]).to_pydict().values()))
    assert langs[short["record_id"]] == "und"


def _tiny_tokenizer(path: Path) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate("please write two sentences about".split())}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(path))
    return str(path)


def test_token_bounds_with_a_local_tokenizer(tmp_path):
    store = ArtifactStore(tmp_path / "art")
    long_one = rec([U("one two three four five six seven eight nine ten eleven twelve thirteen"), A("ok")], i=77)
    m = split_manifest(store, good_rows(20) + [long_one])
    r = recipe(tmp_path, max_turn_tokens=18)
    r["train"] = {"tokenizer": _tiny_tokenizer(tmp_path / "tok")}
    out = validate(str(store.root), r, m)
    # good rows: 15 word-level tokens in the user turn (punctuation counts), 13 in the answer
    assert store.read(out, "rejects").num_rows == 0
    assert out["stats"]["expectations"]["turn_max_tokens"]["skipped"] is None
    r2 = recipe(tmp_path, max_turn_tokens=14)
    r2["train"] = r["train"]
    out2 = validate(str(store.root), r2, m)
    rejected = {x["record_id"]: x["reason"] for x in store.read(out2, "rejects").to_pylist()}
    assert len(rejected) == 20 and set(rejected.values()) == {"turn_max_tokens"}
    assert long_one["record_id"] not in rejected  # 13 tokens


# -- dataset level -------------------------------------------------------------------------
def test_duplicate_record_id_fails_the_gate(tmp_path):
    store = ArtifactStore(tmp_path / "art")
    rows = good_rows(10)
    rows.append({**good_rows(1, start=500)[0], "record_id": rows[0]["record_id"]})
    out = validate(str(store.root), recipe(tmp_path), split_manifest(store, rows))
    s = out["stats"]
    assert s["gate_passed"] is False
    assert any(f.startswith("record_id_unique") and rows[0]["record_id"] in f for f in s["gate_failures"])
    with pytest.raises(GateFailed, match="record_id_unique"):
        gate(out)


def test_reject_share_and_min_rows_fail_the_gate(tmp_path):
    store = ArtifactStore(tmp_path / "art")
    bad = [rec([U("Only a question, no answer?")], source="noisy", i=i) for i in range(6)]
    rows = good_rows(10) + bad + good_rows(2, source="noisy", start=100) + good_rows(1, source="tiny", start=200)
    out = validate(str(store.root), recipe(tmp_path, max_reject_share=0.5, min_rows_per_source=2),
                   split_manifest(store, rows))
    fails = out["stats"]["gate_failures"]
    assert out["stats"]["gate_passed"] is False
    assert any("source_reject_share" in f and "noisy" in f for f in fails)
    assert any("source_min_rows" in f and "tiny" in f for f in fails)
    assert not any("src" in f for f in fails)
    assert out["stats"]["rows_in"] == out["stats"]["rows_out"] + out["stats"]["rows_rejected"]
    with pytest.raises(GateFailed):
        gate(out)


def test_empty_suite_fails_the_gate(tmp_path):
    store = ArtifactStore(tmp_path / "art")
    suite = tmp_path / "empty.json"
    suite.write_text(json.dumps({"name": "records", "expectations": []}))
    r = recipe(tmp_path)
    r["validate"]["suite"] = str(suite)
    out = validate(str(store.root), r, split_manifest(store, good_rows(5)))
    assert out["stats"]["gate_passed"] is False
    assert any("no expectations" in f for f in out["stats"]["gate_failures"])
    assert any("no expectation was evaluated" in f for f in out["stats"]["gate_failures"])


def test_all_skipped_suite_fails_the_gate(tmp_path):
    store = ArtifactStore(tmp_path / "art")
    suite = tmp_path / "skipped.json"
    suite.write_text(json.dumps({"expectations": [
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "lang", "value_set": {"$PARAMETER": "allowed_languages"}},
         "meta": {"name": "lang", "requires": ["languages"]}}]}))
    r = recipe(tmp_path)
    r["validate"]["suite"] = str(suite)
    out = validate(str(store.root), r, split_manifest(store, good_rows(5)))
    assert out["stats"]["gate_failures"] == [f"suite {suite}: no expectation was evaluated"]


# -- suite errors, before any data is read ----------------------------------------------------
def _unreadable_manifest(store):
    """A split manifest whose data is gone: any read of it would fail differently."""
    m = split_manifest(store, good_rows(3), key="gone")
    shutil.rmtree(store.root / m["dir"])
    return m


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"expectations": [{"type": "expect_column_values_to_be_purple", "kwargs": {"column": "lang"}}]}),
     "unknown expectation type 'expect_column_values_to_be_purple'"),
    (json.dumps({"expectations": [{"type": "expect_column_values_to_be_null", "kwargs": {"column": "colour"}}]}),
     "unknown column 'colour'"),
    (json.dumps({"expectations": [{"type": "expect_column_values_to_be_between",
                                   "kwargs": {"column": "conversation_chars", "max_value": {"$PARAMETER": "nope"}}}]}),
     "unknown \\$PARAMETER 'nope'"),
    (json.dumps([1, 2]), "expectations"),
])
def test_bad_suite_errors_naming_the_file(tmp_path, content, match):
    store = ArtifactStore(tmp_path / "art")
    suite = tmp_path / "bad_suite.json"
    suite.write_text(content)
    r = recipe(tmp_path)
    r["validate"]["suite"] = str(suite)
    with pytest.raises(SuiteError, match=match) as exc:
        validate(str(store.root), r, _unreadable_manifest(store))
    assert str(suite) in str(exc.value)
    with pytest.raises(RecipeError, match="bad_suite.json"):
        check_validate(Recipe.model_validate(r), "recipe.yaml")


def test_bad_kwargs_error_names_the_file(tmp_path):
    store = ArtifactStore(tmp_path / "art")
    suite = tmp_path / "kw.json"
    suite.write_text(json.dumps({"expectations": [
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "lang", "value_set": 5}}]}))
    r = recipe(tmp_path)
    r["validate"]["suite"] = str(suite)
    with pytest.raises(SuiteError, match="kw.json"):
        validate(str(store.root), r, _unreadable_manifest(store))


def test_shipped_suite_loads():
    suite = load_suite(SUITE)
    names = [e.name for e in suite.expectations]
    assert len(names) == len(set(names)) >= 16
    assert {e.level for e in suite.expectations} == {"row", "table", "source"}


def test_check_validate_resolves_project_suite(tmp_path):
    r = Recipe.model_validate({"sources": [{"name": "a", "format": "dolly", "path": "x"}], "base_dir": str(tmp_path)})
    check_validate(r)  # the default relative suite path falls back to the project's expectations/


def test_great_expectations_and_vectorised_checks_must_agree(tmp_path, monkeypatch):
    """The Polars twins are cross-checked against great-expectations on the sample."""
    import tasks.validate.step as v

    real = v.unexpected_mask

    def off_by_one(e, frame, params):  # a twin that misses the first row's verdict
        mask = real(e, frame, params)
        return mask.scatter(0, not mask[0]) if e.name == "roles_alternate" else mask

    monkeypatch.setattr(v, "unexpected_mask", off_by_one)
    store = ArtifactStore(tmp_path / "art")
    out = validate(str(store.root), recipe(tmp_path), split_manifest(store, good_rows(5)))
    fails = out["stats"]["gate_failures"]
    assert fails == ["roles_alternate: great-expectations counted 0 unexpected rows on the sample, "
                     "the vectorised check 1"]


def _run_rows(tmp_path, rows, key="k1", **validate_cfg):
    store = ArtifactStore(tmp_path / "art")
    out = validate(str(store.root), recipe(tmp_path, **validate_cfg), split_manifest(store, rows, key=key))
    rejected = {r["record_id"]: r["reason"] for r in store.read(out, "rejects").to_pylist()}
    return out, rejected


def test_banned_phrases_in_english_and_chinese(tmp_path):
    q = "Please tell me something about yourself and your work here."
    said = {
        "zh_spaced": "作为一个 AI 语言模型，我没有个人观点。",
        "zh_openai": "你好！我是由OpenAI训练的语言模型。",
        "zh_refusal": "抱歉，我无法满足此请求。",
        "en": "As an AI language model, I have no opinions.",
        "en_not_a_phrase": "He has an AI language model on his phone.",  # "has an ai": not "as an ai"
        "zh_fine": "我是一名医生，作为医生我建议多休息。",
    }
    rows = {k: rec([U(q), A(v)], i=i) for i, (k, v) in enumerate(said.items())}
    rows["zh_in_user_turn"] = rec([U("作为一个AI语言模型，你怎么看这个问题？请详细说明。"), A("我觉得很好。")], i=50)
    out, rejected = _run_rows(tmp_path, list(rows.values()) + good_rows(5, start=100))
    bad = {k for k, r in rows.items() if rejected.get(r["record_id"]) == "no_banned_phrases"}
    assert bad == {"zh_spaced", "zh_openai", "zh_refusal", "en"}
    # a recipe's own list replaces the defaults
    _, rejected = _run_rows(tmp_path, list(rows.values()), key="k2", banned_phrases=["没有个人观点"])
    assert {k for k, r in rows.items() if r["record_id"] in rejected} == {"zh_spaced"}


def test_report_breaks_down_rejects_per_source_and_task(tmp_path):
    def in_task(r, task):
        return {**r, "task": task}

    wrong = [in_task(rec([U("Which is a gas? Options: (A) iron (B) air"), A(f"Air is a gas, case {i}. "
                                                                              "Therefore, the answer is (C).")],
                         choices=("(A) iron", "(B) air"), i=200 + i), "quiz") for i in range(5)]
    right = [in_task(rec([U("Which is a gas? Options: (A) iron (B) air"), A(f"Air is a gas, case {i}. "
                                                                              "Therefore, the answer is (B).")],
                         choices=("(A) iron", "(B) air"), i=300 + i), "quiz") for i in range(4)]
    leftover = in_task(rec([U("Describe {topic} in two sentences, please."), A("Fine.")], i=400), "open")
    out, rejected = _run_rows(tmp_path, wrong + right + [leftover] + [in_task(r, "open") for r in good_rows(6)])
    assert set(rejected) == {r["record_id"] for r in wrong} | {leftover["record_id"]}
    md = out["stats"]["report_markdown"]
    assert md == (tmp_path / "art" / out["dir"] / "validation.md").read_text()
    section = md.split("### Per source and task")[1]
    quiz = next(line for line in section.splitlines() if line.startswith("| src | quiz |"))
    assert quiz.startswith("| src | quiz | 9 | 4 | 5 | target_in_answer_choices | 5 |")
    assert sum(r["record_id"] in quiz for r in wrong) == 3  # three examples of the reason
    open_line = next(line for line in section.splitlines() if line.startswith("| src | open |"))
    assert "| 7 | 6 | 1 | no_template_leftovers | 1 |" in open_line and leftover["record_id"] in open_line


def test_token_bounds_use_a_named_models_tokenizer(tmp_path):
    def rc(**train):
        return Recipe.model_validate({"sources": [{"name": "a", "format": "dolly", "path": "x"}], "train": train,
                                      "base_dir": str(tmp_path)})

    assert _tokenizer_path(rc(model="smollm2-135m")) == str(model_dir("smollm2-135m"))
    assert _tokenizer_path(rc(model="tiny")) is None
    assert _tokenizer_path(rc(model="some-org/not-downloaded")) is None  # a hub name: no local files
