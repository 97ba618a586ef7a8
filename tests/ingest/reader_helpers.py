"""Run one reader over a file the test writes: (items read, convert output)."""
from __future__ import annotations

import json

from tasks.ingest.registry import READERS
from tasks.recipe import parse_recipe


def write(tmp_path, rows, name: str) -> str:
    p = tmp_path / name
    if name.endswith(".jsonl"):
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        p.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    return str(p)


def run_reader(tmp_path, fmt: str, rows, name: str = "data.jsonl", **source):
    path = write(tmp_path, rows, name)
    rc = parse_recipe({"sources": [{"name": "s", "format": fmt, "path": path, **source}]}, tmp_path)
    src = rc.sources[0]
    items = list(READERS[fmt].read(rc, src, path))
    out = list(READERS[fmt].convert(rc, src, [(path, i[1], i[2]) for i in items if i[0] == "row"]))
    return items, out


def records(out):
    return [o for o in out if "messages" in o]


def rejects(out):
    return [o for o in out if "messages" not in o]


def strip(messages):
    """Messages without their null extras (as Arrow would give them back)."""
    return [{k: v for k, v in m.items() if v is not None} for m in messages]
