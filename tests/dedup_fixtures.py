"""A published `dedup` step over given records, built by the real steps (what `split` reads)."""
from __future__ import annotations

from tasks.dedup import dedup, signatures
from tasks.schema import RECORDS
from tasks.store import ArtifactStore


def deduplicated(store: ArtifactStore, rows: list[dict], sources: list[dict], key: str = "c0") -> dict:
    """The manifest of a `dedup` step (disabled: every row kept) over one convert shard of `rows`."""
    w = store.begin("convert", key, label=key)
    w.write("records", RECORDS, rows)
    conv = w.commit()
    recipe = {"sources": sources, "dedup": {"enabled": False}}
    return dedup(str(store.root), recipe, [conv], [signatures(str(store.root), recipe, conv)])
