"""Dedup compares the source's own fields of rendered records, not the template's wording
(tasks/dedup/content.py): files written here (and the real Dolly sample, opt-in) through the
real ingest, convert, dedup-signatures and dedup steps."""
from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import numpy as np
import pytest

from tasks.convert import convert_shard
from tasks.dedup import dedup, minhash as mh, signatures
from tasks.dedup.content import Template
from tasks.ingest.run import ingest_file
from tasks.recipe import parse_recipe
from tasks.render import COT_TEMPLATES, DOLLY_TEMPLATES
from tasks.store import ArtifactStore

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def words(rng, n):
    return " ".join("".join(rng.choice(ALPHABET) for _ in range(rng.randint(3, 8))) for _ in range(n))


def run_steps(tmp_path, sources, **dedup_cfg):
    """ingest -> convert -> dedup-signatures -> dedup over every file of `sources`."""
    rc = parse_recipe({"sources": sources, "dedup": dedup_cfg}, tmp_path)
    rd = rc.model_dump(by_alias=True)
    store = ArtifactStore(tmp_path / "artifacts")
    root = str(store.root)
    convs = [convert_shard(root, rd, ingest_file(root, rd, s.name, f)) for s in rc.sources for f in rc.source_files(s)]
    sigs = [signatures(root, rd, c) for c in convs]
    m = dedup(root, rd, convs, sigs)
    records = [r for c in convs for r in store.read(c, "records").to_pylist()]
    sig_rows = [r for s in sigs for r in store.read(s, "dedup_signatures").to_pylist()]
    tables = {t: store.read(m, t).to_pylist() for t in ("dedup_clusters", "rejects")}
    return m, records, sig_rows, tables


def jaccard(a: str, b: str) -> float:
    sa, sb = (set(mh.shingles_of(mh.normalise(t), "word", 5)) for t in (a, b))
    return len(sa & sb) / len(sa | sb)


def rendered(record: dict) -> str:
    return "\n".join(m["content"] for m in record["messages"])


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# -- inverting the project's templates --------------------------------------------------------
@pytest.mark.parametrize("source", DOLLY_TEMPLATES + [t for pairs in COT_TEMPLATES.values() for p in pairs for t in p])
def test_templates_invert_to_their_fields(source):
    tpl = Template(source)
    names = [n for _, n in tpl.parts if n]
    plain = {n: f"the {n} text, with: colons\nand lines" for n in names}
    assert tpl.fields(source.format(**plain)) == plain
    # a field holding the template's own separators still renders back to the same text
    literals = [lit for lit, _ in tpl.parts if lit]
    tricky = {n: f"{n} {' '.join(literals)} end" for n in names}
    text = source.format(**tricky)
    got = tpl.fields(text)
    assert got is not None and source.format(**got) == text
    if not source.startswith("{"):  # text the template cannot have made
        assert tpl.fields("x" + text) is None


# -- Dolly -------------------------------------------------------------------------------------
def dolly_rows(seed: int, n: int, context_words=(60, 120)) -> list[dict]:
    rng = random.Random(seed)
    return [{"instruction": words(rng, rng.randint(8, 16)), "context": words(rng, rng.randint(*context_words)),
             "response": words(rng, rng.randint(30, 60)), "category": "closed_qa"} for _ in range(n)]


def test_same_dolly_content_under_two_templates_is_an_exact_duplicate(tmp_path):
    rows = dolly_rows(1, 40)
    rows += [{**r, "context": ""} for r in dolly_rows(2, 10)]  # the no-context template
    path = write_jsonl(tmp_path / "dolly.jsonl", rows)
    # two sources of one file: each row's template is drawn per source, so many twins differ in it
    m, records, sig_rows, t = run_steps(tmp_path, [{"name": "first", "format": "dolly", "path": path},
                                                   {"name": "second", "format": "dolly", "path": path}])
    first, second = records[:50], records[50:]
    differ = [(a, b) for a, b in zip(first, second) if a["template_id"] != b["template_id"]]
    assert len(differ) >= 20
    # the rendered texts differ, by the templates' wording only
    assert max(jaccard(rendered(a), rendered(b)) for a, b in differ) < 1.0
    keys = [r["exact_key"] for r in sig_rows]
    assert keys[:50] == keys[50:] and len(set(keys[:50])) == 50
    assert m["stats"]["exact_removed"] == 50 and m["stats"]["near_removed"] == 0
    assert all(r["reason"] == "exact_duplicate" for r in t["rejects"])
    twin = {a["record_id"]: b["record_id"] for a, b in zip(first, second)}
    twin.update({b: a for a, b in list(twin.items())})
    assert all(twin[r["record_id"]] == r["related_id"] for r in t["rejects"])


