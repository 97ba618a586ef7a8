"""The evaluate step with real tiny models, tokenizers, Parquet and DuckDB."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tasks import catalog
from tasks.config import Recipe
from tasks.errors import TunelineError
from tasks.evaluate import EVAL, comparison_markdown, comparison_rows, evaluate
from tasks.evaluate.mmlu import MmluItem
from tasks.evaluate.scoring import greedy_generate, only_last_span, score_groups, score_sequences
from tasks.evaluate.suites import (
    ChoiceItem,
    Scorer,
    heldout_loss,
    loss_stderr,
    mmlu_suite,
    rank_classify,
    reply_content,
)
from tasks.mix import MIXTURE
from tasks.model import build_tiny
from tasks.schema import RECORDS, record_id
from tasks.tokens.chat import encode
from tasks.tokens.tokenizer import train_bpe

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2}
QA = [
    ("What color is the sky?", "blue", ["blue", "green", "red"]),
    ("What color is grass?", "green", ["blue", "green", "red"]),
    ("What color is blood?", "red", ["blue", "green", "red"]),
]
CHAT = [
    ("Say hello to the world.", "Hello world, nice to meet you."),
    ("Count to three.", "One, two, three."),
]


def conv(user: str, reply: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


@pytest.fixture(scope="module")
def tokenizer():
    lines = [f"{q} {a}" for q, a, _ in QA] + [f"{u} {r}" for u, r in CHAT]
    return train_bpe(lines * 30, vocab_size=320)


def recipe_dict(**evaluate) -> dict:
    return Recipe.model_validate({
        "sources": [{"name": "qa", "format": "p3", "path": "x"}, {"name": "chat", "format": "dolly", "path": "y"}],
        "stages": [{"name": "nlp", "sources": ["qa"]}, {"name": "dialog", "sources": ["chat"]}],
        "train": {"tiny": TINY, "max_seq_len": 256, "seed": 1},
        "evaluate": {"batch_size": 2, "generation_samples": 3, "max_new_tokens": 6, "device": "cpu", **evaluate},
    }).model_dump(by_alias=True)


def tiny_model(tokenizer, seed: int = 1):
    return build_tiny(Recipe.model_validate(recipe_dict()).train.model_copy(update={"seed": seed}), tokenizer)


def fit(model, tokenizer, convs: list[list[dict]], steps: int, lr: float = 1e-2) -> None:
    """A few optimiser steps of assistant-only SFT on fixed conversations (sum of per-row mean losses)."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    encs = [encode(tokenizer, c, 96) for c in convs]
    pad = torch.nn.utils.rnn.pad_sequence
    ids = pad([torch.tensor(e.input_ids) for e in encs], batch_first=True, padding_value=tokenizer.pad_token_id)
    labels = pad([torch.tensor(e.labels) for e in encs], batch_first=True, padding_value=-100)[:, 1:]
    mask = pad([torch.ones(len(e.input_ids), dtype=torch.long) for e in encs], batch_first=True)
    model.train()
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        loss = (nll.sum(1) / (labels != -100).sum(1)).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.fixture(scope="module")
def stages(tokenizer):
    """Two tiny models: `nlp` taught the colour answers, then `dialog` (its continuation) also the chat replies."""
    import copy

    model = tiny_model(tokenizer)
    fit(model, tokenizer, [conv(q, a) for q, a, _ in QA], steps=20)
    nlp = copy.deepcopy(model)
    fit(model, tokenizer, [conv(q, a) for q, a, _ in QA] + [conv(u, r) for u, r in CHAT], steps=20)
    return nlp, model


@pytest.fixture(scope="module")
def trained(stages):
    return stages[1]


def scorer(model, tokenizer, batch_size: int = 2) -> Scorer:
    return Scorer(model, tokenizer, encode, 96, "truncate", batch_size, "cpu")


# -- rank classification ---------------------------------------------------------------------


