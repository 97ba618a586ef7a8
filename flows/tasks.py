"""Prefect task wrappers: each calls one plain step function and returns its small manifest.

Results are never persisted or pickled into Prefect's result store, and Prefect's own
cache is off: skipping finished work is the artifact store's job (content keys).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Executor

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows import report
from flows.logs import hide_in_workers
from tasks.config import Recipe
from tasks.convert import convert_shard
from tasks.dask_runner import dask_client, flow_dask_runner
from tasks.dedup import dedup, signatures
from tasks.ingest.run import ingest_file
from tasks.mix import mix
from tasks.split import split
from tasks.tokens.tokenizer import build_tokenizer
from tasks.validate import gate, validate

hide_in_workers()  # this module is what a shard worker process imports to run a task
_opts = dict(cache_policy=NO_CACHE, persist_result=False, retries=0)


@task(name="ingest", task_run_name="ingest {source} {shard}", **_opts)
def ingest_task(root: str, recipe: Recipe, source: str, file: str, shard: str) -> dict:
    return ingest_file(root, recipe, source, file)


@task(name="convert", task_run_name="convert {label}", **_opts)
def convert_task(root: str, recipe: Recipe, ingest_manifest: dict, label: str) -> dict:
    return convert_shard(root, recipe, ingest_manifest)


@task(name="dedup-signatures", task_run_name="minhash {label}", **_opts)
def signatures_task(root: str, recipe: Recipe, convert_manifest: dict, label: str) -> dict:
    return signatures(root, recipe, convert_manifest)


@task(name="dedup", task_run_name="dedup clusters", **_opts)
def dedup_task(root: str, recipe: Recipe, convert_manifests: list[dict], signature_manifests: list[dict]) -> dict:
    return dedup(root, recipe, convert_manifests, signature_manifests)


@task(name="split", task_run_name="split held-out", **_opts)
def split_task(root: str, recipe: Recipe, dedup_manifest: dict) -> dict:
    return split(root, recipe, dedup_manifest)


@task(name="validate", task_run_name="validate expectations", **_opts)
def validate_task(root: str, recipe: Recipe, split_manifest: dict) -> dict:
    return validate(root, recipe, split_manifest)


@task(name="gate", task_run_name="quality gate", **_opts)
def gate_task(validate_manifest: dict) -> None:
    gate(validate_manifest)


@task(name="tokenizer", task_run_name="tokenizer", **_opts)
def tokenizer_task(root: str, recipe: Recipe, validate_manifest: dict) -> dict:
    return build_tokenizer(root, recipe, validate_manifest)


@task(name="mix", task_run_name="mix stages", **_opts)
def mix_task(root: str, recipe: Recipe, validate_manifest: dict, split_manifest: dict, tokenizer_manifest: dict) -> dict:
    with dask_executor() as executor:  # token counting on the flow's Dask cluster when it runs on one
        return mix(root, recipe, validate_manifest, split_manifest, tokenizer_manifest, executor=executor)


@contextlib.contextmanager
def dask_executor() -> Iterator[Executor | None]:
    """A `concurrent.futures` executor on the Dask cluster of this flow run when its task runner
    is prefect-dask's DaskTaskRunner (`tasks.dask_runner`), else None."""
    runner = flow_dask_runner()
    if runner is None:
        yield None
        return
    with dask_client(runner) as client:
        yield client.get_executor(pure=False)


# Training and evaluation import torch and transformers (about 2 s) inside their tasks only,
# so a data-only run (`--until mix`) and the shard worker processes never pay for them.
@task(name="train", task_run_name="train stage {stage}", **_opts)
def train_task(root: str, recipe: Recipe, mix_manifest: dict, tokenizer_manifest: dict, stage: str,
               init_manifest: dict | None) -> dict:
    from tasks.train_sft.launch import train_stage

    return train_stage(root, recipe, mix_manifest, tokenizer_manifest, stage, init_manifest)


@task(name="evaluate", task_run_name="evaluate {stage}", **_opts)
def evaluate_task(root: str, recipe: Recipe, stage: str, model_manifest: dict | None, split_manifest: dict,
                  mix_manifest: dict, tokenizer_manifest: dict) -> dict:
    from tasks.evaluate import evaluate

    return evaluate(root, recipe, stage, model_manifest, split_manifest, mix_manifest, tokenizer_manifest)


@task(name="publish", task_run_name="publish {step}", **_opts)
def publish_task(root: str, run_id: str, recipe_path: str, step: str, manifests: list[dict]) -> None:
    """Point the catalog at a finished step and show its counts in the Prefect UI."""
    report.publish(root, run_id, recipe_path, step, manifests)


@task(name="report", task_run_name="run report", **_opts)
def report_task(root: str, run_id: str, recipe_path: str) -> str:
    """The run's static HTML report and the `run-report` artifact linking every step's report."""
    return report.run_report(root, run_id, recipe_path)
