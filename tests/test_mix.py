"""The mix step: shares, totals, repeats, replay, determinism, held-out exclusion, errors.

Token counts come from the project's real tokenizer: a byte-level BPE trained by the
`tokenizer` step on the fixture rows (once per module), counted with train_sft.chat.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dedup_fixtures import deduplicated

from tasks import catalog
from tasks.errors import GateFailed, RecipeError, TunelineError
from tasks.mix import check_stages, mix
from tasks.schema import RECORDS, record_id
from tasks.split import split
from tasks.store import ArtifactStore, RunLog
from tasks.tokens.chat import count_tokens
from tasks.tokens.tokenizer import build_tokenizer, load_tokenizer

NAMES = ("flan", "flan_cot", "p3", "dolly", "sharegpt")
SOURCES = [{"name": n, "format": "dolly", "path": "x"} for n in NAMES]
# source -> task -> rows
SIZES = {
    "flan": {"anli": 30, "boolq": 12, "rte": 6},
    "flan_cot": {"cot_gsm8k": 10},
    "p3": {"ag_news/classify": 24},
    "dolly": {"open_qa": 20, "brainstorming": 10},
    "sharegpt": {"conversation": 8},
}


def read_stage(root: str, mix_manifest: dict, stage: str, columns: list[str] | None = None) -> pa.Table:
    """One stage's manifest rows in training order."""
    store = ArtifactStore(root)
    table = store.read(mix_manifest, "mixture", columns=None)
    if table is None:
        raise TunelineError(f"mix manifest {mix_manifest.get('dir')} has no mixture table")
    rows = table.filter(pc.equal(table.column("stage"), stage))
    if rows.num_rows == 0:
        raise TunelineError(f"mixture has no rows for stage {stage!r}; stages: "
                            f"{sorted(set(table.column('stage').to_pylist()))}")
    rows = rows.sort_by("position")
    return rows.select(columns) if columns else rows



def record(source: str, task: str, i: int, words: int = 6) -> dict:
    body = " ".join(f"w{(i * 7 + k) % 50}" for k in range(words))
    msgs = [{"role": "user", "content": f"{task} {i}: {body}"}, {"role": "assistant", "content": f"ok {body}"}]
    if source == "sharegpt":  # long multi-turn conversations
        msgs = msgs * (2 + i % 3)
    example = f"{task}/{i // 2}" if source == "p3" else None
    tpl = f"t{i % 2}" if source == "p3" else ""
    return {
        "record_id": record_id(source, msgs, tpl, example or ""), "source": source, "task": task,
        "template_id": tpl, "example_id": example, "messages": msgs, "answer_choices": [],
        "origin_file": f"{source}.jsonl", "origin_row": i + 1, "n_turns": len(msgs), "n_chars": 10,
        "lang": "en", "meta": "{}",
    }


def all_rows(sizes=SIZES) -> list[dict]:
    return [record(s, t, i) for s, tasks in sizes.items() for t, n in tasks.items() for i in range(n)]


def publish(store: ArtifactStore, step: str, key: str, **tables) -> dict:
    w = store.begin(step, key, label=step)
    for name, rows in tables.items():
        w.write(name, RECORDS, rows)
    return w.commit()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    store = ArtifactStore(tmp_path_factory.mktemp("tok"))
    vm = publish(store, "validate", "v0", records_valid=all_rows())
    tm = build_tokenizer(str(store.root), {"sources": SOURCES, "train": {"vocab_size": 300}}, vm)
    return load_tokenizer(str(store.root), tm)


@pytest.fixture
def counter(tokenizer):
    return lambda batch, tools: count_tokens(tokenizer, batch, tools=tools)


def setup(tmp_path, rows=None, name="a"):
    """A store with a validate manifest (records_valid) and a split manifest (empty records_eval)."""
    store = ArtifactStore(tmp_path / name)
    vm = publish(store, "validate", "v1", records_valid=rows if rows is not None else all_rows())
    sm = publish(store, "split", "s1", records_eval=[], records_train=[])
    return store, vm, sm


