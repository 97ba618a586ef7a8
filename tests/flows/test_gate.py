"""A failing dataset-level expectation stops the run before mix: mix, train and evaluate
never start, as the Prefect server records it (issues 4 and 9)."""
from __future__ import annotations

import shutil

import pytest
import yaml

from tasks.errors import GateFailed


def _task_runs(flow_run_ids) -> dict[str, str]:
    """task run name -> state type, for every task run of the given flow runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids))))
    return {r.name: r.state.type.value for r in runs}


def test_failing_dataset_expectation_stops_the_flow_before_mix(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    from flows.pipeline import pipeline
    from tasks.demo_data import write_demo_data

    write_demo_data(tmp_path / "data", seed=0, model="tiny")
    recipe = yaml.safe_load((tmp_path / "data" / "recipe.yaml").read_text())
    recipe["validate"]["min_rows_per_source"] = 10_000  # no demo source has that many rows
    (tmp_path / "data" / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"

    state = pipeline(str(tmp_path / "data" / "recipe.yaml"), str(out), return_state=True)
    assert state.is_failed()
    with pytest.raises(GateFailed, match="quality gate failed"):
        state.result()

    with get_client(sync_client=True) as client:
        top = client.read_flow_run(state.state_details.flow_run_id)
        flow_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter())
    assert top.state.is_failed()
    run_id = top.name.split()[-1]  # flow runs are named '<flow> <recipe name> <Tuneline run id>'
    assert top.name == f"pipeline data {run_id}"
    names = {fr.name: fr for fr in flow_runs if fr.name.endswith(run_id)}
    prepare = next(fr for n, fr in names.items() if n.startswith("prepare "))
    assert prepare.state.is_failed()
    assert not any(n.startswith(("train ", "evaluate ")) for n in names), sorted(names)  # never started

    tasks = _task_runs([prepare.id])
    assert tasks["validate expectations"] == "COMPLETED"  # it ran and published its report
    assert tasks["quality gate"] == "FAILED"
    assert not any(n.startswith(("mix", "tokenizer", "train", "evaluate")) for n in tasks), sorted(tasks)
    # Nothing downstream was written; the failures are queryable.
    assert not (out / "mix").exists() and not (out / "train").exists()
    from tasks.catalog import query

    assert "validate" in query(out, "select step from runs where step = 'validate'")
    shutil.rmtree(out)
