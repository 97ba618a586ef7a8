"""Dolly reader on native JSONL written by the test."""
import json

from tasks.ingest.registry import READERS
from tasks.recipe import parse_recipe
from tasks.render import DOLLY_TEMPLATES


def _convert(tmp_path, rows, seed=0):
    p = tmp_path / "dolly.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rc = parse_recipe({"sources": [{"name": "d", "format": "dolly", "path": str(p)}], "seed": seed}, tmp_path)
    src = rc.sources[0]
    items = list(READERS["dolly"].read(rc, src, str(p)))
    return list(READERS["dolly"].convert(rc, src, [(str(p), i[1], i[2]) for i in items if i[0] == "row"]))


def test_context_templates_and_no_context(tmp_path):
    rows = [{"instruction": f"Summarise item {i}.", "context": f"Item {i} is a thing." if i % 2 else "",
             "response": f"It is item {i}.", "category": "summarization" if i % 2 else "open_qa"} for i in range(40)]
    out = _convert(tmp_path, rows)
    assert len(out) == 40
    with_ctx = [r for r in out if r["origin_row"] % 2 == 0]  # origin_row is 1-based: row 2 holds i=1
    assert {r["template_id"] for r in with_ctx} <= {f"dolly:context_{i}" for i in range(len(DOLLY_TEMPLATES))}
    assert len({r["template_id"] for r in with_ctx}) > 1  # several templates are used
    assert all(f"Item {r['origin_row'] - 1} is a thing." in r["messages"][0]["content"] for r in with_ctx)
    no_ctx = [r for r in out if r["origin_row"] % 2 == 1]
    assert {r["template_id"] for r in no_ctx} == {"dolly:no_context"}
    assert no_ctx[0]["messages"] == [{"role": "user", "content": "Summarise item 0."},
                                     {"role": "assistant", "content": "It is item 0."}]
    assert {r["task"] for r in out} == {"summarization", "open_qa"}
    r = out[0]
    assert r["n_turns"] == 2 and r["n_chars"] == sum(len(m["content"]) for m in r["messages"]) and r["lang"] is None


def test_template_choice_is_seeded_and_independent_of_order(tmp_path):
    rows = [{"instruction": f"Q{i}", "context": f"C{i}", "response": f"A{i}", "category": "c"} for i in range(20)]
    a = {r["example_id"]: (r["template_id"], r["record_id"]) for r in _convert(tmp_path, rows)}
    b = {r["example_id"]: (r["template_id"], r["record_id"]) for r in _convert(tmp_path, rows[::-1])}
    assert a == b
    c = {r["example_id"]: r["template_id"] for r in _convert(tmp_path, rows, seed=5)}
    assert c != {k: v[0] for k, v in a.items()}


def test_field_checks(tmp_path):
    rows = [{"instruction": "Q", "context": "", "category": "c"},
            {"instruction": None, "context": "", "response": "A", "category": "c"},
            {"instruction": "Q", "context": "", "response": 3, "category": "c"},
            {"instruction": "  ", "context": "", "response": "A", "category": "c"}]
    out = _convert(tmp_path, rows)
    assert [(r["reason"], r["origin_row"], r["step"]) for r in out] == [
        ("missing_field", 1, "convert"), ("null_field", 2, "convert"), ("wrong_type", 3, "convert"),
        ("empty_field", 4, "convert")]
    assert "'response'" in out[0]["detail"] and "'instruction'" in out[1]["detail"]
    assert out[2]["raw_prefix"].startswith('{"instruction"')
