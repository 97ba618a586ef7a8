"""Prefect flows. They only wire tasks; the work lives in `tasks/`.

    pipeline = prepare (ingest → convert → dedup → split → validate → gate → tokenizer → mix)
             → train (stage by stage) → evaluate (base and every stage)
"""
from __future__ import annotations

import os
import secrets
import time
from datetime import timezone
from pathlib import Path

from prefect import flow
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import opaque

from flows.steps import DATA_STEPS, STEPS
from flows.tasks import (
    convert_task,
    dedup_task,
    evaluate_task,
    gate_task,
    ingest_task,
    mix_task,
    publish_task,
    report_task,
    signatures_task,
    split_task,
    tokenizer_task,
    train_task,
    validate_task,
)
from tasks.config import Recipe
from tasks.errors import TunelineError
from tasks.recipe import load_recipe
from tasks.store import ArtifactStore, content_hash


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def flow_run_run_id() -> str:
    """The Tuneline run id of the current flow run when none was passed (a deployment run):
    its scheduled start and its Prefect id, the same wherever it is asked."""
    from prefect.runtime import flow_run

    start = flow_run.scheduled_start_time.astimezone(timezone.utc)
    return start.strftime("%Y%m%dT%H%M%S") + "-" + str(flow_run.id).replace("-", "")[:6]


def recipe_name(recipe_path: str) -> str:
    """What a run is named after: the recipe file's name, or its directory's for `recipe.yaml`."""
    path = Path(recipe_path)
    return path.parent.name if path.stem == "recipe" and path.parent.name else path.stem


def as_parsed(recipe_path: str | None, recipe: Recipe | None = None) -> Recipe:
    """The flows' one parse. The pipeline flow reads the file (`recipe_path`) and passes the
    `Recipe` it got to its subflows (`recipe`), which use it as is; a subflow run on its own (a
    deployment, a direct call) has only the path and reads it here. Either way the run's flow
    run is tagged with the recipe's content hash."""
    if recipe is None:
        if recipe_path is None:
            raise TunelineError("a flow needs recipe_path (a recipe file) or recipe (a parsed Recipe)")
        recipe = load_recipe(Path(recipe_path).resolve())
    tag_flow_run(recipe_tag(recipe))
    return recipe


def recipe_tag(recipe: Recipe) -> str:
    """The flow runs' tag naming the recipe's content: `recipe:<first 12 hex of its hash>`."""
    return "recipe:" + content_hash(recipe.model_dump(by_alias=True, exclude={"file"}))[:12]


def tag_flow_run(tag: str) -> None:
    """Add a tag to the current flow run only. (`with prefect.tags(...)` would tag every task
    run too, and Prefect asks the server for concurrency slots of tagged tasks at each start.)"""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None:
        return
    run = context.flow_run
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, tags=sorted({*run.tags, tag}))


def run_name(flow: str):
    """A flow_run_name callable: '<flow> <recipe name> <Tuneline run id>'."""
    def name() -> str:
        from prefect.runtime import flow_run

        params = flow_run.parameters
        run_id = params.get("run_id") or (params.get("prepared") or {}).get("run_id") or flow_run_run_id()
        return f"{flow} {recipe_name(params['recipe_path'])} {run_id}"

    return name


#: Inputs below this many bytes run their shard tasks on threads: starting a process pool
#: (each worker imports Prefect, Arrow, Polars) costs seconds, more than small shards take.
SMALL_INPUT_BYTES = int(os.environ.get("TUNELINE_PROCESS_POOL_BYTES", 32 << 20))


def shard_runner(input_bytes: int | None = None):
    """Dask when a scheduler is named (TUNELINE_DASK_ADDRESS), else a local process pool of
    TUNELINE_WORKERS processes, or threads for inputs under SMALL_INPUT_BYTES."""
    address = os.environ.get("TUNELINE_DASK_ADDRESS")
    if address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=address)
    workers = int(os.environ.get("TUNELINE_WORKERS", os.cpu_count() or 1))
    if workers > 1 and (input_bytes is None or input_bytes >= SMALL_INPUT_BYTES):
        return ProcessPoolTaskRunner(max_workers=workers)
    return ThreadPoolTaskRunner(max_workers=workers)


def input_bytes(recipe) -> int | None:
    """Total size of a recipe's local input files (None when one is remote, `hf://`)."""
    files = [f for s in recipe.sources for f in recipe.source_files(s)]
    if any(f.startswith("hf://") for f in files):
        return None
    return sum(Path(f).stat().st_size for f in files)


