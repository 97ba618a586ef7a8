"""Super-NaturalInstructions reader (a task file written here in the v2 layout)."""
import json

import pytest

from tasks.decontam import SHOTS_CHARS
from tasks.errors import RecipeError
from tasks.ingest.registry import READERS
from tasks.recipe import parse_recipe


def task_file(tmp_path, n=12, positives=3, name="task0042_colour_of_things.json", instances=None):
    doc = {"Contributors": ["x"], "Source": ["y"], "Categories": ["Question Answering"], "Reasoning": [],
           "Definition": ["Name the colour of the thing.", "Answer with one word."],
           "Positive Examples": [{"input": f"thing {i}", "output": f"colour {i}", "explanation": "e"} for i in range(positives)],
           "Negative Examples": [{"input": "n", "output": "m", "explanation": "e"}],
           "Instances": instances if instances is not None else
           [{"id": f"task0042-{i:032x}", "input": f"item {i}", "output": [f"red {i}", f"crimson {i}"]} for i in range(n)],
           "Instance License": ["Apache 2.0"]}
    p = tmp_path / name
    p.write_text(json.dumps(doc, indent=4, ensure_ascii=False))  # no trailing newline, as published
    return str(p)


def run(tmp_path, path, seed=0, **options):
    rc = parse_recipe({"seed": seed, "sources": [{"name": "ni", "format": "super_ni", "path": path, "options": options}]},
                      tmp_path)
    src, rd = rc.sources[0], READERS["super_ni"]
    items = list(rd.read(rc, src, path))
    rows = [(path, i[1], i[2]) for i in items if i[0] == "row"]
    return items, list(rd.convert(rc, src, rows, rd.exemplar_pool(rc, src, path, rows)))


def test_instances_rendered_zero_and_few_shot_seeded_and_recorded(tmp_path):
    path = task_file(tmp_path)
    items, out = run(tmp_path, path)
    assert [i[1] for i in items] == list(range(1, 13))
    types = {r["template_id"] for r in out}
    assert types == {"super_ni:zero_shot", "super_ni:few_shot"}
    for r in out:
        meta, user = json.loads(r["meta"]), r["messages"][0]["content"]
        assert user.startswith("Definition: Name the colour of the thing.\nAnswer with one word.")
        assert user[meta[SHOTS_CHARS]:].startswith("Now complete the following example -\nInput: item ")
        assert len(meta["exemplars"]) == (2 if meta["template_type"] == "few_shot" else 0)
        assert all(f"Input: thing {i}\nOutput: colour {i}" in user for i in meta["exemplars"])
        assert r["messages"][1]["content"].startswith("red ") and len(meta["outputs"]) == 2
        assert r["task"] == "task0042_colour_of_things" and r["example_id"] == meta["instance_id"]
    again = run(tmp_path, path)[1]
    assert [r["record_id"] for r in again] == [r["record_id"] for r in out]  # seeded
    other = run(tmp_path, path, seed=9)[1]
    assert [r["template_id"] for r in other] != [r["template_id"] for r in out]


def test_options_and_tasks_without_positive_examples(tmp_path):
    _, out = run(tmp_path, task_file(tmp_path, positives=0), template_types=["few_shot"])
    assert {r["template_id"] for r in out} == {"super_ni:zero_shot"}  # nothing to show
    _, out = run(tmp_path, task_file(tmp_path), template_types=["few_shot"], num_exemplars=3)
    assert all(len(json.loads(r["meta"])["exemplars"]) == 3 for r in out)


def test_bad_instances_are_rejected_naming_them(tmp_path):
    bad = [{"id": "a", "input": "x", "output": []}, {"id": "b", "output": ["y"]}, "oops",
           {"id": "c", "input": "z", "output": ["ok"]}]
    items, out = run(tmp_path, task_file(tmp_path, instances=bad))
    assert [(i[1], i[2]) for i in items if i[0] == "reject"] == [(3, "wrong_type")]
    assert [(o["origin_row"], o.get("reason")) for o in out] == [(1, "empty_field"), (2, "missing_field"), (4, None)]


def test_template_types_checked_at_recipe_load(tmp_path):
    with pytest.raises(RecipeError, match="template_types"):
        run(tmp_path, task_file(tmp_path), template_types=["three_shot"])
