"""The mix step's token counting on a dask.distributed cluster of several worker processes gives
the same artifacts, byte for byte, as the local run (tasks/tokens/count.py: one Dask task per
row group of records_valid, each returning its rows' keys and token counts)."""
from __future__ import annotations

import shutil

import pytest

from tasks.mix import mix
from tasks.schema import RECORDS
from tasks.store import ArtifactStore
from tasks.tokens import count as token_count
from tasks.tokens.tokenizer import build_tokenizer
from test_mix import NAMES, SOURCES, all_rows, publish

TABLES = ("mixture", "mixture_report", "mixture_unselected")
STAGES = [
    {"name": "nlp", "sources": ["flan", "flan_cot", "p3"], "cap_per_task": 10, "unit": "tokens", "total": 2000},
    {"name": "chat", "strategy": "target", "shares": {"dolly": 0.45, "sharegpt": 0.45},
     "replay": {"from": "nlp", "share": 0.1}},
    {"name": "all", "sources": list(NAMES), "strategy": "temperature", "temperature": 2},
]


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None) as lc:
        with Client(lc, set_as_default=False) as client:
            yield client


def _inputs(root):
    """validate (records_valid in row groups of 12 rows: several Dask tasks), split, tokenizer."""
    store = ArtifactStore(root)
    rows = all_rows()
    w = store.begin("validate", "v1", label="validate")
    for i in range(0, len(rows), 12):
        w.write("records_valid", RECORDS, rows[i : i + 12])
    vm = w.commit()
    sm = publish(store, "split", "s1", records_eval=[], records_train=[])
    recipe = {"sources": SOURCES, "train": {"vocab_size": 300}, "stages": STAGES}
    return store, recipe, vm, sm, build_tokenizer(str(root), recipe, vm)


def _tables(m: dict) -> dict:
    return {t: [p["sha256"] for p in m["tables"][t]] for t in TABLES}


def test_dask_workers_give_the_local_mix(tmp_path, monkeypatch, cluster):
    from distributed import get_task_stream

    store, recipe, vm, sm, tm = _inputs(tmp_path)
    root = str(store.root)
    local = mix(root, recipe, vm, sm, tm)  # a small pool: counted in-process by the tokenizer itself
    assert local["stats"]["token_counting"].startswith("the tokenizer, in-process")
    shutil.rmtree(store.root / "mix")
    monkeypatch.setattr(token_count, "PARALLEL_MIN", 0)
    threads = mix(root, recipe, vm, sm, tm)  # chunk counts on local threads
    assert "threads" in threads["stats"]["token_counting"]
    shutil.rmtree(store.root / "mix")
    with get_task_stream(cluster) as stream:
        on_dask = mix(root, recipe, vm, sm, tm, executor=cluster.get_executor(pure=False))
    assert "ClientExecutor" in on_dask["stats"]["token_counting"]
    ran = [t for t in stream.data if "count_row_group" in str(t["key"])]
    assert len(ran) == -(-len(all_rows()) // 12)  # a task per row group
    assert len({t["worker"] for t in ran}) >= 2  # the workers shared them
    assert _tables(on_dask) == _tables(threads) == _tables(local)
    assert on_dask["key"] == local["key"] and on_dask["stats"]["rows_out"] == local["stats"]["rows_out"] > 0