def _done(until: str | None, step: str) -> bool:
    """True when the run should stop after `step`."""
    return until is not None and STEPS.index(step) >= STEPS.index(until)


def _opaque(value):
    """A task argument wrapped in Prefect's `opaque` (each item of a list): Prefect resolves a
    future to its result but walks neither into that result nor into the recipe looking for more
    futures, as it does for every task run's arguments by default. Strings and numbers stay
    plain: task run names are formatted from them."""
    if isinstance(value, list):
        return [_opaque(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float)) else opaque(value)


def call(task, *args):
    """`task(*args)` in the flow's thread with its arguments `_opaque`: Prefect still records
    the futures among them as the task run's upstream, so the UI draws the edges."""
    return task(*[_opaque(a) for a in args])


def submit(task, *args):
    """`task.submit(*args)`, recording every future among the arguments as the task run's
    upstream (`task_inputs`). A process pool resolves the futures before the task run is
    created in the worker, so Prefect would record none and draw an unconnected DAG. On threads
    (small runs, where Prefect's per-task cost shows) the arguments are `_opaque`; not on a
    process pool, which unwraps them before the worker's engine walks them anyway, nor on Dask,
    which would take `opaque`, a tuple, apart."""
    from prefect.context import FlowRunContext
    from prefect.utilities.callables import get_call_parameters
    from prefect.utilities.engine import collect_task_run_inputs_sync

    runner = FlowRunContext.get().task_runner
    if isinstance(runner, ThreadPoolTaskRunner):
        args = tuple(_opaque(a) for a in args)
    parameters = get_call_parameters(task.fn, args, {})
    upstream = {name: collect_task_run_inputs_sync(value) for name, value in parameters.items()}
    return runner.submit(task, parameters, dependencies=upstream)


def _raise_first_failure(futures: list) -> None:
    """Wait for the shard tasks; a failed one raises its own error (a TunelineError stays one),
    not the UpstreamTaskError a downstream task would raise for it."""
    for future in futures:
        future.result()


def _shard_label(source: str, file: str, index: int) -> str:
    return f"{source}#{index:03d}:{Path(file).name}"


@flow(name="tuneline-prepare", flow_run_name=run_name("prepare"), task_runner=shard_runner(),
      log_prints=True)
def prepare(recipe_path: str, out: str = "artifacts", until: str | None = None, run_id: str | None = None,
            recipe: Recipe | None = None) -> dict:
    """Data steps, ingest through mix. Returns the manifests the train/evaluate flows need.
    `recipe`: the parsed recipe, when the pipeline flow calls it (see `as_parsed`)."""
    recipe = as_parsed(recipe_path, recipe)
    root = str(Path(out).resolve())
    run_id = run_id or flow_run_run_id()
    result: dict = {"run_id": run_id, "root": root}
    ArtifactStore(root).clean_staging()  # what a killed run left half-written

    shards = [(s.name, f) for s in recipe.sources for f in recipe.source_files(s)]
    labels = [_shard_label(src, f, i) for i, (src, f) in enumerate(shards)]
    ingest = [submit(ingest_task, root, recipe, src, f, label) for (src, f), label in zip(shards, labels)]
    converted = [submit(convert_task, root, recipe, fut, label) for fut, label in zip(ingest, labels)]
    # submitted now, so that publishing convert overlaps them
    sigs = ([] if _done(until, "convert") else
            [submit(signatures_task, root, recipe, fut, label) for fut, label in zip(converted, labels)])
    _raise_first_failure(ingest)
    call(publish_task, root, run_id, recipe_path, "ingest", ingest)
    if _done(until, "ingest"):
        return result
    _raise_first_failure(converted)
    call(publish_task, root, run_id, recipe_path, "convert", converted)
    if _done(until, "convert"):
        return result

    _raise_first_failure(sigs)
    call(publish_task, root, run_id, recipe_path, "dedup-signatures", sigs)
    dedup_m = call(dedup_task, root, recipe, converted, sigs)
    call(publish_task, root, run_id, recipe_path, "dedup", [dedup_m])
    if _done(until, "dedup"):
        return result

    split_m = call(split_task, root, recipe, dedup_m)
    call(publish_task, root, run_id, recipe_path, "split", [split_m])
    result["split"] = split_m
    if _done(until, "split"):
        return result

    validate_m = call(validate_task, root, recipe, split_m)
    call(publish_task, root, run_id, recipe_path, "validate", [validate_m])
    call(gate_task, validate_m)
    if _done(until, "validate"):
        return result

    tok_m = call(tokenizer_task, root, recipe, validate_m)
    call(publish_task, root, run_id, recipe_path, "tokenizer", [tok_m])
    mix_m = call(mix_task, root, recipe, validate_m, split_m, tok_m)
    call(publish_task, root, run_id, recipe_path, "mix", [mix_m])
    result.update(tokenizer=tok_m, mix=mix_m)
    return result


