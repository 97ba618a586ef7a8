"""FLAN readers: collection records (JSONL, Parquet) and raw CoT TSVs with the project's templates."""
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.errors import RecipeError
from tasks.ingest.registry import READERS
from tasks.recipe import parse_recipe
from tasks.render import COT_TEMPLATES


def _run(tmp_path, path, fmt, split=None, **src):
    rc = parse_recipe({"sources": [{"name": "f", "format": fmt, "path": str(path), **src}],
                       **({"split": split} if split else {})}, tmp_path)
    s = rc.sources[0]
    reader = READERS[fmt]
    items = list(reader.read(rc, s, str(path)))
    rows = [(str(path), i[1], i[2]) for i in items if i[0] == "row"]
    return items, list(reader.convert(rc, s, rows, reader.exemplar_pool(rc, s, str(path), rows)))


REC = {"inputs": "Is it good?\nOPTIONS:\n- yes\n- no", "targets": "yes", "_task_name": "demo_task",
       "_task_source": "Demo", "_template_type": "zs_opt", "_template_idx": 3}


@pytest.mark.parametrize("layout", ["jsonl", "parquet"])
def test_collection_records(tmp_path, layout):
    rows = [REC, {**REC, "targets": None}, {k: v for k, v in REC.items() if k != "inputs"}]
    p = tmp_path / f"flan.{layout}"
    if layout == "jsonl":
        p.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), p)
    _, out = _run(tmp_path, p, "flan")
    rec, null, missing = out
    assert rec["task"] == "demo_task" and rec["template_id"] == "zs_opt:3"
    assert rec["answer_choices"] == ["yes", "no"]
    assert rec["messages"][1] == {"role": "assistant", "content": "yes"}
    assert json.loads(rec["meta"])["_task_source"] == "Demo"
    assert (null["reason"], null["origin_row"]) == ("null_field", 2)
    # Parquet has one schema for all rows: a field one row lacks reads back as null
    assert (missing["reason"], missing["origin_row"]) == ("missing_field" if layout == "jsonl" else "null_field", 3)


def _cot_file(tmp_path, n=12, name="cot_demo_train.tsv", gz=False):
    lines = [f"What is {i} plus {i}?\\nOptions:\\n- {2 * i}\\n- {2 * i + 1}\t{2 * i}\t{i} and {i} make {2 * i}."
             if i % 2 else f"What is {i} plus {i}?\t{2 * i}\tAdding {i} to itself:\\n{i} + {i} = {2 * i}."
             for i in range(n)]
    data = ("\r\n".join(lines) + "\r\n").encode()
    p = tmp_path / (name + (".gz" if gz else ""))
    p.write_bytes(gzip.compress(data) if gz else data)
    return p


def test_cot_templates_unescape_and_exemplars(tmp_path):
    p = _cot_file(tmp_path, gz=True)
    _, out = _run(tmp_path, p, "flan_cot", templates_per_row=4)
    assert all("messages" in r for r in out)
    by_row = {}
    for r in out:
        by_row.setdefault(r["origin_row"], []).append(r)
    assert set(by_row) == set(range(1, 13))
    types = {json.loads(r["meta"])["template_type"] for r in out}
    assert types == {"zs_opt", "zs_noopt", "fs_opt", "fs_noopt"}
    for row, recs in by_row.items():
        assert len({r["example_id"] for r in recs}) == 1  # renderings of one row share the example
        for r in recs:
            meta = json.loads(r["meta"])
            assert row not in meta["exemplar_rows"]  # never the row itself
            assert len(meta["exemplar_rows"]) == (2 if meta["template_type"].startswith("fs_") else 0)
            assert "\\n" not in r["messages"][0]["content"]
            assert r["task"] == "cot_demo"
    odd = by_row[2]  # i = 1 has an options block
    assert any(r["answer_choices"] == ["2", "3"] for r in odd)
    even = by_row[1]  # no options: _opt falls back to _noopt wording, no choices
    assert all(r["answer_choices"] == [] and "Options" not in r["messages"][0]["content"] for r in even)
    assert "0 + 0 = 0" in even[0]["messages"][1]["content"]


def test_cot_is_seeded_and_flan_dispatches_tsv(tmp_path):
    p = _cot_file(tmp_path)
    _, a = _run(tmp_path, p, "flan_cot", templates_per_row=2)
    _, b = _run(tmp_path, p, "flan", templates_per_row=2)  # format flan on a .tsv reads CoT
    assert [r["record_id"] for r in a] == [r["record_id"] for r in b]
    assert all(r["template_id"].split(":")[1] in COT_TEMPLATES for r in a)


def test_cot_bad_lines(tmp_path):
    p = tmp_path / "cot_x_train.tsv"
    p.write_bytes(b"q\ta\tr\nonly\ttwo\nq2\t\tr\nbad \xff\ta\tr\n")
    items, out = _run(tmp_path, p, "flan_cot")
    rejects = [(i[1], i[2]) for i in items if i[0] == "reject"]
    assert rejects == [(2, "wrong_field_count"), (4, "invalid_utf8")]
    assert [r.get("reason") for r in out] == [None, "empty_field"]


