"""Open-Assistant reader: message trees into conversations.

Layouts (JSON array, JSONL, Parquet):
- tree export rows `{"message_tree_id", "tree_state", "prompt": <node>}`, a node being
  `{"message_id", "parent_id"?, "text", "role": "prompter" | "assistant", "rank"?, "deleted"?,
  "replies": [<node>...], ...}`;
- a root message with nested `replies` (the nested-message export);
- flat message lists (`message_id`, `parent_id` null for a root, `text`, `role`, `rank`): `read`
  rebuilds the trees over the whole file and yields one row per tree, its origin row the
  root's (1-based element / line); a message whose parent is not in the file, or that lies on
  a parent cycle, is rejected `orphan_message`. The backend's seed data reads with
  `columns: {message_id: user_message_id, parent_id: parent_message_id}`.

Option `paths` (recipe choice): `all` (default) gives a record per root-to-leaf path;
`best` one per tree, following at each message the best-ranked reply (lowest `rank`, then
file order). Deleted messages (`deleted: true`) and their subtrees are left out (counted in
meta `deleted`). Roles: `prompter` -> user, `assistant` -> assistant (`columns.roles` maps
others); the conversation policy is tasks.ingest.chat's (a path ending on a prompter loses
that turn; paths that become the same conversation are kept once). meta: `message_tree_id`,
`message_ids` (the path), `lang`, repairs. `example_id` = the tree id, so every path of a tree
lands on the same side of the split. task = the source's `task` or `conversation`.
"""
from __future__ import annotations

from typing import Iterator

from tasks.errors import RecipeError
from tasks.ingest.chat import Turn, normalize
from tasks.ingest.common import FieldError, convert_reject, dumps, iter_records, make_record, need_str, stable_hash
from tasks.ingest.reader import Reader, register

ROLES = {"prompter": "user", "user": "user", "assistant": "assistant"}
PATHS = ("all", "best")
ASSEMBLED = "assembled_from_flat_messages"  # a tree `read` rebuilt (its nodes carry the reader's names)


def _is_flat(raw: dict) -> bool:
    return "prompt" not in raw and "replies" not in raw


def _assemble(flat: list[tuple[int, dict, str]]) -> Iterator[tuple]:
    """Trees of flat messages: ("row", root row, tree, text) per root; orphans as rejects."""
    by_id = {m.get("message_id"): (n, dict(m, replies=[])) for n, m, _ in flat}
    roots, placed = [], set()
    for n, m, _ in flat:
        node = by_id[m.get("message_id")][1]
        parent = m.get("parent_id")
        if parent is None:
            roots.append((n, node))
        elif parent in by_id and parent != m.get("message_id"):
            by_id[parent][1]["replies"].append(node)
    for n, root in roots:
        stack = [root]
        while stack:
            node = stack.pop()
            placed.add(node.get("message_id"))
            stack.extend(node["replies"])
    for n, m, text in flat:
        if m.get("message_id") not in placed:
            yield ("reject", n, "orphan_message",
                   f"message {m.get('message_id')!r}: parent {m.get('parent_id')!r} is not in the file", text)
    for n, root in roots:
        tree = {"message_tree_id": root.get("message_tree_id") or root.get("message_id"), "prompt": root,
                ASSEMBLED: True}
        yield ("row", n, tree, dumps(tree))


def _map_tree(node, cols):
    """A nested tree with the reader's field names (the `columns` turn mapping at every node)."""
    node = cols.turn(node)
    if isinstance(node, dict) and isinstance(node.get("replies"), list):
        node = dict(node, replies=[_map_tree(r, cols) for r in node["replies"]])
    return node


def _children(node: dict, deleted: list) -> list[dict]:
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise FieldError("wrong_type", f"message {node.get('message_id')!r}: replies is not a list")
    kept = []
    for r in replies:
        if not isinstance(r, dict):
            raise FieldError("wrong_type", f"message {node.get('message_id')!r}: a reply is not an object")
        (deleted.append(r.get("message_id")) if r.get("deleted") else kept.append(r))
    return kept


