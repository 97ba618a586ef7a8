"""Decontamination: n-gram overlap with the held-out split and benchmark files."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tasks.config import DecontaminationConfig, Recipe
from tasks import decontam
from tasks.decontam import PROMPTS, TURNS, Decontaminator, benchmark_prompts, check_benchmarks
from tasks.errors import RecipeError
from tasks.schema import RECORDS
from tasks.store import ArtifactStore
from tasks.validate import check_validate, validate
from test_validate import SUITE, A, U, good_rows, rec, split_manifest

REAL_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "eval"

WORDS = ("amber basin cedar delta ember fjord granite harbor island juniper kettle lagoon meadow "
         "nickel orchard pebble quartz ridge summit timber upland valley willow yarrow zephyr").split()


def sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def matches(prompts, turns, **cfg):
    p = pa.table({"bench": [b for b, _, _ in prompts], "item_id": [i for _, i, _ in prompts],
                  "text": [t for _, _, t in prompts], "group": [i for _, i, _ in prompts]}, schema=PROMPTS)
    t = pa.table({"row_idx": list(range(len(turns))), "text": turns}, schema=TURNS)
    d = Decontaminator(p, DecontaminationConfig(**cfg))
    try:
        return {r["row_idx"]: (r["bench"], r["item_id"]) for r in d.match(t).to_pylist()}
    finally:
        d.close()


def test_ngram_overlap_after_normalisation():
    long_prompt = "Explain, in simple terms, how the water cycle moves moisture from oceans to the clouds and back again."
    got = matches(
        [("b", "7", long_prompt)],
        [
            "Please EXPLAIN in simple terms how the water-cycle moves moisture from oceans to the clouds!!",  # 13+ words
            "explain in simple terms how the water cycle moves moisture from oceans",  # 12 words only
            "Something else entirely about rivers.",
        ],
    )
    assert got == {0: ("b", "7")}


def test_template_text_shared_by_many_eval_items_is_not_matched():
    template = "Read the following passage carefully and then answer the question that comes after it please"

    def content(k):  # words no other text has
        return " ".join(f"{w}{k}" for w in WORDS[:15])

    items = [("heldout", f"h{i}", f"{template} {content(i)}") for i in range(3)]
    same_template = f"{template} {content(9)}"  # another example of the same template
    copied = items[1][2]  # a held-out row itself, in the training data
    assert matches(items, [same_template, copied]) == {1: ("heldout", "h1")}
    # Two items are not enough to call a phrase template text ...
    assert matches(items[:2], [same_template]) == {0: ("heldout", "h0")}
    # ... and without the rule the template alone is overlap.
    assert 0 in matches(items, [same_template], boilerplate_items=None)


def test_short_prompts_matched_whole():
    prompts = [("b", "1", "What is Atlantis?"), ("b", "2", "Hi!"), ("b", "3", "Write a haiku about autumn leaves")]
    turns = [
        "Tell me: what is Atlantis? I keep hearing about it.",  # contains the 3-word prompt
        "What is Atlantis",  # equal
        "hi",  # equal to a 1-word prompt
        "Hi there, can you help me plan a trip?",  # contains a 1-word prompt: not enough words to count
        "What is Atlantisian cuisine like?",  # no whole-word containment
        "Please write a haiku about autumn leaves falling.",
        "write a haiku about autumn",  # only part of the prompt
    ]
    got = matches(prompts, turns)
    assert got == {0: ("b", "1"), 1: ("b", "1"), 2: ("b", "2"), 5: ("b", "3")}
    # with short_min_words above 3, a 3-word prompt needs equality
    assert matches(prompts, turns, short_min_words=4) == {1: ("b", "1"), 2: ("b", "2"), 5: ("b", "3")}


def _write_benchmarks(tmp: Path, rng, n_items=40):
    """A JSONL benchmark with a list field (MT-Bench shape) and a CSV one; returns their prompts."""
    jsonl_items = [{"question_id": 100 + i, "turns": [sentence(rng, 20), sentence(rng, 6)]} for i in range(n_items)]
    (tmp / "mt.jsonl").write_text("".join(json.dumps(x) + "\n" for x in jsonl_items))
    csv_rows = [[sentence(rng, 15), "a", "b", "c", "d", "A"] for _ in range(n_items)]
    with open(tmp / "mmlu_test.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(csv_rows)
    return jsonl_items, csv_rows


def test_generated_training_set_loses_exactly_the_contaminated_rows(tmp_path):
    rng = random.Random(5)
    items, csv_rows = _write_benchmarks(tmp_path, rng)
    eval_rows = [rec([U(sentence(rng, 25)), A("held-out answer")], i=900 + i) for i in range(10)]
    train = good_rows(200)
    expected = {}  # record_id -> (bench, item id)
    for i, it in enumerate(items[:15]):  # a 13-word window of the first turn, inside other text
        words = it["turns"][0].split()
        r = rec([U("Intro text. " + " ".join(words[3:16]) + " more."), A("x")], i=3000 + i)
        expected[r["record_id"]] = ("mt_bench", f"{it['question_id']}:1")
        train.append(r)
    for i, it in enumerate(items[15:25]):  # the whole short second turn (6 words)
        r = rec([U("Question: " + it["turns"][1].upper() + "?"), A("x")], i=3100 + i)
        expected[r["record_id"]] = ("mt_bench", f"{it['question_id']}:2")
        train.append(r)
    for i, row in enumerate(csv_rows[:5]):  # second user turn of a multi-turn conversation
        r = rec([U("hello there friend, how are you"), A("fine"), U(row[0]), A("ok")], i=3200 + i)
        expected[r["record_id"]] = ("mmlu", str(i + 1))
        train.append(r)
    for i, e in enumerate(eval_rows[:4]):  # the held-out split
        r = rec([U(e["messages"][0]["content"]), A("a different answer")], i=3300 + i)
        expected[r["record_id"]] = ("heldout", e["record_id"])
        train.append(r)
    for i in range(50):  # unrelated rows over the same vocabulary: 12-word runs never reach 13
        train.append(rec([U(sentence(rng, 12)), A("y")], i=4000 + i))
    store = ArtifactStore(tmp_path / "art")
    m = split_manifest(store, train, eval_rows)
    recipe = {
        "sources": [{"name": "src", "format": "dolly", "path": "x"}], "base_dir": str(tmp_path),
        "validate": {"suite": str(SUITE), "decontamination": {"benchmarks": [
            {"name": "mt_bench", "path": "mt.jsonl", "field": "turns", "id_field": "question_id"},
            {"name": "mmlu", "path": "mmlu_*.csv", "field": "0", "csv_header": False},
        ]}},
    }
    out = validate(str(store.root), recipe, m)
    s = out["stats"]
    rejects = store.read(out, "rejects").to_pylist()
    got = {r["record_id"]: (r["detail"], r["related_id"]) for r in rejects if r["reason"] == "contaminated"}
    # unrelated 12-word rows might by chance contain a 6-word short prompt; the seed is fixed, so check exactly
    assert got == expected
    assert s["rows_in"] == len(train) == s["rows_out"] + s["rows_rejected"]
    assert s["rows_rejected"] == len(expected) and s["gate_passed"] is True
    assert s["contaminated_by_benchmark"] == {"mt_bench": 25, "mmlu": 5, "heldout": 4}
    valid = set(store.read(out, "records_valid", columns=["record_id"])["record_id"].to_pylist())
    assert not valid & set(expected) and len(valid) == len(train) - len(expected)
    assert "mt_bench: 25 rows removed" in s["report_markdown"]


def test_heldout_can_be_switched_off(tmp_path):
    rng = random.Random(1)
    eval_rows = [rec([U(sentence(rng, 25)), A("a")], i=900)]
    train = good_rows(5) + [rec([U(eval_rows[0]["messages"][0]["content"]), A("b")], i=901)]
    store = ArtifactStore(tmp_path / "art")
    m = split_manifest(store, train, eval_rows)
    base = {"sources": [{"name": "src", "format": "dolly", "path": "x"}], "base_dir": str(tmp_path)}
    on = validate(str(store.root), {**base, "validate": {"suite": str(SUITE)}}, m)
    off = validate(str(store.root), {**base, "validate": {"suite": str(SUITE), "decontamination": {"heldout": False}}}, m)
    assert on["stats"]["rows_contaminated"] == 1 and off["stats"]["rows_contaminated"] == 0


def test_benchmark_prompt_items_and_ids(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps([{"instruction": "First prompt"}, {"instruction": "Second"}]))
    (tmp_path / "c.jsonl").write_text('{"id": "q1", "turns": ["a b", "c d"]}\n\n{"id": "q2", "turns": ["e"]}\n')
    r = Recipe.model_validate({"sources": [{"name": "a", "format": "dolly", "path": "x"}], "base_dir": str(tmp_path),
                               "validate": {"decontamination": {"benchmarks": [
                                   {"name": "alpaca", "path": "b.json", "field": "instruction"},
                                   {"name": "mt", "path": "c.jsonl", "field": "turns", "id_field": "id"}]}}})
    bs = r.validate_cfg.decontamination.benchmarks
    assert benchmark_prompts(r, bs[0]).to_pylist() == [
        {"bench": "alpaca", "item_id": "1", "text": "First prompt", "group": "1"},
        {"bench": "alpaca", "item_id": "2", "text": "Second", "group": "2"}]
    assert [(x["item_id"], x["group"]) for x in benchmark_prompts(r, bs[1]).to_pylist()] == [
        ("q1:1", "q1"), ("q1:2", "q1"), ("q2:1", "q2")]


@pytest.mark.parametrize("name,content,field", [
    ("bench.jsonl", '{"question": "x"}\n', "prompt"),
    ("bench.json", json.dumps([{"question": "x"}]), "prompt"),
    ("bench.csv", "question,answer\nx,y\n", "prompt"),
])
def test_missing_prompt_field_errors_naming_file_and_field(tmp_path, name, content, field):
    (tmp_path / name).write_text(content)
    recipe = {"sources": [{"name": "src", "format": "dolly", "path": "x"}], "base_dir": str(tmp_path),
              "validate": {"suite": str(SUITE), "decontamination": {"benchmarks": [
                  {"name": "b", "path": name, "field": field}]}}}
    with pytest.raises(RecipeError) as exc:
        check_benchmarks(Recipe.model_validate(recipe))
    assert str(tmp_path / name) in str(exc.value) and f"field '{field}'" in str(exc.value)
    with pytest.raises(RecipeError, match=name):
        check_validate(Recipe.model_validate(recipe))
    # the step refuses before reading data: the split manifest here points at nothing
    store = ArtifactStore(tmp_path / "art")
    fake = {"step": "split", "key": "nothing", "dir": "split/nothing", "tables": {"records_train": [{"file": "missing"}]}}
    with pytest.raises(RecipeError, match="field 'prompt'"):
        validate(str(store.root), recipe, fake)


def test_missing_benchmark_file(tmp_path):
    r = Recipe.model_validate({"sources": [{"name": "a", "format": "dolly", "path": "x"}], "base_dir": str(tmp_path),
                               "validate": {"decontamination": {"benchmarks": [{"name": "b", "path": "nope/*.jsonl", "field": "q"}]}}})
    with pytest.raises(RecipeError, match="benchmark 'b': no file matches 'nope/\\*.jsonl'"):
        check_benchmarks(r)


@pytest.mark.real_data
@pytest.mark.skipif(not REAL_EVAL.exists(), reason=f"{REAL_EVAL} not found")
def test_real_alpaca_eval_contains_all_80_vicuna_questions(tmp_path):
    vicuna = [json.loads(line) for line in open(REAL_EVAL / "vicuna_bench_question.jsonl")]
    arena = [json.loads(line)["prompt"] for line in open(REAL_EVAL / "arena_hard_v0.1_question.jsonl")]
    train = [rec([U(q["turns"][0]), A("An answer.")], source="vicuna", i=i) for i, q in enumerate(vicuna)]
    # unrelated rows: Arena-Hard prompts (not part of AlpacaEval); answered with a plain word
    train += [rec([U(p), A("Answer.")], source="arena", i=1000 + i) for i, p in enumerate(arena[:200])]
    store = ArtifactStore(tmp_path / "art")
    m = split_manifest(store, train)
    recipe = {
        "sources": [{"name": "vicuna", "format": "dolly", "path": "x"}, {"name": "arena", "format": "dolly", "path": "x"}],
        "validate": {"suite": str(SUITE), "max_reject_share": 1.0, "decontamination": {"benchmarks": [
            {"name": "alpaca_eval", "path": str(REAL_EVAL / "alpaca_eval_example_outputs.json"), "field": "instruction"}]}},
    }
    out = validate(str(store.root), recipe, m)
    contaminated = [r for r in store.read(out, "rejects").to_pylist() if r["reason"] == "contaminated"]
    assert len(contaminated) == 80
    assert {r["record_id"] for r in contaminated} == {r["record_id"] for r in train[:80]}
    assert {r["detail"] for r in contaminated} == {"alpaca_eval"}
    alpaca = json.load(open(REAL_EVAL / "alpaca_eval_example_outputs.json"))
    for r in contaminated:  # the matched item really is that vicuna question
        assert alpaca[int(r["related_id"]) - 1]["dataset"] == "vicuna"
    s = out["stats"]
    assert s["rows_in"] == s["rows_out"] + s["rows_rejected"] and s["contaminated_by_benchmark"] == {"alpaca_eval": 80}


def test_window_hashes_are_the_polynomial_of_each_window():
    import numpy as np

    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**64, 300, dtype=np.uint64)
    base, mod = int(decontam._BASE), 1 << 64
    for n in (1, 5, 13, 300):
        expect = [sum(int(words[i + j]) * pow(base, n - 1 - j, mod) for j in range(n)) % mod for i in range(300 - n + 1)]
        assert decontam._window_hashes(words, n).tolist() == expect
    assert len(decontam._window_hashes(words[:4], 5)) == 0
    # the cached powers grow past their first size and stay right
    big = decontam._powers(decontam._BASE, 200_000)
    assert int(big[150_000]) == pow(base, 150_000, mod)


def test_rejected_rows_are_not_also_counted_contaminated(tmp_path):
    """Matching runs on every row of a batch; a row a row-level expectation rejects is rejected
    once, for that expectation, and the contaminated rows after it are still the right ones."""
    rng = random.Random(2)
    eval_rows = [rec([U(sentence(rng, 25)), A("a")], i=900 + k) for k in range(3)]
    copy = lambda k, answer, i: rec([U(eval_rows[k]["messages"][0]["content"]), A(answer)], i=i)  # noqa: E731
    train = good_rows(4) + [copy(0, "", 950), copy(1, "fine answer", 951)] + good_rows(3, start=10) + \
        [copy(2, "another fine answer", 952)]
    store = ArtifactStore(tmp_path / "art")
    m = split_manifest(store, train, eval_rows)
    out = validate(str(store.root), {"sources": [{"name": "src", "format": "dolly", "path": "x"}],
                                     "base_dir": str(tmp_path), "validate": {"suite": str(SUITE)}}, m)
    rejects = {r["record_id"]: r["reason"] for r in store.read(out, "rejects").to_pylist()}
    assert rejects == {train[4]["record_id"]: "non_empty_turns", train[5]["record_id"]: "contaminated",
                       train[9]["record_id"]: "contaminated"}
    assert out["stats"]["rows_contaminated"] == 2 and out["stats"]["rows_out"] == len(train) - 3


def _heldout_matcher(eval_records, **cfg):
    table = pa.Table.from_pylist(eval_records, schema=RECORDS)
    return Decontaminator(decontam.heldout_prompts(table.to_batches()), DecontaminationConfig(**cfg))


def _turns(texts):
    return pa.table({"row_idx": list(range(len(texts))), "text": texts}, schema=TURNS)


def test_few_shot_exemplars_of_a_heldout_row_are_not_its_text():
    rng = random.Random(3)
    exemplar = "Q: " + sentence(rng, 20) + "\nA: " + sentence(rng, 15) + "\n\n"  # a training example
    own = "Q: " + sentence(rng, 20) + "\nA:"  # the held-out example itself
    held = rec([U(exemplar + own), A("x")], i=1)
    training = [exemplar.split("\nA:")[0], own[3:]]  # the exemplar's own row; a copy of the held-out question
    with_meta = _heldout_matcher([{**held, "meta": json.dumps({decontam.SHOTS_CHARS: len(exemplar)})}])
    assert {r["row_idx"] for r in with_meta.match(_turns(training)).to_pylist()} == {1}
    without = _heldout_matcher([held])  # a row whose exemplars were not recorded: they count as its text
    assert {r["row_idx"] for r in without.match(_turns(training)).to_pylist()} == {0, 1}


def test_template_text_plus_a_word_or_two_is_not_overlap():
    template = "Answer the question below, explaining your reasoning first. Is the following statement true?"
    rng = random.Random(4)
    items = [rec([U(f'{template} "The {sentence(rng, 15)}."'), A("yes")], i=i) for i in range(6)]
    item_words = items[2]["messages"][0]["content"][len(template) + 6:].split()
    training = [
        f'{template} "The {sentence(random.Random(99), 15)}."',  # same template and first word only
        f'{template} "The {" ".join(item_words[:2])} {sentence(random.Random(98), 13)}."',  # two item words
        f'Tell me: "The {" ".join(item_words)}" is it so?',  # the held-out item's own words
    ]
    assert {r["row_idx"] for r in _heldout_matcher(items).match(_turns(training)).to_pylist()} == {2}
    # counting every word outside template n-grams, template text plus two item words overlaps
    assert {r["row_idx"] for r in _heldout_matcher(items, min_item_words=1).match(_turns(training)).to_pylist()} \
        == {1, 2}


def test_normalisation_in_two_replacements_is_the_one_regex():
    """`_normalised` replaces non-space separators, then runs of spaces: the same text as one
    replacement of every run of non-letters and non-digits."""
    import random

    import polars as pl

    rng = random.Random(11)
    alphabet = list("ab Z9 \t\n,.-'\"!") + ["\u00a0", "\u3000", "é", "ß", "中", "٣", "🙂", "\u200b", "  ", " - "]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(5000)]
    frame = pl.DataFrame({"text": texts})
    one = frame.select(pl.col("text").str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", " ").str.strip_chars())
    assert frame.select(decontam._normalised(pl.col("text"))).equals(one)


def test_hash_filter_holds_every_hash_and_few_others():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 50_000, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    f = decontam.HashFilter(hashes)
    assert f.may_hold(hashes).all()
    others = rng.integers(0, 2**63, 200_000, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    assert f.may_hold(others).mean() < 0.2
    words = rng.integers(0, 2**63, 1000, dtype=np.int64).astype(np.uint64)
    prefix = decontam._window_prefix(words)
    for n in (1, 3, 13):
        assert decontam._window_hashes(words, n, prefix).tolist() == decontam._window_hashes(words, n).tolist()