@pytest.mark.slow  # trains the module fixture's two tiny models (~10 s CPU, more on a loaded machine)
def test_rank_classification_picks_the_learned_answer(trained, tokenizer):
    items = [ChoiceItem("qa", "color", [{"role": "user", "content": q}], tuple(ch), ch.index(a)) for q, a, ch in QA]
    picks = rank_classify(scorer(trained, tokenizer), items)
    assert [p[0] for p in picks] == [it.answer for it in items]  # summed log-likelihood
    assert [p[1] for p in picks] == [it.answer for it in items]  # length-normalised
    assert all(p.skipped is None for p in picks)
    # A wrong gold label is not what the model picks: the test can fail.
    wrong = ChoiceItem("qa", "color", [{"role": "user", "content": QA[0][0]}], ("blue", "green", "red"), 2)
    assert rank_classify(scorer(trained, tokenizer), [wrong])[0][0] == 0


def test_shared_prefix_scoring_equals_scoring_each_choice_alone(trained, tokenizer):
    # Choices of different lengths (one a prefix of another), several groups per batch, padding.
    groups = []
    for q, _, choices in QA + [("Say hello to the world.", None, ["Hello", "Hello world, nice to meet you.", "x"])]:
        groups.append([])
        for c in choices:
            e = encode(tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": c}], 96)
            groups[-1].append((e.input_ids, only_last_span(e.labels)))
    alone = score_sequences(trained, [s for g in groups for s in g], 1, tokenizer.pad_token_id, "cpu")
    for batch_size in (1, 3):
        shared = [s for g in score_groups(trained, groups, batch_size, tokenizer.pad_token_id, "cpu") for s in g]
        assert [s.n_tokens for s in shared] == [s.n_tokens for s in alone]
        assert [s.logprob for s in shared] == pytest.approx([s.logprob for s in alone], abs=1e-4)
    assert score_groups(trained, [[]], 2, tokenizer.pad_token_id, "cpu") == [[]]


def test_items_that_cannot_be_compared_are_skipped_with_a_reason(trained, tokenizer):
    q = [{"role": "user", "content": QA[0][0]}]
    items = [
        ChoiceItem("qa", "color", q, ("blue", " "), 0),  # a choice with nothing to score
        ChoiceItem("qa", "color", [{"role": "user", "content": "sky " * 200}], ("blue", "red"), 0),  # too long
        ChoiceItem("qa", "color", q, ("blue", "red"), 0),
    ]
    for truncation in ("truncate", "drop"):  # "drop" encodes too-long rows to nothing: no crash either
        sc = Scorer(trained, tokenizer, encode, 96, truncation, 2, "cpu")
        picks = rank_classify(sc, items)
        assert [p.skipped for p in picks] == ["empty_choice", "too_long", None]
        assert picks[2].summed == 0


def test_length_normalisation_divides_by_choice_characters(trained, tokenizer):
    # A long choice that repeats the right answer has a lower summed score but may win per character;
    # whatever the model says, the two rankings must follow their definitions.
    sc = scorer(trained, tokenizer)
    item = ChoiceItem("qa", "color", [{"role": "user", "content": QA[0][0]}], ("blue", "blue blue blue"), 0)
    seqs = []
    for c in item.choices:
        e = encode(tokenizer, item.context + [{"role": "assistant", "content": c}], 96)
        seqs.append((e.input_ids, reply_content(e.labels, sc.special_ids)))
    # the reply's content is scored, not the end-of-turn token after it
    assert [sum(v != -100 for v in lab) for _, lab in seqs] == [
        len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in item.choices]
    lp = [s.logprob for s in sc.score(seqs)]
    summed, normed, skipped = rank_classify(sc, [item])[0]
    assert skipped is None
    assert summed == max(range(2), key=lambda i: lp[i])
    assert normed == max(range(2), key=lambda i: lp[i] / len(item.choices[i]))


# -- held-out loss ---------------------------------------------------------------------------


def test_heldout_loss_counts_assistant_tokens_only(trained, tokenizer):
    recs = [{"record_id": f"r{i}", "source": "chat", "task": "t", "messages": conv(u, r), "origin_file": "f",
             "origin_row": i} for i, (u, r) in enumerate(CHAT)]
    res, scored = heldout_loss(scorer(trained, tokenizer), recs)
    assert scored == {"r0", "r1"}
    encs = [encode(tokenizer, r["messages"], 96) for r in recs]
    trained_tokens = sum(e.trained_tokens for e in encs)
    assert trained_tokens < sum(len(e.input_ids) for e in encs)  # prompts are not counted
    # transformers' own loss with the same labels: mean over labelled tokens (shifted).
    per_record = []
    with torch.no_grad():
        for e in encs:
            out = trained(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels]))
            per_record.append(out.loss.item() * e.trained_tokens)
    nll = sum(per_record)
    overall = {(r["source"], r["task"], r["metric"]): r for r in res.rows}
    loss = overall[(None, None, "loss")]
    # labels[0] is never a target after the shift: the template starts with a user turn, so nothing is lost
    assert loss["n"] == trained_tokens
    assert loss["value"] == pytest.approx(nll / trained_tokens, rel=1e-4)
    assert overall[(None, None, "perplexity")]["value"] == pytest.approx(math.exp(loss["value"]), rel=1e-6)
    assert overall[("chat", "t", "loss")]["value"] == pytest.approx(loss["value"])
    stderr = overall[(None, None, "loss_stderr")]  # over the 2 records, not their tokens
    assert stderr["n"] == 2 and stderr["value"] > 0
    assert stderr["value"] == pytest.approx(loss_stderr(np.array(per_record), np.array(
        [e.trained_tokens for e in encs], float)), rel=1e-4)


