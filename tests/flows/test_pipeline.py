"""The pipeline flow end to end on demo data, under a real Prefect test server."""
from __future__ import annotations


import pytest

from tasks import catalog
from tasks.store import ArtifactStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared_twice(prefect_server, demo_recipe, tmp_path_factory):
    from flows.pipeline import pipeline

    out = tmp_path_factory.mktemp("out")
    first = pipeline(str(demo_recipe), str(out), until="mix")
    second = pipeline(str(demo_recipe), str(out), until="mix")
    return out, first, second


def _runs(out, run_id):
    con = catalog.connect(out)
    try:
        return con.execute(
            "select step, label, key, skipped, rows_in, rows_out, rows_rejected from runs where run_id = ? "
            "order by step, label", [run_id]).fetchall()
    finally:
        con.close()


def test_every_step_accounts_for_every_row(prepared_twice):
    out, first, _ = prepared_twice
    rows = _runs(out, first["run_id"])
    assert {r[0] for r in rows} >= {"ingest", "convert", "dedup", "split", "validate", "mix"}
    for step, label, _, _, rows_in, rows_out, rejected in rows:
        assert rows_in == rows_out + rejected, (step, label)
    con = catalog.connect(out)
    n_raw = con.execute("select count(*) from records_raw").fetchone()[0]
    n_ingest_rejects = con.execute("select count(*) from rejects where step = 'ingest'").fetchone()[0]
    ingest_in = sum(r[4] for r in rows if r[0] == "ingest")
    assert n_raw + n_ingest_rejects == ingest_in
    for view in ["records_raw", "records", "rejects", "dedup_clusters", "mixture", "runs"]:
        assert con.execute(f"select count(*) from {view}").fetchone()[0] > 0, view
    con.close()


def test_second_run_skips_every_step_with_identical_outputs(prepared_twice):
    out, first, second = prepared_twice
    a, b = _runs(out, first["run_id"]), _runs(out, second["run_id"])
    assert [r[:3] for r in a] == [r[:3] for r in b]  # same steps, same content keys
    assert all(r[3] for r in b), [r for r in b if not r[3]]
    store = ArtifactStore(out)
    for step, _, key, *_ in b:
        assert store.load(step, key) is not None


def _flow_runs_and_tasks(run_id: str):
    """The flow runs named after `run_id`, their task runs and artifacts, from the API."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId, FlowRunFilterName,
    )

    async def read():
        async with get_client() as client:
            flows = await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=run_id)))
            ids = [f.id for f in flows]
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
            return flows, tasks, arts

    return asyncio.run(read())


def test_dag_has_edges_and_runs_are_named_and_reports_kept(prepared_twice, demo_recipe):
    out, first, _ = prepared_twice
    flows, tasks, arts = _flow_runs_and_tasks(first["run_id"])
    recipe = demo_recipe.parent.name
    assert sorted(f.name for f in flows) == [f"pipeline {recipe} {first['run_id']}", f"prepare {recipe} {first['run_id']}"]
    by_id = {t.id: t for t in tasks}

    def upstream(task):  # the kinds of its upstream task runs ("ingest", "convert", ...)
        return sorted(by_id[i.id].name.split()[0] for inputs in task.task_inputs.values() for i in inputs
                      if getattr(i, "id", None) in by_id)

    shards = [t for t in tasks if t.name.startswith("convert ")]
    assert shards
    for kind, parent in (("convert ", "ingest"), ("minhash ", "convert")):
        for t in (t for t in tasks if t.name.startswith(kind)):
            assert upstream(t) == [parent], (t.name, upstream(t))
            assert t.name.split(" ", 1)[1] in {u.name.split(" ", 2)[-1] for u in tasks if u.name.startswith(parent)}
    (dedup,) = [t for t in tasks if t.name == "dedup clusters"]
    assert upstream(dedup) == ["convert"] * len(shards) + ["minhash"] * len(shards)
    reports = [a for a in arts if a.key == "ingest-report"]
    assert len(reports) == 1  # one per step and run, every shard in it
    assert all(t.name.split(":")[-1] in reports[0].data for t in tasks if t.name.startswith("ingest "))
