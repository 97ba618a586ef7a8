"""Open-Assistant reader: tree exports, nested messages and flat message lists (written here)."""
import json

import pytest
from reader_helpers import records, rejects, run_reader

from tasks.errors import RecipeError
from tasks.recipe import parse_recipe


def node(mid, role, text, replies=(), rank=None, parent=None, **kw):
    n = {"message_id": mid, "text": text, "role": role, "lang": "en", "deleted": False, "replies": list(replies), **kw}
    if rank is not None:
        n["rank"] = rank
    if parent is not None:
        n["parent_id"] = parent
    return n


def tree():
    #       p0
    #    a1(rank 1)   a2(rank 0)
    #    p3            p4 -> a5 ; p6 (leaf prompter)
    return node("p0", "prompter", "Q?", [
        node("a1", "assistant", "Answer one.", [node("p3", "prompter", "Thanks?")], rank=1, parent="p0"),
        node("a2", "assistant", "Answer two.", [node("p4", "prompter", "More?", [node("a5", "assistant", "Sure.", rank=0)]),
                                                node("p6", "prompter", "Bye.")], rank=0, parent="p0"),
        node("a7", "assistant", "Removed.", rank=2, deleted=True),
    ])


def test_every_root_to_leaf_path_once_with_tree_and_message_ids(tmp_path):
    _, out = run_reader(tmp_path, "oasst", [{"message_tree_id": "t1", "tree_state": "ready_for_export", "prompt": tree()}])
    recs = records(out)
    convs = sorted(tuple(m["content"] for m in r["messages"]) for r in recs)
    # p3 and p6 are prompter leaves: their paths lose the trailing turn; [Q, Answer two] once only
    assert convs == [("Q?", "Answer one."), ("Q?", "Answer two."), ("Q?", "Answer two.", "More?", "Sure.")]
    metas = [json.loads(r["meta"]) for r in recs]
    assert {m["message_tree_id"] for m in metas} == {"t1"} and {r["example_id"] for r in recs} == {"t1"}
    assert ["p0", "a2", "p4", "a5"] in [m["message_ids"] for m in metas]
    assert all(m["deleted"] == 1 for m in metas)


def test_best_ranked_path_per_tree(tmp_path):
    root = dict(tree(), parent_id=None)  # the nested-message export: the root message itself
    (r,) = records(run_reader(tmp_path, "oasst", [root], options={"paths": "best"})[1])
    assert [m["content"] for m in r["messages"]] == ["Q?", "Answer two.", "More?", "Sure."]


def test_flat_message_list_is_rebuilt_into_trees_and_orphans_are_rejected(tmp_path):
    flat = [{"task_message_id": "x", "user_message_id": "r", "parent_message_id": None, "text": "Hi?", "role": "prompter"},
            {"user_message_id": "a", "parent_message_id": "r", "text": "Hello.", "role": "assistant"},
            {"user_message_id": "o", "parent_message_id": "gone", "text": "Lost.", "role": "assistant"},
            {"user_message_id": "r2", "parent_message_id": None, "text": "Two?", "role": "prompter"},
            {"user_message_id": "b", "parent_message_id": "r2", "text": "Yes.", "role": "assistant"}]
    items, out = run_reader(tmp_path, "oasst", flat, name="seed.json",
                            options={"columns": {"message_id": "user_message_id", "parent_id": "parent_message_id"}})
    (orphan,) = [i for i in items if i[0] == "reject"]
    assert orphan[1:3] == (3, "orphan_message") and "'gone'" in orphan[3]
    recs = records(out)
    assert [(r["origin_row"], [m["content"] for m in r["messages"]]) for r in recs] == [(1, ["Hi?", "Hello."]),
                                                                                       (4, ["Two?", "Yes."])]


def test_a_tree_without_an_answer_is_rejected(tmp_path):
    (r,) = rejects(run_reader(tmp_path, "oasst", [{"message_tree_id": "t", "prompt": node("p", "prompter", "Q?")}])[1])
    assert r["reason"] == "no_assistant_turn"


def test_paths_option_is_checked_at_recipe_load(tmp_path):
    (tmp_path / "t.jsonl").write_text("")
    with pytest.raises(RecipeError, match="options.paths must be one of"):
        parse_recipe({"sources": [{"name": "o", "format": "oasst", "path": str(tmp_path / "t.jsonl"),
                                   "options": {"paths": "longest"}}]}, tmp_path)
