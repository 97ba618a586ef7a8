"""The held-out split: seeded, grouped by example, per source and task, stable and lossless."""
from __future__ import annotations

import json
from collections import defaultdict

import pyarrow.parquet as pq
import pytest

from dedup_fixtures import deduplicated
from tasks.schema import RECORDS, record_id
from tasks.config import SplitConfig
from tasks.split import PINNED, held_out_before_split, split
from tasks.store import ArtifactStore

SOURCES = [{"name": n, "format": "dolly", "path": "x"} for n in ("flan", "p3", "dolly")]


def record(source: str, task: str, i: int, template: str = "", example: str | None = None) -> dict:
    msgs = [{"role": "user", "content": f"{source} {task} question {i} {template}"},
            {"role": "assistant", "content": f"answer {i}"}]
    return {
        "record_id": record_id(source, msgs, template, example or ""),
        "source": source, "task": task, "template_id": template, "example_id": example,
        "messages": msgs, "answer_choices": [], "origin_file": f"{source}.jsonl", "origin_row": i + 1,
        "n_turns": 2, "n_chars": 20, "lang": "en", "meta": "{}",
    }


def dataset(n_p3_examples: int = 60, templates: int = 3, n_dolly: int = 200) -> list[dict]:
    rows = []
    for e in range(n_p3_examples):  # template variants of one example share example_id
        rows += [record("p3", "ag_news", e, f"tpl{t}", f"ag_news/{e}") for t in range(templates)]
    rows += [record("dolly", "open_qa" if i % 2 else "brainstorming", i) for i in range(n_dolly)]
    rows += [record("flan", "cot", i, "t0", f"cot/{i}") for i in range(40)]
    return rows


def sides(store: ArtifactStore, manifest: dict) -> tuple[dict, dict]:
    train = store.read(manifest, "records_train").to_pylist()
    held = store.read(manifest, "records_eval").to_pylist()
    return {r["record_id"]: r for r in train}, {r["record_id"]: r for r in held}


def run(tmp_path, rows, split_cfg, name="a"):
    store = ArtifactStore(tmp_path / name)
    m = split(str(store.root), {"sources": SOURCES, "split": split_cfg}, deduplicated(store, rows, SOURCES))
    return store, m


def test_lossless_disjoint_and_counts(tmp_path):
    rows = dataset()
    store, m = run(tmp_path, rows, {"eval_fraction": 0.2, "seed": 7})
    train, held = sides(store, m)
    assert not set(train) & set(held)
    assert set(train) | set(held) == {r["record_id"] for r in rows}
    s = m["stats"]
    assert s["rows_in"] == s["rows_out"] == len(rows) and s["rows_rejected"] == 0
    assert s["rows_eval"] == len(held) > 0 and s["rows_train"] == len(train) > 0
    assert store.read(m, "rejects").num_rows == 0
    assert store.read(m, "records_eval").schema == RECORDS
    assert "| p3 |" in s["report_markdown"]


def test_template_variants_fall_on_one_side(tmp_path):
    store, m = run(tmp_path, dataset(), {"eval_fraction": 0.3, "seed": 7})
    train, held = sides(store, m)
    side_of_example = defaultdict(set)
    for side, recs in (("train", train), ("eval", held)):
        for r in recs.values():
            if r["source"] == "p3":
                side_of_example[r["example_id"]].add(side)
    assert all(len(s) == 1 for s in side_of_example.values())
    assert {"train"} in side_of_example.values() and {"eval"} in side_of_example.values()


def test_template_variants_in_tasks_of_their_own_fall_on_one_side(tmp_path):
    # promptsource names a task per template: `news/tpl0`, `news/tpl1` for the same example
    rows = [record("p3", f"news/tpl{t}", e, f"tpl{t}", f"news/{e}") for e in range(80) for t in range(2)]
    store, m = run(tmp_path, rows, {"eval_fraction": 0.3, "seed": 7})
    train, held = sides(store, m)
    side_of_example = defaultdict(set)
    for side, recs in (("train", train), ("eval", held)):
        for r in recs.values():
            side_of_example[r["example_id"]].add(side)
    assert all(len(s) == 1 for s in side_of_example.values()), side_of_example
    assert {"train"} in side_of_example.values() and {"eval"} in side_of_example.values()


def test_fraction_is_close_per_source(tmp_path):
    rows = [record("dolly", "open_qa", i) for i in range(3000)]
    store, m = run(tmp_path, rows, {"eval_fraction": 0.1, "seed": 3})
    share = m["stats"]["rows_eval"] / len(rows)
    assert 0.08 < share < 0.12