def test_cot_options_checked_at_recipe_time(tmp_path):
    p = _cot_file(tmp_path)
    with pytest.raises(RecipeError, match="template_types"):
        parse_recipe({"sources": [{"name": "f", "format": "flan_cot", "path": str(p),
                                   "options": {"template_types": ["zs_bogus"]}}]}, tmp_path)


def _tsv(tmp_path, lines, name):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def test_cot_labelled_options_are_choices_and_always_shown(tmp_path):
    # AQuA's shape: options as "(A) 300" lines after "Options:", the answer a bare label
    lines = [f"A sum of {i}00 is split in two. How much is each part?\\nOptions:\\n(A) {i}0\\n(B) {i}5\\n(C) {i}50"
             f"\\n(D)  {i}00\\n(E) {i}20\t(C)\t{i}00 / 2 = {i}50" for i in range(1, 9)]
    _, out = _run(tmp_path, _tsv(tmp_path, lines, "cot_aqua_train.tsv"), "flan_cot", templates_per_row=4)
    assert out and all(len(r["answer_choices"]) == 5 for r in out)
    for r in out:
        i = r["origin_row"]
        assert r["answer_choices"] == [f"(A) {i}0", f"(B) {i}5", f"(C) {i}50", f"(D) {i}00", f"(E) {i}20"]
        meta = json.loads(r["meta"])
        # the answer names an option, so a no-options template would not make sense: every
        # rendering shows the options, as "- (A) ..." lines, and only once
        assert meta["template_type"].endswith("_opt")
        own = r["messages"][0]["content"][meta["shots_chars"]:]
        assert f"- (C) {i}50" in own and "Options:\n(A)" not in own and own.count(f"(E) {i}20") == 1


def test_cot_no_options_template_hides_options_but_keeps_choices(tmp_path):
    # ECQA's shape: "- a" options, the answer is the option's text
    lines = [f"Where is spare key {i} kept?\\nOptions:\\n- under the mat\\n- in the ocean\\n- on the moon\t"
             f"under the mat\tKeys are kept near doors." for i in range(12)]
    _, out = _run(tmp_path, _tsv(tmp_path, lines, "cot_ecqa_train.tsv"), "flan_cot", templates_per_row=4)
    noopt = [r for r in out if json.loads(r["meta"])["template_type"].endswith("_noopt")]
    assert noopt and len(noopt) < len(out)
    for r in noopt:
        own = r["messages"][0]["content"][json.loads(r["meta"])["shots_chars"]:]
        assert "in the ocean" not in own and "Options" not in own
        assert r["answer_choices"] == ["under the mat", "in the ocean", "on the moon"]


def test_cot_exemplars_come_only_from_the_training_side(tmp_path):
    from tasks.split import held_out_before_split

    p = _cot_file(tmp_path, n=60)
    rc = parse_recipe({"sources": [{"name": "f", "format": "flan_cot", "path": str(p), "templates_per_row": 4}],
                       "split": {"eval_fraction": 0.5, "seed": 3}}, tmp_path)
    _, out = _run(tmp_path, p, "flan_cot", templates_per_row=4, split={"eval_fraction": 0.5, "seed": 3})
    held = {r["origin_row"]: held_out_before_split(rc.split, "f", r["example_id"]) for r in out}
    assert 10 < sum(held.values()) < 50  # the split holds out about half of the rows
    used = {e for r in out for e in json.loads(r["meta"])["exemplar_rows"]}
    assert used and not any(held[e] for e in used)
    pinned = {r["origin_row"] for r in out if json.loads(r["meta"]).get("exemplar_pool")}
    assert used <= pinned and pinned == {row for row, h in held.items() if not h}  # 60 rows: all in the pool
    for r in out:
        meta, prompt = json.loads(r["meta"]), r["messages"][0]["content"]
        i = r["origin_row"] - 1
        assert f"What is {i} plus {i}?" in prompt[meta["shots_chars"]:]
        assert (meta["shots_chars"] > 0) == bool(meta["exemplar_rows"])
        assert f"What is {i} plus {i}?" not in prompt[:meta["shots_chars"]]


def test_cot_convert_key_follows_the_split(tmp_path):
    p = _cot_file(tmp_path)
    keys = [READERS["flan_cot"].config_inputs(parse_recipe(
        {"sources": [{"name": "f", "format": "flan_cot", "path": str(p)}], "split": split}, tmp_path),
        None) for split in ({"eval_fraction": 0.05}, {"eval_fraction": 0.1}, {"eval_fraction": 0.05})]
    assert keys[0] != keys[1] and keys[0] == keys[2]


def test_flan_format_on_tsv_keys_its_convert_on_the_split_too(tmp_path):
    p = _cot_file(tmp_path)
    rc = parse_recipe({"sources": [{"name": "f", "format": "flan", "path": str(p)}]}, tmp_path)
    assert READERS["flan"].config_inputs(rc, rc.sources[0]) == {"split": rc.split.model_dump()}