def test_row_without_assistant_tokens_is_rejected(trained, tokenizer):
    recs = [{"record_id": "x", "source": "s", "task": "t", "messages": [{"role": "user", "content": "hi"}],
             "origin_file": "f.jsonl", "origin_row": 7}]
    res, scored = heldout_loss(scorer(trained, tokenizer), recs)
    assert not scored and res.rows == []
    assert res.rejects[0]["reason"] == "no_assistant_tokens" and res.rejects[0]["origin_row"] == 7


def test_batching_does_not_change_scores_or_generations(trained, tokenizer):
    encs = [encode(tokenizer, conv(u, r), 96) for u, r in CHAT + [(q, a) for q, a, _ in QA]]
    seqs = [(e.input_ids, e.labels) for e in encs]
    one = score_sequences(trained, seqs, 1, tokenizer.pad_token_id, "cpu")
    many = score_sequences(trained, seqs, 4, tokenizer.pad_token_id, "cpu")
    assert [s.n_tokens for s in one] == [s.n_tokens for s in many]
    assert [s.logprob for s in one] == pytest.approx([s.logprob for s in many], abs=1e-4)
    prompts = [tokenizer.apply_chat_template(conv(u, "x")[:1], add_generation_prompt=True, tokenize=False)
               for u, _ in CHAT + [(q, a) for q, a, _ in QA]]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    g1 = greedy_generate(trained, ids, 5, 1, tokenizer.pad_token_id, tokenizer.eos_token_id, "cpu")
    g4 = greedy_generate(trained, ids, 5, 4, tokenizer.pad_token_id, tokenizer.eos_token_id, "cpu")
    assert g1 == g4
    assert tokenizer.decode(g1[0], skip_special_tokens=True).startswith("Hello")


# -- the step end to end ---------------------------------------------------------------------


