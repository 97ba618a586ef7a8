"""Demo data: every native format, ingested and converted with every row accounted for."""
import json

from tasks.convert import convert_shard
from tasks.demo_data import write_demo_data
from tasks.evaluate.mmlu import mmlu_files, read_mmlu_csv
from tasks.ingest.run import ingest_file
from tasks.recipe import load_recipe
from tasks.store import file_sha256


def test_demo_data_is_deterministic(tmp_path):
    a = write_demo_data(tmp_path / "a", seed=0)
    b = write_demo_data(tmp_path / "b", seed=0)
    assert [file_sha256(x) for x in a] == [file_sha256(x) for x in b]
    c = write_demo_data(tmp_path / "c", seed=1)
    assert file_sha256(a[0]) != file_sha256(c[0])


def test_demo_recipe_ingests_and_converts_everything(tmp_path, store):
    paths = write_demo_data(tmp_path / "demo")
    assert (tmp_path / "demo" / "recipe.yaml") in paths
    rc = load_recipe(tmp_path / "demo" / "recipe.yaml")
    assert {s.format for s in rc.sources} == {"dolly", "sharegpt", "flan", "flan_cot", "p3", "promptsource",
                                              "openai", "alpaca", "oasst", "super_ni", "text"}
    rd = rc.model_dump(by_alias=True)
    total_raw, records, reasons, langs_text = 0, [], set(), ""
    for s in rc.sources:
        for f in rc.source_files(s):
            ing = ingest_file(str(store.root), rd, s.name, f)
            conv = convert_shard(str(store.root), rd, ing)
            si, sc = ing["stats"], conv["stats"]
            assert si["rows_in"] == si["rows_out"] + si["rows_rejected"]
            assert sc["rows_in"] == si["rows_out"] and sc["rows_in"] == sc["rows_out"] + sc["rows_rejected"]
            total_raw += si["rows_in"]
            records += store.read(conv, "records").to_pylist()
            for m in (ing, conv):
                reasons |= {r["reason"] for r in store.read(m, "rejects").to_pylist()}
    assert 800 <= total_raw <= 2500
    # planted broken rows of each kind
    assert {"bad_json", "invalid_utf8", "missing_field", "null_field", "wrong_type", "wrong_field_count",
            "unknown_role", "empty_turn"} <= reasons
    # planted exact duplicates, multi-turn conversations, answer choices and several languages
    ids = [r["record_id"] for r in records]
    assert len(ids) - len(set(ids)) >= 5
    assert max(r["n_turns"] for r in records) >= 6
    assert sum(1 for r in records if r["answer_choices"]) >= 200
    text = " ".join(m["content"] for r in records for m in r["messages"])
    for marker in ("Hauptstadt", "capitale", "¿Cuál", "首都"):
        assert marker in text
    assert any(json.loads(r["meta"]).get("repairs") for r in records)
    # today's parts: tool calls and results, offered tools, reasoning traces, pretraining text
    msgs = [m for r in records for m in r["messages"]]
    assert any(m.get("tool_calls") for m in msgs) and any(m["role"] == "tool" for m in msgs)
    assert any(m.get("reasoning") for m in msgs) and any(r["tools"] for r in records)
    assert "unsupported_modality" in reasons and any(r["task"] == "text" for r in records)


def test_demo_recipe_for_each_model(tmp_path):
    real = load_recipe(write_demo_data(tmp_path / "real", model="smollm2-135m")[-1])
    tiny = load_recipe(write_demo_data(tmp_path / "tiny", model="tiny")[-1])
    assert (real.train.model, real.train.method) == ("smollm2-135m", "lora")
    assert (tiny.train.model, tiny.train.method) == ("tiny", "full")
    assert [s.name for s in real.sources] == [s.name for s in tiny.sources] and real.stages == tiny.stages
    for rc in (real, tiny):  # the MMLU-format files the demo writes: 4 choices, answers spread over A-D
        questions = [q for f in mmlu_files(rc.evaluate.mmlu, rc.resolve) for q in read_mmlu_csv(f)]
        assert {q.subject for q in questions} == {"world_capitals", "elementary_arithmetic", "everyday_science"}
        assert len(questions) >= 30 and len({q.answer for q in questions}) == 4
        assert all(q.choices[q.answer] not in q.choices[:q.answer] + q.choices[q.answer + 1:] for q in questions)
