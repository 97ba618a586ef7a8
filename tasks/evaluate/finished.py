"""`tuneline evaluate RECIPE.yaml`: evaluate base and every stage of the latest finished run."""
from __future__ import annotations

import time
from pathlib import Path

from tasks.config import load_recipe
from tasks.errors import TunelineError
from tasks.evaluate.report import comparison_markdown
from tasks.evaluate.run import evaluate
from tasks.store import ArtifactStore, RunLog, atomic_write_bytes

REPORT_FILE = "eval_comparison.md"


def _one(store: ArtifactStore, step: str) -> dict:
    found = store.latest_manifests(step)
    if not found:
        raise TunelineError(f"no published {step!r} step under {store.root}: run `tuneline run` first")
    return found[-1]


def _refs(obj) -> list[dict]:
    """Every {step, key} reference nested in a manifest's inputs."""
    if isinstance(obj, dict):
        here = [obj] if isinstance(obj.get("step"), str) and isinstance(obj.get("key"), str) else []
        return here + [r for v in obj.values() for r in _refs(v)]
    if isinstance(obj, list):
        return [r for v in obj for r in _refs(v)]
    return []


def _tokenizer_manifest(store: ArtifactStore, upstream: list[dict]) -> dict:
    # The tokenizer step is not published on its own; the mix and train manifests name it.
    latest = store.latest_manifests("tokenizer")
    if latest:
        return latest[-1]
    for m in upstream:
        for ref in _refs(m.get("inputs", {})):
            if ref["step"] == "tokenizer":
                found = store.load("tokenizer", ref["key"])
                if found is not None:
                    return found
    raise TunelineError(f"no tokenizer manifest found under {store.root} (looked in latest.json, mix and train inputs)")


def _stage_of(manifest: dict) -> str | None:
    for where in (manifest, manifest.get("stats", {}), manifest.get("inputs", {})):
        if isinstance(where, dict) and isinstance(where.get("stage"), str):
            return where["stage"]
    return manifest.get("label")


def evaluate_finished_run(recipe_path: str, out: str) -> str:
    """Evaluate base + every stage on the latest published split/mix/train artifacts;
    publishes the evaluate step and returns the comparison markdown (also written to
    `<out>/eval_comparison.md`)."""
    recipe = load_recipe(recipe_path)
    rd = recipe.model_dump(by_alias=True)
    store = ArtifactStore(out)
    split, mix = _one(store, "split"), _one(store, "mix")
    trained = {_stage_of(m): m for m in store.latest_manifests("train")}
    missing = [s.name for s in recipe.stages if s.name not in trained]
    if missing:
        raise TunelineError(f"stages {missing} have no published training run under {store.root}; "
                            f"found {sorted(k for k in trained if k)}")
    tok = _tokenizer_manifest(store, [mix, *trained.values()])
    results = [evaluate(str(store.root), rd, "base", None, split, mix, tok)]
    for s in recipe.stages:
        results.append(evaluate(str(store.root), rd, s.name, trained[s.name], split, mix, tok))
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-evaluate"
    rows = [{"step": "evaluate", "label": m.get("label", ""), "key": m["key"], "dir": m["dir"],
             "skipped": bool(m.get("skipped")), **{k: m["stats"].get(k, 0) for k in
                                                     ("rows_in", "rows_out", "rows_rejected", "seconds")},
             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())} for m in results]
    store.publish_step(RunLog(store, run_id, str(Path(recipe_path).resolve())), "evaluate", results, rows)
    markdown = comparison_markdown(str(store.root), results)
    atomic_write_bytes(store.root / REPORT_FILE, markdown.encode())
    return markdown


__all__ = ["evaluate_finished_run"]
