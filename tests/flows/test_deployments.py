"""deployments/prefect.yaml, registered with the real `prefect deploy` CLI and run by a real worker.

The sequence is the README's: a server on loopback (conftest), `prefect work-pool create`,
`prefect deploy --all --prefect-file deployments/prefect.yaml`, `prefect worker start`,
then a run of the data-refresh deployment, checked through the Prefect API (state,
artifacts) and through DuckDB (the catalog it rebuilt).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import yaml

from tasks import catalog
REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
DATA_STEPS = ["ingest", "convert", "dedup", "split", "validate", "mix"]
UNTIL = "split"  # ingest to split: enough to show the catalog and the artifacts, in ~20 s


def _spec(name: str) -> dict:
    return next(d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"] if d["name"] == name)


@pytest.fixture(scope="module")
def deployed(prefect_api):
    """The work pool and both deployments, registered from the YAML file by the CLI."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    # The pool through the client (the CLI costs ~10 s per call here; test_auth covers the CLI).
    with prefect_api.settings(), get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="tuneline", type="process"), overwrite=True)
    out = prefect_api.cli("deploy", "--all", "--prefect-file", str(PREFECT_YAML.relative_to(REPO)))
    assert "tuneline-data-refresh" in out.stdout and "tuneline-pipeline" in out.stdout, out.stdout
    return prefect_api


def _read_deployment(server, name: str):
    from prefect.client.orchestration import get_client

    with server.settings(), get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def test_server_holds_the_schedule_parameters_and_pool_of_the_file(deployed):
    for flow_name, name in [("tuneline-prepare", "tuneline-data-refresh"), ("tuneline-pipeline", "tuneline-pipeline")]:
        spec = _spec(name)
        dep = _read_deployment(deployed, f"{flow_name}/{name}")
        assert dep.entrypoint == spec["entrypoint"]
        assert dep.work_pool_name == spec["work_pool"]["name"] == "tuneline"
        assert dep.parameters == spec["parameters"]
        assert set(dep.tags) == set(spec["tags"])
        held = [(s.schedule.cron, s.schedule.timezone, s.active) for s in dep.schedules]
        assert held == [(s["cron"], s["timezone"], s["active"]) for s in spec["schedules"]]
        assert dep.global_concurrency_limit is not None and dep.global_concurrency_limit.limit == 1
        assert dep.concurrency_options.collision_strategy == "ENQUEUE"
        # The pull step stays a template, resolved in the worker's environment at run time.
        assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                   {"directory": "{{ $TUNELINE_DATA }}"}}]
    refresh = _read_deployment(deployed, "tuneline-prepare/tuneline-data-refresh")
    assert [s.schedule.cron for s in refresh.schedules] == ["0 3 * * *"]


def _wait_final(server, flow_run_id, timeout: float):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with server.settings(), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} not finished after {timeout}s (state {run.state})")


@pytest.mark.slow
def test_worker_runs_the_data_refresh_deployment(deployed, demo_recipe, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    recipe, until = demo_recipe, UNTIL
    out = tmp_path / "artifacts"
    worker = deployed.spawn(
        [PREFECT, "worker", "start", "--pool", "tuneline", "--name", "test-worker"], "worker",
        TUNELINE_DATA=str(tmp_path), PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5",
        TUNELINE_WORKERS="2")
    try:
        dep = _read_deployment(deployed, "tuneline-prepare/tuneline-data-refresh")
        with deployed.settings(), get_client(sync_client=True) as client:
            run = client.create_flow_run_from_deployment(
                dep.id, parameters={"recipe_path": str(recipe), "out": str(out), "until": until})
        run = _wait_final(deployed, run.id, timeout=480)  # generous: a loaded CI box runs this in ~1 min
        log = (deployed.home / "worker.log").read_text()
        assert run.state.is_completed(), f"{run.state}\n{log[-6000:]}"
        assert deployed.auth_string.split(":", 1)[1] not in log
    finally:
        deployed.stop(worker)

    steps = DATA_STEPS[: DATA_STEPS.index(until) + 1]
    with deployed.settings(), get_client(sync_client=True) as client:
        arts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    by_key = {a.key: a for a in arts if a.key}
    assert {f"{s}-counts" for s in steps} <= set(by_key), sorted(by_key)

    # The catalog the run rebuilt agrees with the counts the UI shows.
    con = catalog.connect(out)
    try:
        runs = con.execute("select step, sum(rows_out) from runs group by step").fetchall()
        records_out = con.execute("select sum(records_out) from runs where step = 'convert'").fetchone()[0]
        n_raw = con.execute("select count(*) from records_raw").fetchone()[0]
        n_records = con.execute("select count(*) from records").fetchone()[0]
    finally:
        con.close()
    assert set(steps) <= {s for s, _ in runs}
    counts = dict(runs)
    assert n_raw == counts["ingest"] > 0
    assert n_records == records_out > counts["convert"] > 0  # P3 rows render with two templates
    table = by_key["convert-counts"].data
    table = yaml.safe_load(table) if isinstance(table, str) else table  # JSON is YAML
    assert sum(r["rows_out"] for r in table) == counts["convert"]
    assert sum(r["records_out"] for r in table) == records_out