@flow(name="tuneline-train", flow_run_name=run_name("train"), log_prints=True)
def train(recipe_path: str, prepared: dict, recipe: Recipe | None = None) -> dict:
    """One training run per mixture stage, in order; stage k starts from stage k-1."""
    recipe = as_parsed(recipe_path, recipe)
    root, run_id = prepared["root"], prepared["run_id"]
    models: dict[str, dict] = {}
    previous = None
    for stage in recipe.stages:
        previous = call(train_task, root, recipe, prepared["mix"], prepared["tokenizer"], stage.name, previous)
        models[stage.name] = previous
    call(publish_task, root, run_id, recipe_path, "train", list(models.values()))
    return models


@flow(name="tuneline-evaluate", flow_run_name=run_name("evaluate"), log_prints=True)
def evaluate(recipe_path: str, prepared: dict, models: dict, run_id: str | None = None,
             recipe: Recipe | None = None) -> list[dict]:
    """Evaluate the base model and every trained stage on the same held-out data.

    `prepared` holds the split, mix and tokenizer manifests; `models` the train manifest
    of each stage. The comparison table becomes a Prefect artifact and
    `<out>/eval_comparison.md` (flows/report.py)."""
    recipe = as_parsed(recipe_path, recipe)
    root, run_id = prepared["root"], run_id or prepared["run_id"]
    args = (prepared["split"], prepared["mix"], prepared["tokenizer"])
    results = [call(evaluate_task, root, recipe, "base", None, *args)]
    for stage in recipe.stages:
        results.append(call(evaluate_task, root, recipe, stage.name, models[stage.name], *args))
    call(publish_task, root, run_id, recipe_path, "evaluate", results)
    return results


@flow(name="tuneline-pipeline", flow_run_name=run_name("pipeline"), log_prints=True)
def pipeline(recipe_path: str, out: str = "artifacts", until: str | None = None, run_id: str | None = None) -> dict:
    """The whole DAG for one recipe; `until` stops after the named step. `run_id` names the
    run in `runs/` and the flow runs' names (default: from this flow run)."""
    if until is not None and until not in STEPS:
        raise TunelineError(f"until must be one of {', '.join(STEPS)}, not {until!r}")
    run_id = run_id or flow_run_run_id()
    recipe_path = str(Path(recipe_path).resolve())
    recipe = as_parsed(recipe_path)  # the run's one parse; the subflows and tasks get this Recipe
    # The shard runner is chosen per run, so TUNELINE_DASK_ADDRESS set after import still counts.
    runner = shard_runner(input_bytes(recipe))
    prepared = prepare.with_options(task_runner=runner)(recipe_path, out, until, run_id, recipe=recipe)
    done = {"run_id": run_id, "root": prepared["root"]}
    if until not in DATA_STEPS and recipe.stages:
        models = train(recipe_path, prepared, recipe=recipe)
        if until != "train" and recipe.evaluate.enabled:
            done["evaluate"] = [m["dir"] for m in evaluate(recipe_path, prepared, models, recipe=recipe)]
    done["report"] = call(report_task, done["root"], run_id, recipe_path)
    return done


def evaluate_finished(recipe_path: str, out: str = "artifacts") -> dict:
    """`tuneline evaluate`: the evaluate flow over the latest published run under `out`."""
    from tasks.evaluate import finished_run_inputs

    recipe_path = str(Path(recipe_path).resolve())
    recipe = load_recipe(recipe_path)
    prepared, models = finished_run_inputs(recipe, out)
    run_id = new_run_id()
    results = evaluate(recipe_path, prepared, models, run_id=run_id, recipe=recipe)
    return {"run_id": run_id, "root": prepared["root"], "evaluate": [m["dir"] for m in results]}
