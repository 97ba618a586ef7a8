"""Pretraining text reader (Dolma / llm-foundry shapes written here)."""
import gzip
import json

from reader_helpers import records, rejects, run_reader

from tasks.ingest.registry import READERS
from tasks.recipe import parse_recipe


def test_dolma_rows_become_one_assistant_turn_with_metadata_in_meta(tmp_path):
    rows = [{"added": "2023", "id": "http://a.example/1", "metadata": {"length": 11}, "source": "common-crawl",
             "text": "First page."},
            {"meta": {"arxiv_id": "1"}, "text": "\\section{Intro} Words."},
            {"id": "x", "text": "   "}, {"id": "y"}, {"text": 5}]
    _, out = run_reader(tmp_path, "text", rows)
    a, b = records(out)
    assert a["messages"] == [{"role": "assistant", "content": "First page."}] and a["example_id"] == "http://a.example/1"
    assert json.loads(a["meta"]) == {"added": "2023", "metadata": {"length": 11}, "source": "common-crawl"}
    assert a["task"] == "text" and b["messages"][0]["content"].startswith("\\section")
    assert [(r["origin_row"], r["reason"]) for r in rejects(out)] == [(3, "empty_field"), (4, "missing_field"),
                                                                      (5, "wrong_type")]


def test_gzip_jsonl_and_columns(tmp_path):
    p = tmp_path / "d.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"content": "Some text."}) + "\n")
    rc = parse_recipe({"sources": [{"name": "t", "format": "text", "path": str(p),
                                    "options": {"columns": {"text": "content"}}}]}, tmp_path)
    items = list(READERS["text"].read(rc, rc.sources[0], str(p)))
    (r,) = READERS["text"].convert(rc, rc.sources[0], [(str(p), i[1], i[2]) for i in items])
    assert r["messages"][0]["content"] == "Some text."
