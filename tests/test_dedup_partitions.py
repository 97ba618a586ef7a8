"""Out-of-core dedup (tasks/dedup/partitions.py): the keys on disk by partition, read one task at
a time, give the same artifacts however they are cut."""
from __future__ import annotations

import random

import numpy as np
import pytest

from tasks.dedup import dedup, partitions, signatures
from tasks.store import ArtifactStore
from test_dedup import convert_manifest, rec, recipe, words


def rows_with_duplicates(seed: int, n: int = 600) -> list[dict]:
    """Records with exact copies (case), near copies (a word changed) and template variants, in two sources."""
    rng = random.Random(seed)
    vocab = words(rng, 300)
    rows = []
    for i in range(n):
        src = rng.choice("ab")
        text = " ".join(words(rng, rng.randint(3, 50), vocab))
        ex, tpl = (f"ex{rng.randint(0, 150)}", rng.choice(["t1", "t2"])) if rng.random() < 0.4 else ("", "")
        rows.append(rec(src, text, "reply " + " ".join(words(rng, 6, vocab)), template_id=tpl, example_id=ex, row=i))
        r = rng.random()
        if r < 0.2:
            rows.append(rec(rng.choice("ab"), text.upper(), rows[-1]["messages"][1]["content"], template_id=tpl,
                            example_id=ex, row=1000 + i))
        elif r < 0.4 and text:
            w = text.split()
            w[rng.randrange(len(w))] = "changed"
            rows.append(rec(rng.choice("ab"), " ".join(w), rows[-1]["messages"][1]["content"], row=2000 + i))
    return rows


def run_to_tables(root, shards, **cfg) -> tuple[dict, dict[str, list[str]]]:
    store = ArtifactStore(root)
    convs = [convert_manifest(store, f"c{i:03d}", rows) for i, rows in enumerate(shards)]
    rd = recipe(batch_rows=50, **cfg)  # several batches per shard
    sigs = [signatures(str(root), rd, c) for c in convs]
    m = dedup(str(root), rd, convs, sigs)
    return m, {t: [p["sha256"] for p in m["tables"][t]] for t in ("dedup_clusters", "dedup_removed", "rejects")}


@pytest.mark.parametrize("cfg", [{}, {"scope": "within_source"}, {"template_variants": "dedup", "verify": "estimate"}])
def test_artifacts_do_not_depend_on_how_the_keys_are_cut(tmp_path, monkeypatch, cfg):
    rows = rows_with_duplicates(3)
    shards = [rows[:300], rows[300:520], rows[520:]]
    whole, whole_tables = run_to_tables(tmp_path / "whole", shards, **cfg)
    # many small runs per shard, and tasks of a few dozen keys: every path of the partitioned reads
    monkeypatch.setattr(partitions, "FLUSH_ENTRIES", 500)
    monkeypatch.setattr(partitions, "MAX_TASK_ENTRIES", 40)
    cut, cut_tables = run_to_tables(tmp_path / "cut", shards, **cfg)
    sig = ArtifactStore(tmp_path / "cut").load("dedup-signatures", cut["inputs"]["shards"][0][1]["key"])
    assert len(sig["stats"]["partition_offsets"]["dedup_bands"]) > 3  # several sorted runs in one shard
    assert len(partitions.task_ranges([sig], "dedup_bands")) > 10
    assert cut_tables == whole_tables
    assert whole["stats"]["exact_removed"] > 20 and whole["stats"]["near_removed"] > 3
    timing = ("seconds",)
    assert {k: v for k, v in cut["stats"].items() if k not in timing} == {
        k: v for k, v in whole["stats"].items() if k not in timing}


def test_partition_tables_hold_every_key_once(tmp_path):
    store = ArtifactStore(tmp_path)
    rows = rows_with_duplicates(5, 200)
    conv = convert_manifest(store, "c0", rows)
    m = signatures(str(tmp_path), recipe(), conv)
    sig = store.read(m, "dedup_signatures", ["n_shingles", "exact_key"])
    bands = store.read(m, "dedup_bands").to_pydict()
    exact = store.read(m, "dedup_exact").to_pydict()
    n_bands = m["stats"]["bands"]
    with_shingles = np.flatnonzero(np.asarray(sig.column("n_shingles")) > 0)
    assert sorted(bands["row"]) == sorted(np.repeat(with_shingles, n_bands).tolist())
    keys = sig.column("exact_key").to_pylist()
    assert sorted(exact["row"]) == [i for i, k in enumerate(keys) if k is not None]
    assert all(f"{h:016x}{lo:016x}" == keys[r] for h, lo, r in zip(exact["hi"], exact["lo"], exact["row"]))
    # sorted by fine partition, each partition's rows in row order, offsets where they start
    offsets = m["stats"]["partition_offsets"]["dedup_bands"][0]
    part = partitions.fine_partition(np.array(bands["key"], np.uint64))
    assert np.all(np.diff(part.astype(int)) >= 0)
    assert offsets[0] == 0 and offsets[-1] == len(part)
    assert all((part[offsets[p]:offsets[p + 1]] == p).all() for p in range(partitions.FINE))