def test_dolly_edit_at_jaccard_0_9_with_context_is_merged(tmp_path):
    rng = random.Random(7)
    rows = dolly_rows(3, 30, context_words=(100, 140))
    edited, content_j, rendered_j = [], [], []
    for r in rows:
        ctx = r["context"].split()
        for pos in rng.sample(range(10, len(ctx) - 10), 2):  # two words of the context: J ~ 0.9 on the fields
            ctx[pos] = "edited" + str(pos)
        edited.append({**r, "context": " ".join(ctx)})
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    b = write_jsonl(tmp_path / "b.jsonl", edited)
    m, records, _, t = run_steps(tmp_path, [{"name": "a", "format": "dolly", "path": a},
                                            {"name": "b", "format": "dolly", "path": b}])
    orig, copy = records[:30], records[30:]
    for r, e, x, y in zip(rows, edited, orig, copy):
        content_j.append(jaccard("\n".join([r["instruction"], r["context"], r["response"]]),
                                 "\n".join([e["instruction"], e["context"], e["response"]])))
        rendered_j.append(jaccard(rendered(x), rendered(y)))
    assert 0.85 <= statistics.median(content_j) <= 0.93
    other_template = [j for j, x, y in zip(rendered_j, orig, copy) if x["template_id"] != y["template_id"]]
    # compared as rendered, the pairs under other templates lose ~0.1 of Jaccard: many fall under 0.8
    assert len(other_template) >= 10 and statistics.median(other_template) < statistics.median(content_j) - 0.05
    assert sum(j < 0.8 for j in other_template) >= 5
    removed = {r["record_id"] for r in t["rejects"]}
    merged = [x["record_id"] in removed or y["record_id"] in removed for x, y in zip(orig, copy)]
    # LSH finds a pair at J 0.9 with probability 0.994 (12 bands x 10 rows); every candidate is verified
    assert sum(merged) >= 27 and m["stats"]["near_removed"] == sum(merged)
    for c in t["dedup_clusters"]:
        if not c["is_kept"]:
            assert 0.8 <= c["similarity"] < 1.0 and c["reason"] == "near_duplicate"


# -- FLAN CoT ---------------------------------------------------------------------------------
def cot_file(tmp_path: Path, n: int) -> str:
    rng = random.Random(5)
    lines = []
    for _ in range(n):
        opts = "\\n".join(f"- {words(rng, 2)}" for _ in range(3))
        q = f"{words(rng, 25)}\\nOptions:\\n{opts}"
        lines.append(f"{q}\t{words(rng, 2)}\t{words(rng, 30)}")
    p = tmp_path / "cot_toy_train.tsv"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


@pytest.mark.parametrize("mode", ["keep", "dedup"])
def test_flan_cot_renderings_of_one_row_share_their_content(tmp_path, mode):
    path = cot_file(tmp_path, 30)
    m, records, sig_rows, t = run_steps(
        tmp_path, [{"name": "cot", "format": "flan_cot", "path": path, "templates_per_row": 3}],
        template_variants=mode)
    by_example: dict[str, set] = {}
    for r, s in zip(records, sig_rows):
        by_example.setdefault(r["example_id"], set()).add(s["exact_key"])
    assert len(by_example) == 30 and all(len(k) == 1 for k in by_example.values())  # exemplars and wording left out
    assert any(r["template_id"].startswith("cot:fs_") for r in records)  # few-shot renderings among them
    if mode == "keep":
        assert m["stats"]["rows_rejected"] == 0 and t["dedup_clusters"] == []
    else:
        assert m["stats"]["rows_out"] == 30 and m["stats"]["exact_removed"] == len(records) - 30


# -- Super-NI -----------------------------------------------------------------------------------
def test_super_ni_instances_are_not_merged_for_their_shared_definition(tmp_path):
    rng = random.Random(9)
    doc = {"Definition": [words(rng, 80)], "Positive Examples": [], "Categories": ["x"],
           "Instances": [{"id": f"i{k}", "input": words(rng, 6), "output": [words(rng, 1)]} for k in range(20)]}
    doc["Instances"].append({"id": "again", "input": doc["Instances"][3]["input"], "output": doc["Instances"][3]["output"]})
    p = tmp_path / "task001_toy.json"
    p.write_text(json.dumps(doc))
    m, records, _, t = run_steps(tmp_path, [{"name": "ni", "format": "super_ni", "path": str(p)}])
    assert min(jaccard(rendered(records[0]), rendered(r)) for r in records[1:20]) > 0.8  # their text is mostly the definition
    assert m["stats"]["rows_rejected"] == 1 and m["stats"]["exact_removed"] == 1
    assert {t["rejects"][0]["record_id"], t["rejects"][0]["related_id"]} == {records[3]["record_id"], records[20]["record_id"]}