def _rank_key(indexed: tuple[int, dict]):
    i, node = indexed
    rank = node.get("rank")
    return (not isinstance(rank, (int, float)), rank if isinstance(rank, (int, float)) else 0, i)


def paths(root: dict, mode: str, deleted: list) -> list[list[dict]]:
    """Root-to-leaf paths of a tree (all of them, or the best-ranked one)."""
    out, stack = [], [[root]]
    while stack:
        path = stack.pop()
        kids = _children(path[-1], deleted)
        if not kids:
            out.append(path)
        elif mode == "best":
            stack.append(path + [min(enumerate(kids), key=_rank_key)[1]])
        else:
            stack.extend(path + [k] for k in reversed(kids))
    return out


def _turns(path: list[dict], cols) -> list[Turn]:
    turns = []
    for i, node in enumerate(path):
        role = ROLES.get(cols.role(str(node.get("role"))).lower())
        if role is None:
            raise FieldError("unknown_role", f"message {node.get('message_id')!r} has role {node.get('role')!r}; "
                                             f"known: {sorted(ROLES)}")
        turns.append(Turn(i, role, need_str(node, "text")))
    return turns


@register
class OasstReader(Reader):
    name = "oasst"
    options_allowed = frozenset({"layout", "paths"})
    fields = frozenset({"prompt", "message_tree_id"})
    turn_fields = frozenset({"message_id", "parent_id", "text", "role", "rank", "replies", "deleted", "lang"})
    roles = frozenset(ROLES)

    @classmethod
    def check_source(cls, recipe, source) -> None:
        super().check_source(recipe, source)
        if source.options.get("paths", "all") not in PATHS:
            raise RecipeError(f"source {source.name!r}: options.paths must be one of {list(PATHS)}; "
                              f"got {source.options['paths']!r}")

    @classmethod
    def read(cls, recipe, source, file: str) -> Iterator[tuple]:
        cols, flat = cls.columns(source), []
        for item in iter_records(file, source.options.get("layout")):
            if item[0] == "row" and _is_flat(cols.row(item[2])):
                flat.append((item[1], cols.turn(item[2]), item[3]))
            else:
                yield item
        yield from _assemble(flat)

    @classmethod
    def convert(cls, recipe, source, rows, pool=None) -> Iterator[dict]:
        cols, mode = cls.columns(source), source.options.get("paths", "all")
        for origin_file, origin_row, native in rows:
            raw = cols.row(native)
            try:
                yield from cls._tree(source, origin_file, origin_row, raw, mode, cols)
            except FieldError as e:
                yield convert_reject(source.name, origin_file, origin_row, e.reason, e.detail, native)

    @classmethod
    def _tree(cls, source, origin_file, origin_row, raw, mode, cols) -> Iterator[dict]:
        root = raw.get("prompt", raw)
        if not isinstance(root, dict):
            raise FieldError("wrong_type", "field 'prompt' is not a message object")
        root = root if raw.get(ASSEMBLED) else _map_tree(root, cols)
        tree_id = str(raw.get("message_tree_id") or root.get("message_id") or stable_hash(root)[:20])
        deleted: list = []
        seen, out, last_error = set(), [], None
        tree_paths = paths(root, mode, deleted)
        for path in tree_paths:
            try:
                messages, repairs = normalize(_turns(path, cols))
            except FieldError as e:
                last_error = e
                continue
            key = stable_hash(messages)
            if key not in seen:
                seen.add(key)
                meta = {"message_tree_id": tree_id, "message_ids": [n.get("message_id") for n in path],
                        "lang": root.get("lang"), **({"deleted": len(deleted)} if deleted else {})}
                out.append(cls._record(source, origin_file, origin_row, tree_id, messages, repairs, meta))
        if not out:
            raise last_error or FieldError("no_assistant_turn", f"tree {tree_id}: no path has an assistant turn")
        yield from out

    @classmethod
    def _record(cls, source, origin_file, origin_row, tree_id, messages, repairs, meta) -> dict:
        if repairs:
            meta["repairs"] = repairs
        return make_record(source=source.name, task=source.task or "conversation", template_id="",
                           example_id=tree_id, messages=messages, origin_file=origin_file, origin_row=origin_row,
                           meta=meta)