def records(rows: list[tuple[str, str, list[dict], list[str]]]) -> list[dict]:
    out = []
    for i, (source, task, messages, choices) in enumerate(rows):
        out.append({
            "record_id": record_id(source, messages), "source": source, "task": task, "template_id": "",
            "example_id": str(i), "messages": messages, "answer_choices": choices, "origin_file": f"{source}.jsonl",
            "origin_row": i + 1, "n_turns": len(messages), "n_chars": sum(len(m["content"]) for m in messages),
            "lang": "en", "meta": "{}",
        })
    return out


HELDOUT = records(
    [("qa", "color", conv(q, a), ch) for q, a, ch in QA]
    + [("chat", "talk", conv(u, r), []) for u, r in CHAT]
    + [("chat", "talk", [{"role": "user", "content": "no reply"}], [])]  # rejected: nothing to score
)


def _commit(store, step: str, key: str, tables: dict, files: dict | None = None, inputs=None, **stats) -> dict:
    w = store.begin(step, key, label=key, inputs=inputs or {}, config={})
    for name, (schema, rows) in tables.items():
        w.write(name, schema, rows)
    for name, data in (files or {}).items():
        w.attach_file(name, data)
    w.stats.update(rows_in=0, rows_out=0, rows_rejected=0, **stats)
    return w.commit()


def _saved(obj) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        obj.save_pretrained(tmp)
        return {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer, stages):
    """A store with a tokenizer, a split, a two-stage mixture and two trained stages."""
    from tasks.store import ArtifactStore

    store = ArtifactStore(tmp_path_factory.mktemp("eval") / "artifacts")
    tok = _commit(store, "tokenizer", "tok", {}, _saved(tokenizer))
    split = _commit(store, "split", "split", {"records_eval": (RECORDS, HELDOUT)})
    mix_rows = [
        {"stage": "nlp", "position": 0, "record_id": "a", "source": "qa", "task": "color", "repeat": 0,
         "n_tokens": 5, "replay_from": None},
        {"stage": "dialog", "position": 0, "record_id": "b", "source": "chat", "task": "talk", "repeat": 0,
         "n_tokens": 5, "replay_from": None},
        {"stage": "dialog", "position": 1, "record_id": "a", "source": "qa", "task": "color", "repeat": 0,
         "n_tokens": 5, "replay_from": "nlp"},
    ]
    mix = _commit(store, "mix", "mix", {"mixture": (MIXTURE, mix_rows)})
    refs = [{"step": "mix", "key": mix["key"]}, {"step": "tokenizer", "key": tok["key"]}]  # as train_stage records
    stage_nlp = _commit(store, "train", "nlp", {}, _saved(stages[0]), inputs=refs, stage="nlp")
    stage_dialog = _commit(store, "train", "dialog", {}, _saved(stages[1]), inputs=refs, stage="dialog")
    return store, tok, split, mix, {"nlp": stage_nlp, "dialog": stage_dialog}


def _eval_all(world, recipe: dict) -> list[dict]:
    store, tok, split, mix, stages = world
    out = [evaluate(str(store.root), recipe, "base", None, split, mix, tok)]
    for name in ("nlp", "dialog"):
        out.append(evaluate(str(store.root), recipe, name, stages[name], split, mix, tok))
    return out


