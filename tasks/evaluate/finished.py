"""`tuneline evaluate RECIPE.yaml`: find the artifacts of the latest finished run to evaluate."""
from __future__ import annotations

from tasks.config import Recipe
from tasks.errors import TunelineError
from tasks.store import ArtifactStore


def _one(store: ArtifactStore, step: str) -> dict:
    found = store.latest_manifests(step)
    if not found:
        raise TunelineError(f"no published {step!r} step under {store.root}: run `tuneline run` first")
    return found[-1]


def _tokenizer_manifest(store: ArtifactStore, upstream: list[dict]) -> dict:
    # The tokenizer step is not published on its own; the mix and train manifests name it.
    latest = store.latest_manifests("tokenizer")
    if latest:
        return latest[-1]
    found = store.upstream(upstream, "tokenizer")
    if found is not None:
        return found
    raise TunelineError(f"no tokenizer manifest found under {store.root} (looked in latest.json, mix and train inputs)")


def _stage_of(manifest: dict) -> str | None:
    for where in (manifest, manifest.get("stats", {}), manifest.get("inputs", {})):
        if isinstance(where, dict) and isinstance(where.get("stage"), str):
            return where["stage"]
    return manifest.get("label")


def finished_run_inputs(recipe: Recipe, out: str) -> tuple[dict, dict[str, dict]]:
    """The split, mix, tokenizer and per-stage model manifests of the latest published run
    under `out`, in the shape the evaluate flow takes: (prepared, {stage: train manifest})."""
    store = ArtifactStore(out)
    split, mix = _one(store, "split"), _one(store, "mix")
    trained = {_stage_of(m): m for m in store.latest_manifests("train")}
    missing = [s.name for s in recipe.stages if s.name not in trained]
    if missing:
        raise TunelineError(f"stages {missing} have no published training run under {store.root}; "
                            f"found {sorted(k for k in trained if k)}")
    tok = _tokenizer_manifest(store, [mix, *trained.values()])
    prepared = {"root": str(store.root), "split": split, "mix": mix, "tokenizer": tok}
    return prepared, {s.name: trained[s.name] for s in recipe.stages}


__all__ = ["finished_run_inputs"]
