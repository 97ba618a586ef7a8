"""Opt-in: every matching file under ../shared/data/real, every row accounted for (skipped when absent)."""
import json
from pathlib import Path

import pytest

from tasks.convert import convert_shard
from tasks.ingest.run import ingest_file
from tasks.recipe import parse_recipe

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
pytestmark = [pytest.mark.real_data, pytest.mark.skipif(not REAL.exists(), reason=f"{REAL} not found")]

SOURCES = [
    {"name": "dolly", "format": "dolly", "path": str(REAL / "dolly" / "*.jsonl")},
    {"name": "sharegpt", "format": "sharegpt", "path": str(REAL / "sharegpt" / "*.json*")},
    {"name": "flan_cot", "format": "flan_cot", "path": str(REAL / "flan" / "cot_*_train.tsv")},
]


def _account(store, rd, source, file):
    ing = ingest_file(str(store.root), rd, source, file)
    conv = convert_shard(str(store.root), rd, ing)
    si, sc = ing["stats"], conv["stats"]
    assert si["rows_in"] == si["rows_out"] + si["rows_rejected"]
    assert sc["rows_in"] == si["rows_out"] == sc["rows_out"] + sc["rows_rejected"]
    # every raw row is in records or rejects, by (file, row)
    raw = {r["origin_row"] for r in store.read(ing, "records_raw").to_pylist()}
    rec = {r["origin_row"] for r in store.read(conv, "records", columns=["origin_row"]).to_pylist()}
    rej = {r["origin_row"] for r in store.read(conv, "rejects", columns=["origin_row"]).to_pylist()}
    assert raw == rec | rej
    return si, sc


@pytest.mark.slow
def test_real_files_every_row_accounted(tmp_path, store):
    rd = parse_recipe({"sources": SOURCES}, tmp_path).model_dump(by_alias=True)
    from tasks.config import Recipe

    rc = Recipe.model_validate(rd)
    counts = {}
    for s in rc.sources:
        for f in rc.source_files(s):
            si, sc = _account(store, rd, s.name, f)
            counts[Path(f).name] = (si["rows_in"], sc["rows_out"])
    assert counts["databricks-dolly-15k.first208.jsonl"] == (208, 208)
    assert counts["fastchat_dummy_conversation.json"] == (500, 500)
    assert counts["axolotl_fixture_conversation.json"] == (1, 1)
    assert counts["cot_gsm8k_train.tsv"][0] == 7473
    assert sum(v[0] for k, v in counts.items() if k.startswith("cot_")) == 33443


@pytest.mark.parametrize("name", ["ag_news", "imdb", "super_glue_rte", "anli", "hellaswag"])
def test_real_promptsource_templates_render(tmp_path, store, name):
    """The real templates.yaml files parse and render rows in their dataset's schema (rows made here)."""
    rows = {
        "ag_news": [{"text": f"Headline number {i}.", "label": i % 4} for i in range(8)],
        "imdb": [{"text": f"Film {i} was fine.", "label": i % 2} for i in range(8)],
        "super_glue_rte": [{"premise": f"A cat sat {i}.", "hypothesis": "A cat sat.", "idx": i, "label": i % 2}
                           for i in range(8)],
        "anli": [{"uid": str(i), "premise": f"P {i}.", "hypothesis": "H.", "label": i % 3, "reason": ""}
                 for i in range(8)],
        "hellaswag": [{"ind": i, "activity_label": "Cooking", "ctx_a": "A man cracks eggs.", "ctx_b": "he",
                       "ctx": "A man cracks eggs. he", "endings": ["stirs", "sings", "runs", "sleeps"],
                       "source_id": "x", "split": "train", "split_type": "indomain", "label": str(i % 4)}
                      for i in range(8)],
    }[name]
    p = tmp_path / f"{name}.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tpl = REAL / "p3_promptsource" / f"promptsource_{name}_templates.yaml"
    rd = parse_recipe({"sources": [{"name": name, "format": "promptsource", "path": str(p), "templates": str(tpl),
                                    "templates_per_row": 3}]}, tmp_path).model_dump(by_alias=True)
    si, sc = _account(store, rd, name, str(p))
    assert sc["rows_out"] >= 1 and sc["records_out"] >= sc["rows_out"]