def run_mix(tmp_path, stages, counter, rows=None, name="a"):
    store, vm, sm = setup(tmp_path, rows, name)
    m = mix(str(store.root), {"sources": SOURCES, "stages": stages}, vm, sm, None, count_tokens=counter)
    return store, m


def table(store, m, name="mixture"):
    return store.read(m, name).to_pylist()


def by_stage(rows):
    out = defaultdict(list)
    for r in rows:
        out[r["stage"]].append(r)
    return out


# --------------------------------------------------------------------------- coverage and shares
def test_use_everything_once(tmp_path, counter):
    store, m = run_mix(tmp_path, [{"name": "all", "sources": list(NAMES)}], counter)
    rows = table(store, m)
    ids = Counter(r["record_id"] for r in rows)
    assert set(ids) == {r["record_id"] for r in all_rows()}
    assert set(ids.values()) == {1} and {r["repeat"] for r in rows} == {0}
    assert [r["position"] for r in rows] == list(range(len(rows)))
    assert m["stats"]["rows_out"] == len(rows) == sum(sum(t.values()) for t in SIZES.values())


def test_cap_per_task_downsamples_big_tasks(tmp_path, counter):
    store, m = run_mix(tmp_path, [{"name": "nlp", "sources": ["flan"], "cap_per_task": 10}], counter)
    per_task = Counter(r["task"] for r in table(store, m))
    assert per_task == {"anli": 10, "boolq": 10, "rte": 6}
    assert len({r["record_id"] for r in table(store, m)}) == 26  # without replacement
    (report,) = table(store, m, "mixture_report")
    assert report["repeat_factor"] == pytest.approx(26 / 48) and report["available_rows"] == 48


@pytest.mark.parametrize("total", [100, 37])
def test_target_shares_within_one_example(tmp_path, counter, total):
    shares = {"flan": 0.4, "dolly": 0.4, "sharegpt": 0.2}
    store, m = run_mix(tmp_path, [{"name": "s", "strategy": "target", "shares": shares, "total": total}], counter)
    rows = table(store, m)
    counts = Counter(r["source"] for r in rows)
    assert sum(counts.values()) == total
    for s, share in shares.items():
        assert abs(counts[s] - share * total) <= 1, (s, counts[s])
    if total == 100:  # sharegpt (8 rows) is upsampled: whole passes plus a remainder
        reps = Counter(r["repeat"] for r in rows if r["source"] == "sharegpt")
        assert reps == {0: 8, 1: 8, 2: 4}
        once = Counter(r["record_id"] for r in rows if r["source"] == "flan")
        assert set(once.values()) == {1}  # flan (48 rows) is downsampled without replacement
    report = {r["source"]: r for r in table(store, m, "mixture_report")}
    assert report["sharegpt"]["repeat_factor"] == pytest.approx(counts["sharegpt"] / 8)
    assert report["flan"]["target_share"] == 0.4


def test_token_shares_within_documented_tolerance(tmp_path, counter):
    shares = {"flan": 0.4, "dolly": 0.3, "sharegpt": 0.3}
    total = 3000
    stage = {"name": "s", "strategy": "target", "unit": "tokens", "shares": shares, "total": total,
             "share_tolerance": 0.05}
    store, m = run_mix(tmp_path, [stage], counter)
    rows = table(store, m)
    tokens = defaultdict(int)
    longest = defaultdict(int)
    for r in rows:
        tokens[r["source"]] += r["n_tokens"]
        longest[r["source"]] = max(longest[r["source"]], r["n_tokens"])
    for s, share in shares.items():
        # Documented tolerance: within one row (the source's longest) of its token target.
        assert abs(tokens[s] - share * total) <= longest[s], (s, tokens[s], share * total)
    # Unit matters: by tokens, the long sharegpt conversations get far fewer rows than by examples.
    counts = Counter(r["source"] for r in rows)
    assert counts["sharegpt"] < counts["dolly"]