@pytest.mark.slow
def test_evaluate_step_tables_comparison_and_determinism(world, tmp_path):
    store = world[0]
    recipe = recipe_dict()
    manifests = _eval_all(world, recipe)
    base = manifests[0]
    table = pq.read_table(store.paths(base, "eval")[0])
    assert table.schema.names[:1] == ["run_id"]
    assert set(["run_id", "stage", "model_hash", "mixture_hash", "suite", "source", "task", "metric", "value",
                "n"]) <= set(table.schema.names)
    assert table.schema == EVAL
    rows = table.to_pylist()
    assert {r["suite"] for r in rows} == {"heldout", "generation"}
    assert {r["mixture_hash"] for r in rows} == {world[3]["key"]}
    metrics = {(r["suite"], r["source"], r["metric"]) for r in rows if r["task"] is None}
    assert {("heldout", "qa", "loss"), ("heldout", "chat", "perplexity"), ("heldout", "qa", "mc_accuracy"),
            ("heldout", "qa", "mc_accuracy_norm"), ("generation", None, "rouge_l"),
            ("generation", None, "exact_match")} <= metrics
    st = base["stats"]
    assert st["rows_in"] == 6 and st["rows_rejected"] == 1 and st["rows_out"] == 5
    rejects = pq.read_table(store.paths(base, "rejects")[0]).to_pylist()
    assert [r["reason"] for r in rejects] == ["no_assistant_tokens"]
    gens = pq.read_table(store.paths(base, "generations")[0]).to_pylist()
    assert len(gens) == 3 and {"prompt", "reference", "generation", "exact_match", "rouge_l"} <= set(gens[0])
    assert "| heldout | loss |" in st["report_markdown"]

    # Determinism: a fresh store, same weights and data, same numbers (nothing cached).
    from tasks.store import ArtifactStore

    other = ArtifactStore(tmp_path / "again")
    s0, tok, split, mix, stages = world
    copies = {}
    for name, m in [("tok", tok), ("split", split), ("mix", mix), ("nlp", stages["nlp"])]:
        src = s0.root / m["dir"]
        dst = other.root / m["dir"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        import shutil

        shutil.copytree(src, dst)
        copies[name] = other.load(m["step"], m["key"])
    again = evaluate(str(other.root), recipe, "nlp", copies["nlp"], copies["split"], copies["mix"], copies["tok"])
    assert again["skipped"] is False
    first = pq.read_table(store.paths(manifests[1], "eval")[0]).to_pylist()
    second = pq.read_table(other.paths(again, "eval")[0]).to_pylist()
    assert first == second
    # Same inputs again: the cached manifest.
    assert evaluate(str(store.root), recipe, "nlp", stages["nlp"], split, mix, tok)["skipped"] is True

    # Comparison: one column per model in training order; each stage beats base on its own data.
    cmp = comparison_rows(str(store.root), manifests)
    assert list(cmp[0]) == ["suite", "metric", "source", "0:base", "1:nlp", "2:dialog"]
    by = {(r["suite"], r["metric"], r["source"]): r for r in cmp}
    assert by[("heldout", "loss", "qa")]["1:nlp"] < by[("heldout", "loss", "qa")]["0:base"]
    assert by[("heldout", "loss", "chat")]["2:dialog"] < by[("heldout", "loss", "chat")]["0:base"]
    assert by[("heldout", "mc_accuracy", "qa")]["2:dialog"] == 1.0
    forget = by[("heldout", "forgetting_loss_delta", "stage:nlp")]
    assert forget["0:base"] is None and forget["1:nlp"] is None
    assert forget["2:dialog"] == pytest.approx(
        by[("heldout", "loss", "qa")]["2:dialog"] - by[("heldout", "loss", "qa")]["1:nlp"])
    assert ("heldout", "forgetting_loss_delta", "stage:dialog") not in by  # nothing after the last stage
    md = comparison_markdown(str(store.root), manifests)
    assert md.splitlines()[2] == "| suite | metric | source | 0:base | 1:nlp | 2:dialog |"

    # The same SQL file against the real catalog after publishing.
    from tasks.catalog import query
    from tasks.evaluate import catalog_comparison_rows
    from tasks.store import RunLog

    run = RunLog(store, "r1", "recipe.yaml")
    catalog.publish_step(store, run, "mix", [world[3]], [])
    catalog.publish_step(store, run, "evaluate", manifests, [])
    assert catalog_comparison_rows(str(store.root)) == cmp
    assert "generation" in query(store.root, "SELECT DISTINCT suite FROM eval ORDER BY 1", "csv")
    assert "blue" in query(store.root, "SELECT generation FROM generations WHERE stage = 'dialog'", "csv")


def test_mmlu_suite_in_the_step(world, tmp_path):
    store, tok, split, mix, stages = world
    (tmp_path / "colors_test.csv").write_text("Sky color?,blue,green,red,black,A\nGrass?,blue,green,red,black,1\n")
    recipe = recipe_dict(mmlu=[str(tmp_path / "*.csv")], mmlu_score_by="text", generation_samples=0)
    m = evaluate(str(store.root), recipe, "dialog", stages["dialog"], split, mix, tok)
    rows = pq.read_table(store.paths(m, "eval")[0]).to_pylist()
    mmlu = {(r["source"], r["task"], r["metric"]): r for r in rows if r["suite"] == "mmlu"}
    assert set(mmlu) == {("mmlu", t, m) for t in (None, "colors") for m in ("accuracy", "accuracy_norm")}
    assert mmlu[("mmlu", None, "accuracy")]["n"] == 2 and mmlu[("mmlu", "colors", "accuracy")]["n"] == 2
    assert mmlu[("mmlu", None, "accuracy")]["value"] in (0.0, 0.5, 1.0)
    assert m["stats"]["rows_in"] == 6 + 2
    assert not any(r["suite"] == "generation" for r in rows)


def test_mmlu_cloze_asks_the_question_alone_and_ranks_the_choice_texts(trained, tokenizer):
    # The module's model learned these questions as plain chat turns: asked the same way, it knows them.
    qs = [MmluItem("f.csv", i + 1, "colors", q, tuple(ch + ["black"]), ch.index(a)) for i, (q, a, ch) in enumerate(QA)]
    res = mmlu_suite(scorer(trained, tokenizer), qs, "cloze")
    acc = {(r["task"], r["metric"]): r for r in res.rows}
    assert acc[(None, "accuracy")]["value"] == 1.0 and acc[(None, "accuracy")]["n"] == 3
    wrong = [MmluItem("f.csv", 1, "colors", QA[0][0], ("green", "red", "blue", "black"), 0)]  # gold label wrong
    assert mmlu_suite(scorer(trained, tokenizer), wrong, "cloze").rows[0]["value"] == 0.0


def test_finished_run_inputs_finds_the_latest_artifacts(world, tmp_path):
    import yaml

    from tasks.evaluate import finished_run_inputs
    from tasks.recipe import load_recipe
    from tasks.store import RunLog

    store, tok, split, mix, stages = world
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(_finished_recipe(tmp_path)))
    with pytest.raises(TunelineError, match="no published 'split' step"):
        finished_run_inputs(load_recipe(tmp_path / "recipe.yaml"), str(store.root))
    run = RunLog(store, "r2", "recipe.yaml")
    for step, ms in [("split", [split]), ("mix", [mix]), ("train", [stages["nlp"]])]:
        catalog.publish_step(store, run, step, ms, [])
    with pytest.raises(TunelineError, match=r"stages \['dialog'\] have no published training run"):
        finished_run_inputs(load_recipe(tmp_path / "recipe.yaml"), str(store.root))
    catalog.publish_step(store, run, "train", [stages["nlp"], stages["dialog"]], [])
    prepared, models = finished_run_inputs(load_recipe(tmp_path / "recipe.yaml"), str(store.root))
    assert prepared["split"]["key"] == split["key"] and prepared["mix"]["key"] == mix["key"]
    assert prepared["tokenizer"]["key"] == tok["key"]  # found through the mix manifest's inputs
    assert {k: v["key"] for k, v in models.items()} == {"nlp": stages["nlp"]["key"], "dialog": stages["dialog"]["key"]}


def _finished_recipe(tmp_path) -> dict:
    for name in ("qa.jsonl", "chat.jsonl"):
        (tmp_path / name).write_text("")
    rd = recipe_dict()
    rd.pop("base_dir")
    rd["sources"] = [{"name": "qa", "format": "p3", "path": "qa.jsonl"},
                     {"name": "chat", "format": "dolly", "path": "chat.jsonl"}]
    return rd