# -- promptsource -----------------------------------------------------------------------------
TEMPLATES = """dataset: toy
templates:
  t-1: !Template
    answer_choices: no ||| yes
    id: t-1
    jinja: "Premise: {{ premise }}\\nDoes it follow that {{ hypothesis }}? ||| {{ answer_choices[label] }}"
    metadata: !TemplateMetadata
      choices_in_prompt: false
      original_task: true
    name: follow
    reference: ''
  t-2: !Template
    answer_choices: false ||| true
    id: t-2
    jinja: "{{ premise }} Question: {{ hypothesis }} True or false? ||| {{ answer_choices[label] }}"
    metadata: !TemplateMetadata
      choices_in_prompt: true
      original_task: true
    name: tf
    reference: ''
"""


def test_promptsource_rows_are_compared_by_their_fields(tmp_path):
    rng = random.Random(4)
    rows = [{"idx": k, "premise": words(rng, 30), "hypothesis": words(rng, 8), "label": k % 2} for k in range(12)]
    rows.append({**rows[5], "idx": 99})  # the same example under another id
    data = write_jsonl(tmp_path / "toy.jsonl", rows)
    (tmp_path / "templates.yaml").write_text(TEMPLATES)
    src = {"name": "toy", "format": "promptsource", "path": data, "templates": str(tmp_path / "templates.yaml"),
           "templates_per_row": 2, "options": {"id_field": "idx"}}
    m, records, sig_rows, t = run_steps(tmp_path, [src])
    assert len(records) == 26
    keys = {}
    for r, s in zip(records, sig_rows):
        keys.setdefault(r["example_id"], set()).add(s["exact_key"])
    assert all(len(k) == 1 for k in keys.values())  # both templates: one content
    assert keys["5"] == keys["99"] and len({next(iter(k)) for k in keys.values()}) == 12
    # variants of one example stay; the copy under id 99 goes, both of its renderings
    assert m["stats"]["exact_removed"] == 2
    gone = {x["record_id"] for x in t["rejects"]}
    assert {r["example_id"] for r in records if r["record_id"] in gone} in ({"5"}, {"99"})


# -- the real Dolly sample (opt-in) -------------------------------------------------------------
@pytest.mark.real_data
def test_real_dolly_template_bias_is_gone(tmp_path):
    """The real Dolly rows under two sources (other template draws), and copies with two context
    words changed (Jaccard ~0.9 on the fields): twins are exact duplicates, edits merged."""
    real = REAL / "dolly" / "databricks-dolly-15k.first208.jsonl"
    rows = [json.loads(line) for line in real.read_text().splitlines() if line.strip()]
    rng = random.Random(0)
    edited, with_context = [], []
    for i, r in enumerate(rows):
        ctx = r["context"].split()
        if len(ctx) >= 120:  # long enough that two changed words keep Jaccard near 0.9
            for pos in rng.sample(range(len(ctx)), 2):
                ctx[pos] = f"changed{pos}"
            edited.append({**r, "context": " ".join(ctx)})
            with_context.append(i)
    copy = write_jsonl(tmp_path / "edited.jsonl", edited)
    m, records, sig_rows, t = run_steps(tmp_path, [
        {"name": "first", "format": "dolly", "path": str(real)},
        {"name": "second", "format": "dolly", "path": str(real)},
        {"name": "edited", "format": "dolly", "path": copy}])
    n = len(rows)
    first, second, third = records[:n], records[n:2 * n], records[2 * n:]
    differ = [(a, b) for a, b in zip(first, second) if a["template_id"] != b["template_id"]]
    rendered_j = [jaccard(rendered(a), rendered(b)) for a, b in differ]
    assert len(differ) > 40 and statistics.median(rendered_j) < 0.95  # the bias the old hashing had
    assert [s["exact_key"] for s in sig_rows[:n]] == [s["exact_key"] for s in sig_rows[n:2 * n]]
    member = {c["record_id"]: c for c in t["dedup_clusters"]}
    cluster = {k: c["cluster_id"] for k, c in member.items()}
    for a, b in zip(first, second):  # every twin pair is one cluster; a twin kept makes the other an exact duplicate
        x, y = member[a["record_id"]], member[b["record_id"]]
        assert x["cluster_id"] == y["cluster_id"] and not (x["is_kept"] and y["is_kept"])
        for u, v in ((x, y), (y, x)):
            if u["kept_record_id"] == v["record_id"]:
                assert u["reason"] == "exact_duplicate" and u["similarity"] == 1.0
    merged = []
    for i, e, x in zip(with_context, edited, third):
        fields = lambda r: "\n".join([r["instruction"], r["context"], r["response"]])  # noqa: E731
        together = x["record_id"] in cluster and cluster[x["record_id"]] in (
            cluster.get(first[i]["record_id"]), cluster.get(second[i]["record_id"]))
        merged.append((jaccard(fields(rows[i]), fields(e)), together))
    assert len(merged) >= 20
    high = [ok for j, ok in merged if j >= 0.85]
    assert len(high) >= 15 and np.mean(high) >= 0.9
