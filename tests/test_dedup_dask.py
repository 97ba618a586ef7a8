"""The dedup step's tasks on a dask.distributed cluster of several worker processes give the same
artifacts, byte for byte, as the same step run in one process (tasks/dedup/mapper.py)."""
from __future__ import annotations

import pytest

from tasks.dedup import dedup, partitions, signatures
from tasks.dedup.mapper import auto_mapper, dask_map, local_map, local_threads, thread_map
from tasks.store import ArtifactStore
from test_dedup import convert_manifest, recipe
from test_dedup_partitions import rows_with_duplicates

TABLES = ("dedup_clusters", "dedup_removed", "rejects")


def steps(root, shards, **cfg):
    """Convert manifests and dedup-signatures of `shards`, and the recipe."""
    store = ArtifactStore(root)
    convs = [convert_manifest(store, f"c{i:03d}", rows) for i, rows in enumerate(shards)]
    rd = recipe(**cfg)
    return rd, convs, [signatures(str(root), rd, c) for c in convs]


def artifacts(m: dict) -> dict:
    return {t: [p["sha256"] for p in m["tables"][t]] for t in TABLES}


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None) as lc:
        with Client(lc, set_as_default=False) as client:  # the flow test must find its cluster on its own
            yield client


@pytest.mark.parametrize("cfg", [{}, {"scope": "within_source", "template_variants": "dedup"}])
def test_dask_workers_give_the_local_artifacts(tmp_path, monkeypatch, cluster, cfg):
    from distributed import get_task_stream

    monkeypatch.setattr(partitions, "MAX_TASK_ENTRIES", 500)  # many key tasks, spread over the workers
    rows = rows_with_duplicates(7)
    shards = [rows[:250], rows[250:480], rows[480:]]
    rd, convs, sigs = steps(tmp_path / "local", shards, **cfg)
    local = dedup(str(tmp_path / "local"), rd, convs, sigs, mapper=local_map)
    rd, convs, sigs = steps(tmp_path / "dask", shards, **cfg)
    with get_task_stream(cluster) as stream:
        on_dask = dedup(str(tmp_path / "dask"), rd, convs, sigs, mapper=dask_map(cluster))
    ran = [t for t in stream.data if str(t["key"]).startswith("dedup-")]
    kinds = {str(t["key"]).split("-")[1] for t in ran}
    assert {"key_task", "meta_task", "fetch"} <= kinds
    assert len({t["worker"] for t in ran}) >= 2  # the tasks were shared by the workers
    assert len(ran) > 10
    assert artifacts(on_dask) == artifacts(local)
    assert local["stats"]["rows_rejected"] > 20
    drop = ("seconds",)
    assert {k: v for k, v in on_dask["stats"].items() if k not in drop} == {
        k: v for k, v in local["stats"].items() if k not in drop}


def test_auto_mapper_is_threads_outside_a_dask_flow():
    assert auto_mapper() is local_threads


def test_threads_give_the_local_artifacts(tmp_path, monkeypatch):
    monkeypatch.setattr(partitions, "MAX_TASK_ENTRIES", 500)  # many key tasks, finishing in any order
    rows = rows_with_duplicates(7)
    shards = [rows[:250], rows[250:480], rows[480:]]
    rd, convs, sigs = steps(tmp_path / "local", shards)
    local = dedup(str(tmp_path / "local"), rd, convs, sigs, mapper=local_map)
    rd, convs, sigs = steps(tmp_path / "threads", shards)
    threads = dedup(str(tmp_path / "threads"), rd, convs, sigs, mapper=thread_map(3))
    assert artifacts(threads) == artifacts(local) and local["stats"]["rows_rejected"] > 20


@pytest.mark.slow
def test_a_flow_on_a_dask_task_runner_spreads_dedup_over_its_cluster(tmp_path, prefect_server, cluster):
    """As flows/pipeline.py calls it (a task called in the flow), `dedup` with no mapper runs its
    tasks on the flow's Dask cluster (`auto_mapper`), with the local artifacts."""
    from distributed import get_task_stream
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    rows = rows_with_duplicates(9)
    shards = [rows[:300], rows[300:]]
    rd, convs, sigs = steps(tmp_path / "local", shards)
    local = dedup(str(tmp_path / "local"), rd, convs, sigs)  # no flow: one after another, here
    rd, convs, sigs = steps(tmp_path / "flow", shards)

    @task
    def dedup_task(root, recipe_, convert_manifests, signature_manifests):
        return dedup(root, recipe_, convert_manifests, signature_manifests)

    @flow(task_runner=DaskTaskRunner(address=cluster.scheduler.address))
    def prepare():
        return dedup_task(str(tmp_path / "flow"), rd, convs, sigs)

    with get_task_stream(cluster) as stream:
        on_dask = prepare()
    ran = [t for t in stream.data if str(t["key"]).startswith("dedup-")]
    assert {str(t["key"]).split("-")[1] for t in ran} >= {"key_task", "fetch"}
    assert artifacts(on_dask) == artifacts(local)
