"""FLAN readers: collection records (JSONL, Parquet) and raw CoT TSVs with the project's templates."""
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.config import parse_recipe
from tasks.errors import RecipeError
from tasks.ingest import READERS
from tasks.render import COT_TEMPLATES


def _run(tmp_path, path, fmt, **src):
    rc = parse_recipe({"sources": [{"name": "f", "format": fmt, "path": str(path), **src}]}, tmp_path)
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