def test_deterministic_and_stable_when_data_grows(tmp_path):
    rows = dataset()
    store_a, ma = run(tmp_path, rows, {"eval_fraction": 0.2, "seed": 7}, "a")
    store_b, mb = run(tmp_path, rows + [record("dolly", "open_qa", 1000 + i) for i in range(50)],
                      {"eval_fraction": 0.2, "seed": 7}, "b")
    held_a, held_b = set(sides(store_a, ma)[1]), set(sides(store_b, mb)[1])
    assert held_a <= held_b  # rows already assigned never move when data is added
    a_bytes = [p.read_bytes() for p in store_a.paths(ma, "records_eval")]
    store_c, mc = run(tmp_path, rows, {"eval_fraction": 0.2, "seed": 7}, "c")
    assert a_bytes == [p.read_bytes() for p in store_c.paths(mc, "records_eval")]
    store_d, md = run(tmp_path, rows, {"eval_fraction": 0.2, "seed": 8}, "d")
    assert set(sides(store_d, md)[1]) != held_a


def test_eval_rows_per_source_and_task(tmp_path):
    store, m = run(tmp_path, dataset(), {"eval_rows": 10, "seed": 7})
    train, held = sides(store, m)
    per_task = defaultdict(int)
    for r in held.values():
        per_task[(r["source"], r["task"])] += 1
    # p3 groups have 3 rows: at most 10 rows -> 9; singletons reach exactly 10.
    assert per_task[("p3", "ag_news")] == 9
    assert per_task[("dolly", "open_qa")] == per_task[("dolly", "brainstorming")] == 10
    assert per_task[("flan", "cot")] == 10
    examples = defaultdict(set)
    for side, recs in (("t", train), ("e", held)):
        for r in recs.values():
            examples[r["example_id"] or r["record_id"]].add(side)
    assert all(len(s) == 1 for s in examples.values())


def test_eval_rows_leaves_training_rows(tmp_path):
    rows = [record("flan", "tiny_task", i, "t", f"tiny/{i}") for i in range(4)]
    store, m = run(tmp_path, rows, {"eval_rows": 100, "seed": 7})
    assert m["stats"]["rows_train"] == 1 and m["stats"]["rows_eval"] == 3


def test_null_example_id_groups_by_record(tmp_path):
    rows = [record("dolly", "open_qa", i) for i in range(400)]
    assert all(r["example_id"] is None for r in rows)
    store, m = run(tmp_path, rows, {"eval_fraction": 0.5, "seed": 1})
    assert 120 < m["stats"]["rows_eval"] < 280  # rows split individually, not as one null group


def test_zero_fraction_holds_out_nothing(tmp_path):
    rows = dataset(10, 2, 10)
    store, m = run(tmp_path, rows, {"eval_fraction": 0.0})
    assert m["stats"]["rows_eval"] == 0
    assert pq.read_table(store.paths(m, "records_eval")[0]).num_rows == 0


def test_the_side_is_known_before_the_split_runs(tmp_path):
    """Convert draws few-shot exemplars with held_out_before_split; it must be the split's decision."""
    rows = dataset()
    cfg = {"eval_fraction": 0.3, "seed": 9}
    store, m = run(tmp_path, rows, cfg)
    train, held = sides(store, m)
    predicted = {r["record_id"] for r in rows
                 if held_out_before_split(SplitConfig(**cfg), r["source"], r["example_id"] or r["record_id"])}
    assert predicted == set(held) and held and train


def test_eval_rows_keeps_exemplar_pool_examples_in_training(tmp_path):
    rows = [record("flan", "cot", i, "t0", f"cot/{i}") for i in range(40)]
    _, m = run(tmp_path, rows, {"eval_rows": 10, "seed": 7}, "plain")
    first_held = {r["example_id"] for r in ArtifactStore(tmp_path / "plain").read(m, "records_eval").to_pylist()}
    pool = {f"cot/{i}" for i in range(0, 40, 2)} | first_held  # the pool holds examples the split would take
    for r in rows:
        r["meta"] = json.dumps({PINNED: True}) if r["example_id"] in pool else "{}"
    # nothing pinned is held out, eval_rows is still met from the other examples
    assert not held_out_before_split(SplitConfig(eval_rows=10, seed=7), "flan", "cot/1")
    store, m = run(tmp_path, rows, {"eval_rows": 10, "seed": 7}, "pinned")
    _, held = sides(store, m)
    assert len(held) == 10 and not {r["example_id"] for r in held.values()} & pool