def test_temperature_and_proportional_shares(tmp_path, counter):
    stages = [
        {"name": "temp", "sources": ["flan", "sharegpt"], "strategy": "temperature", "temperature": 2.0},
        {"name": "prop", "sources": ["flan", "dolly"], "weights": {"dolly": 2.0}, "total": 78},
    ]
    store, m = run_mix(tmp_path, stages, counter)
    report = {(r["stage"], r["source"]): r for r in table(store, m, "mixture_report")}
    a, b = 48 ** 0.5, 8 ** 0.5
    assert report[("temp", "flan")]["target_share"] == pytest.approx(a / (a + b))
    # Use-once under temperature: the source that limits the total is used exactly once.
    assert report[("temp", "sharegpt")]["rows"] == 8 and report[("temp", "sharegpt")]["max_repeat"] == 1
    assert report[("prop", "dolly")]["target_share"] == pytest.approx(60 / 108)
    assert report[("prop", "dolly")]["rows"] + report[("prop", "flan")]["rows"] == 78


# --------------------------------------------------------------------------- order and determinism
def test_rows_are_interleaved_not_concatenated(tmp_path, counter):
    store, m = run_mix(tmp_path, [{"name": "all", "sources": ["flan", "dolly"]}], counter)
    sources = [r["source"] for r in table(store, m)]
    n = len(sources)
    for quarter in range(4):
        part = Counter(sources[quarter * n // 4:(quarter + 1) * n // 4])
        assert part["dolly"] >= 4 and part["flan"] >= 8, part  # 30 dolly / 48 flan spread evenly


def test_same_seed_byte_identical_other_seed_same_counts(tmp_path, counter):
    stage = {"name": "s", "strategy": "target", "shares": {"flan": 0.6, "sharegpt": 0.4}, "total": 60}
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        store, m = run_mix(tmp_path, [{**stage, "seed": seed}], counter, name=name)
        runs[name] = (store, m)
    blob = lambda n: [p.read_bytes() for p in runs[n][0].paths(runs[n][1], "mixture")]
    assert blob("a") == blob("b")
    a, c = table(*runs["a"]), table(*runs["c"])
    assert Counter(r["source"] for r in a) == Counter(r["source"] for r in c)
    assert [r["record_id"] for r in a] != [r["record_id"] for r in c]


# --------------------------------------------------------------------------- held-out rows
def test_no_heldout_row_in_any_stage(tmp_path, counter):
    store = ArtifactStore(tmp_path / "h")
    rows = all_rows()
    dm = deduplicated(store, rows, SOURCES)
    recipe = {"sources": SOURCES, "split": {"eval_fraction": 0.25, "seed": 7},
              "stages": [{"name": "nlp", "sources": ["flan", "p3"], "total": 200},
                         {"name": "chat", "sources": ["dolly", "sharegpt"],
                          "replay": {"from": "nlp", "share": 0.2}}]}
    sm = split(str(store.root), recipe, dm)
    held = {r["record_id"] for r in store.read(sm, "records_eval").to_pylist()}
    assert held
    train = store.read(sm, "records_train")
    vm = publish(store, "validate", "v1", records_valid=train.to_pylist())
    m = mix(str(store.root), recipe, vm, sm, None, count_tokens=counter)
    used = {r["record_id"] for r in table(store, m)}
    assert used and not used & held

    leaky = publish(store, "validate", "v2", records_valid=rows)
    with pytest.raises(TunelineError, match="held-out rows"):
        mix(str(store.root), recipe, leaky, sm, None, count_tokens=counter)


# --------------------------------------------------------------------------- replay
def _replay_run(tmp_path, counter, disjoint: bool, stage1: dict, name: str):
    stages = [stage1, {"name": "chat", "strategy": "target", "shares": {"dolly": 0.6, "sharegpt": 0.3},
                       "total": 40, "replay": {"from": "nlp", "share": 0.1, "disjoint": disjoint}}]
    store, m = run_mix(tmp_path, stages, counter, name=name)
    rows = by_stage(table(store, m))
    return rows["nlp"], rows["chat"]


def test_replay_overlapping_comes_from_earlier_manifest(tmp_path, counter):
    nlp, chat = _replay_run(tmp_path, counter, False, {"name": "nlp", "sources": ["flan"], "total": 20}, "o")
    replayed = [r for r in chat if r["replay_from"] == "nlp"]
    assert len(replayed) == 4  # 10% of 40
    assert {r["record_id"] for r in replayed} <= {r["record_id"] for r in nlp}
    assert all(r["source"] == "flan" for r in replayed)
    assert all(r["replay_from"] is None for r in chat if r["source"] != "flan")


def test_replay_disjoint_prefers_rows_the_earlier_stage_left_out(tmp_path, counter):
    nlp, chat = _replay_run(tmp_path, counter, True, {"name": "nlp", "sources": ["flan"], "total": 20}, "d")
    replayed = {r["record_id"] for r in chat if r["replay_from"] == "nlp"}
    flan = {r["record_id"] for r in all_rows() if r["source"] == "flan"}
    assert len(replayed) == 4 and replayed <= flan and not replayed & {r["record_id"] for r in nlp}
    # When the earlier stage used everything, disjoint replay falls back to its manifest.
    nlp, chat = _replay_run(tmp_path, counter, True, {"name": "nlp", "sources": ["flan_cot"]}, "d2")
    replayed = {r["record_id"] for r in chat if r["replay_from"] == "nlp"}
    assert len(replayed) == 4 and replayed <= {r["record_id"] for r in nlp}


# --------------------------------------------------------------------------- impossible specs
BAD_STAGES = [
    ([{"name": "s", "strategy": "target", "shares": {"flan": 0.5, "dolly": 0.4}}], "sum to 0.9"),
    ([{"name": "s", "strategy": "target", "shares": {"flan": 0.5, "dolly": 0.4},
       "replay": {"from": "s", "share": 0.1}}], "names the stage itself"),
    ([{"name": "s", "sources": ["flan", "nope"]}], "unknown source 'nope'"),
    ([{"name": "s", "sources": ["flan"], "replay": {"from": "missing", "share": 0.1}}], "does not exist"),
    ([{"name": "a", "sources": ["flan"], "replay": {"from": "b", "share": 0.1}}, {"name": "b", "sources": ["dolly"]}],
     "is a later stage"),
    ([{"name": "s", "strategy": "target"}], "needs `shares`"),
    ([{"name": "s", "shares": {"flan": 1.0}}], "need strategy: target"),
    ([{"name": "s", "strategy": "target", "shares": {"flan": 1.0}, "sources": ["flan", "dolly"]}],
     "exactly the stage's sources"),
    ([{"name": "s", "sources": ["flan"], "weights": {"dolly": 1.0}}], "not in the stage"),
]


@pytest.mark.parametrize("stages,message", BAD_STAGES)
def test_impossible_specs_fail_before_anything_is_written(tmp_path, counter, stages, message):
    with pytest.raises(RecipeError, match=message):
        check_stages({"sources": SOURCES, "stages": stages})
    store, vm, sm = setup(tmp_path)
    with pytest.raises(RecipeError, match=message):
        mix(str(store.root), {"sources": SOURCES, "stages": stages}, vm, sm, None, count_tokens=counter)
    assert not (store.root / "mix").exists() or not any((store.root / "mix").iterdir())


@pytest.mark.parametrize("stage,message", [
    ({"name": "s", "sources": ["sharegpt"], "total": 9, "upsample": False}, "needs 9 rows but has 8"),
    ({"name": "s", "strategy": "target", "shares": {"flan": 0.5, "sharegpt": 0.5}, "total": 40,
      "upsample": False}, "source 'sharegpt'"),
    ({"name": "s", "sources": ["flan"], "tasks": ["anli", "nope"]}, r"tasks \['nope'\] have no rows"),
])
def test_data_dependent_impossible_specs(tmp_path, counter, stage, message):
    store, vm, sm = setup(tmp_path)
    with pytest.raises(RecipeError, match=message):
        mix(str(store.root), {"sources": SOURCES, "stages": [stage]}, vm, sm, None, count_tokens=counter)
    assert not any((store.root / "mix").glob("*/manifest.json"))


def test_expectation_failure_names_stage_and_source(tmp_path, counter):
    # One huge conversation cannot be split: a 50/50 token target between it and short rows fails.
    rows = [record("dolly", "open_qa", i, words=3) for i in range(20)] + [record("sharegpt", "c", 0, words=4000)]
    stage = {"name": "chat", "strategy": "target", "unit": "tokens", "shares": {"dolly": 0.5, "sharegpt": 0.5},
             "total": 200}
    with pytest.raises(GateFailed, match=r"stage 'chat' source '(sharegpt|dolly)'"):
        run_mix(tmp_path, [stage], counter, rows=rows)


# --------------------------------------------------------------------------- report and catalog
def test_report_catalog_and_real_tokenizer(tmp_path):
    store, vm, sm = setup(tmp_path)
    recipe = {"sources": SOURCES, "train": {"vocab_size": 300},
              "stages": [{"name": "nlp", "sources": ["flan", "flan_cot", "p3"], "cap_per_task": 20},
                         {"name": "chat", "strategy": "target", "shares": {"dolly": 0.5, "sharegpt": 0.4},
                          "total": 50, "replay": {"from": "nlp", "share": 0.1}}]}
    tm = build_tokenizer(str(store.root), recipe, vm)
    m = mix(str(store.root), recipe, vm, sm, tm)
    tok = load_tokenizer(str(store.root), tm)
    rows = read_stage(str(store.root), m, "chat")
    assert rows.column("position").to_pylist() == list(range(50))
    msgs = {r["record_id"]: r["messages"] for r in all_rows()}
    sample = rows.slice(0, 10).to_pylist()
    assert [r["n_tokens"] for r in sample] == count_tokens(tok, [msgs[r["record_id"]] for r in sample])
    md = m["stats"]["report_markdown"]
    assert "`chat`" in md and "replay:nlp" in md and "target share" in md

    catalog.publish_step(store, RunLog(store, "r1", "recipe.yaml"), "mix", [m], [])
    out = catalog.query(store.root, "select stage, source, count(*) n, sum(n_tokens) t from mixture "
                        "group by all order by all", fmt="json")
    counts = {(r["stage"], r["source"]): r["n"] for r in json.loads(out)}
    assert counts[("chat", "dolly")] == 25 and counts[("chat", "sharegpt")] == 20
    assert counts[("chat", "flan")] + counts.get(("chat", "p3"), 0) + counts.get(("chat", "flan_cot"), 0) == 5
    report_sql = (catalog.SQL_DIR / "reports" / "mixture.sql").read_text()
    rep = json.loads(catalog.query(store.root, report_sql, fmt="json"))
    assert [r["stage"] for r in rep][:4] == ["nlp"] * 3 + ["chat"]  # stage order, then source
    chat = {r["source"]: r for r in rep if r["stage"] == "chat"}
    assert chat["replay:nlp"]["target_share"] == 0.1 and chat["replay:nlp"]["rows"] == 5
    assert chat["sharegpt"]["repeat_factor"] == pytest.approx(20 / 8)


@pytest.mark.parametrize("parallel_min", [0, 10**9])
def test_token_counts_in_parallel_or_in_process_are_the_tokenizers(tmp_path, monkeypatch, parallel_min):
    """Large pools are counted by tiktoken worker processes; the counts are the same either way."""
    from tasks.tokens import count as token_count

    monkeypatch.setattr(token_count, "PARALLEL_MIN", parallel_min)
    store, vm, sm = setup(tmp_path)
    recipe = {"sources": SOURCES, "train": {"vocab_size": 300}, "stages": [{"name": "all", "sources": list(NAMES)}]}
    tm = build_tokenizer(str(store.root), recipe, vm)
    m = mix(str(store.root), recipe, vm, sm, tm)
    how = m["stats"]["token_counting"]
    assert how.startswith("tiktoken on") if parallel_min == 0 else how.startswith("the tokenizer, in-process")
    rows = read_stage(str(store.root), m, "all").to_pylist()
    msgs = {r["record_id"]: r["messages"] for r in all_rows()}
    tok = load_tokenizer(str(store.root), tm)
    assert len(rows) == len(msgs)
    assert [r["n_tokens"] for r in rows] == count_tokens(tok, [msgs[r["record_id"]] for r in rows])


def test_recipe_without_stages_writes_empty_tables(tmp_path, counter):
    store, m = run_mix(tmp_path, [], counter)
    assert store.read(m, "mixture").num_rows == 0 and store.read(m, "mixture_report").num_rows == 0
    assert m["stats"]["rows_out"] == 0


def test_source_without_rows(tmp_path, counter):
    rows = [r for r in all_rows() if r["source"] != "p3"]  # e.g. every p3 row rejected by validate
    store, m = run_mix(tmp_path, [{"name": "nlp", "sources": ["flan", "p3"]}], counter, rows=rows)
    report = {r["source"]: r for r in table(store, m, "mixture_report")}
    assert report["p3"]["rows"] == 0 and report["p3"]["target_share"] == 0 and report["flan"]["rows"] == 48
    assert "p3" in m["stats"]["warnings"][0] and "warning" in m["stats"]["report_markdown"]
    target = {"name": "s", "strategy": "target", "shares": {"flan": 0.5, "p3": 0.5}}
    with pytest.raises(RecipeError, match=r"sources \['p3'\] have no rows"):
        run_mix(tmp_path, [target], counter, rows=rows, name="b")


def test_rows_not_selected_are_listed_with_their_reason(tmp_path, counter):
    stages = [{"name": "nlp", "sources": ["flan"], "cap_per_task": 10},
              {"name": "chat", "strategy": "target", "shares": {"dolly": 0.5, "sharegpt": 0.5}, "total": 16},
              {"name": "warm", "sources": ["dolly", "sharegpt"], "strategy": "temperature", "temperature": 4}]
    store, m = run_mix(tmp_path, stages, counter)
    used = {(r["stage"], r["record_id"]) for r in table(store, m)}
    left = table(store, m, "mixture_unselected")
    assert not {(r["stage"], r["record_id"]) for r in left} & used
    reasons = Counter((r["stage"], r["source"], r["reason"]) for r in left)
    assert reasons[("nlp", "flan", "cap_per_task")] == (30 - 10) + (12 - 10)  # rte's 6 rows all fit
    assert reasons[("chat", "dolly", "downsampled")] == 30 - 8
    assert ("chat", "sharegpt", "downsampled") not in reasons  # its 8 rows are all used
    assert reasons[("warm", "dolly", "share_met")] > 0  # sharegpt binds the stage; dolly's share fills first
    assert reasons[(None, "p3", "not_in_any_stage")] == 24 and reasons[(None, "flan_cot", "not_in_any_stage")] == 10
    for stage in ("nlp", "chat", "warm"):  # every row a stage could use is used or listed
        sources = ["flan"] if stage == "nlp" else ["dolly", "sharegpt"]
        eligible = {r["record_id"] for r in all_rows() if r["source"] in sources}
        listed = {r["record_id"] for r in left if r["stage"] == stage}
        assert listed | {i for s, i in used if s == stage} == eligible
    assert "cap_per_task 22" in m["stats"]["report_markdown"] and "dry run" not in m["stats"]["report_markdown"]
    details = {r["detail"] for r in left if r["reason"] == "cap_per_task"}
    assert details == {"task 'anli' has 30 rows, cap_per_task 10", "task 'boolq' has 12 rows, cap_per_task 10"}
