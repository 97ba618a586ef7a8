"""Prefect flows. They only wire tasks; the work lives in `tasks/`.

    pipeline = prepare (ingest → convert → dedup → split → validate → gate → tokenizer → mix)
             → train (stage by stage) → evaluate (base and every stage)
"""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from prefect import flow
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from flows.tasks import (
    convert_task, dedup_task, evaluate_task, gate_task, ingest_task, mix_task, publish_task,
    signatures_task, split_task, tokenizer_task, train_task, validate_task,
)
from flows.steps import DATA_STEPS, STEPS
from tasks.config import load_recipe
from tasks.errors import TunelineError
from tasks.store import ArtifactStore


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def shard_runner():
    """Dask when a scheduler is named (TUNELINE_DASK_ADDRESS), else a local process pool."""
    address = os.environ.get("TUNELINE_DASK_ADDRESS")
    if address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=address)
    workers = int(os.environ.get("TUNELINE_WORKERS", os.cpu_count() or 1))
    return ProcessPoolTaskRunner(max_workers=workers) if workers > 1 else ThreadPoolTaskRunner(max_workers=1)


def _done(until: str | None, step: str) -> bool:
    """True when the run should stop after `step`."""
    return until is not None and STEPS.index(step) >= STEPS.index(until)


def _shard_label(source: str, file: str, index: int) -> str:
    return f"{source}#{index:03d}:{Path(file).name}"


@flow(name="tuneline-prepare", flow_run_name="prepare {recipe_path}", task_runner=shard_runner(),
      log_prints=True)
def prepare(recipe_path: str, out: str = "artifacts", until: str | None = None, run_id: str | None = None) -> dict:
    """Data steps, ingest through mix. Returns the manifests the train/evaluate flows need."""
    recipe = load_recipe(recipe_path)
    rd = recipe.model_dump(by_alias=True)
    root = str(Path(out).resolve())
    run_id = run_id or new_run_id()
    result: dict = {"run_id": run_id, "root": root}
    ArtifactStore(root).clean_staging()  # what a killed run left half-written

    shards = [(s.name, f) for s in recipe.sources for f in recipe.source_files(s)]
    ingest = [ingest_task.submit(root, rd, src, f, _shard_label(src, f, i)) for i, (src, f) in enumerate(shards)]
    converted = [convert_task.submit(root, rd, fut, _shard_label(src, f, i))
                 for i, (fut, (src, f)) in enumerate(zip(ingest, shards))]
    ingest_m = [f.result() for f in ingest]
    publish_task(root, run_id, recipe_path, "ingest", ingest_m)
    if _done(until, "ingest"):
        return result
    convert_m = [f.result() for f in converted]
    publish_task(root, run_id, recipe_path, "convert", convert_m)
    if _done(until, "convert"):
        return result

    sigs = [signatures_task.submit(root, rd, m, m.get("label", "")) for m in convert_m]
    sig_m = [f.result() for f in sigs]
    publish_task(root, run_id, recipe_path, "dedup-signatures", sig_m)
    dedup_m = dedup_task(root, rd, convert_m, sig_m)
    publish_task(root, run_id, recipe_path, "dedup", [dedup_m])
    if _done(until, "dedup"):
        return result

    split_m = split_task(root, rd, dedup_m)
    publish_task(root, run_id, recipe_path, "split", [split_m])
    result["split"] = split_m
    if _done(until, "split"):
        return result

    validate_m = validate_task(root, rd, split_m)
    publish_task(root, run_id, recipe_path, "validate", [validate_m])
    gate_task(validate_m)
    if _done(until, "validate"):
        return result

    tok_m = tokenizer_task(root, rd, validate_m)
    publish_task(root, run_id, recipe_path, "tokenizer", [tok_m])
    mix_m = mix_task(root, rd, validate_m, split_m, tok_m)
    publish_task(root, run_id, recipe_path, "mix", [mix_m])
    result.update(tokenizer=tok_m, mix=mix_m)
    return result


@flow(name="tuneline-train", flow_run_name="train {recipe_path}", log_prints=True)
def train(recipe_path: str, prepared: dict) -> dict:
    """One training run per mixture stage, in order; stage k starts from stage k-1."""
    recipe = load_recipe(recipe_path)
    rd = recipe.model_dump(by_alias=True)
    root, run_id = prepared["root"], prepared["run_id"]
    models: dict[str, dict] = {}
    previous = None
    for stage in recipe.stages:
        previous = train_task(root, rd, prepared["mix"], prepared["tokenizer"], stage.name, previous)
        models[stage.name] = previous
    publish_task(root, run_id, recipe_path, "train", list(models.values()))
    return models


@flow(name="tuneline-evaluate", flow_run_name="evaluate {recipe_path}", log_prints=True)
def evaluate(recipe_path: str, prepared: dict, models: dict, run_id: str | None = None) -> list[dict]:
    """Evaluate the base model and every trained stage on the same held-out data.

    `prepared` holds the split, mix and tokenizer manifests; `models` the train manifest
    of each stage. The comparison table becomes a Prefect artifact and
    `<out>/eval_comparison.md` (flows/report.py)."""
    recipe = load_recipe(recipe_path)
    rd = recipe.model_dump(by_alias=True)
    root, run_id = prepared["root"], run_id or prepared["run_id"]
    args = (prepared["split"], prepared["mix"], prepared["tokenizer"])
    results = [evaluate_task(root, rd, "base", None, *args)]
    for stage in recipe.stages:
        results.append(evaluate_task(root, rd, stage.name, models[stage.name], *args))
    publish_task(root, run_id, recipe_path, "evaluate", results)
    return results


@flow(name="tuneline-pipeline", flow_run_name="pipeline {recipe_path}", log_prints=True)
def pipeline(recipe_path: str, out: str = "artifacts", until: str | None = None) -> dict:
    """The whole DAG for one recipe; `until` stops after the named step."""
    if until is not None and until not in STEPS:
        raise TunelineError(f"until must be one of {', '.join(STEPS)}, not {until!r}")
    recipe_path = str(Path(recipe_path).resolve())
    # The shard runner is chosen per run, so TUNELINE_DASK_ADDRESS set after import still counts.
    prepared = prepare.with_options(task_runner=shard_runner())(recipe_path, out, until)
    if until in DATA_STEPS or not load_recipe(recipe_path).stages:
        return {"run_id": prepared["run_id"], "root": prepared["root"]}
    models = train(recipe_path, prepared)
    if until == "train" or not load_recipe(recipe_path).evaluate.enabled:
        return {"run_id": prepared["run_id"], "root": prepared["root"]}
    results = evaluate(recipe_path, prepared, models)
    return {"run_id": prepared["run_id"], "root": prepared["root"], "evaluate": [m["dir"] for m in results]}


def evaluate_finished(recipe_path: str, out: str = "artifacts") -> dict:
    """`tuneline evaluate`: the evaluate flow over the latest published run under `out`."""
    from tasks.evaluate import finished_run_inputs

    recipe_path = str(Path(recipe_path).resolve())
    prepared, models = finished_run_inputs(recipe_path, out)
    run_id = new_run_id()
    results = evaluate(recipe_path, prepared, models, run_id=run_id)
    return {"run_id": run_id, "root": prepared["root"], "evaluate": [m["dir"] for m in results]}
