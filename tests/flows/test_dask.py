"""Scale-out: the data refresh on a two-worker Dask cluster gives the same artifacts as the default runner
(the shard steps as Dask tasks, and mix's token counting on the cluster's workers).

`flows.pipeline.shard_runner()` picks prefect-dask's DaskTaskRunner when
TUNELINE_DASK_ADDRESS names a scheduler. Each run is a fresh Python process (as a
deployment run is), so the runner is chosen from that process's environment.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from tasks.store import ArtifactStore

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
DATA_STEPS = ["ingest", "convert", "dedup", "split", "validate", "mix"]
UNTIL = "mix"  # the whole data refresh (ingest to mix)

RUN_PREPARE = (
    "import json, sys\n"
    "from flows.pipeline import prepare, shard_runner\n"
    "print('RUNNER', type(prepare.task_runner).__name__, flush=True)\n"
    "r = prepare(sys.argv[1], sys.argv[2], sys.argv[3] or None)\n"
    "print('RESULT', json.dumps({'run_id': r['run_id']}))\n"
)


def _prepare(server, recipe: Path, out: Path, until: str | None, **env: str) -> str:
    res = subprocess.run([sys.executable, "-c", RUN_PREPARE, str(recipe), str(out), until or ""],
                         cwd=REPO, env=server.client_env(**env), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return res.stdout + res.stderr


def _artifacts(out: Path) -> dict[str, list[tuple[str, str, str]]]:
    """step -> [(step/key, file, sha256)] for every part of every manifest `latest.json` names.

    Every manifest is loaded with verification, so each sha256 is also the file's real hash.
    """
    store = ArtifactStore(out)
    found: dict[str, list[tuple[str, str, str]]] = {}
    for step, dirs in store.latest().items():
        for rel in dirs:
            m = store.load(*rel.split("/"))
            assert m is not None, f"{rel} does not verify"
            for table, parts in sorted(m["tables"].items()):
                found.setdefault(step, []).extend((rel, p["file"], p["sha256"]) for p in parts)
    return found


def test_dask_cluster_gives_the_same_artifacts_as_the_default_runner(prefect_api, demo_recipe, tmp_path):
    from distributed import Client, LocalCluster

    until = UNTIL
    # The Dask workers run Prefect tasks, so they need the API address and auth string too:
    # they inherit this process's environment when they start.
    with mock.patch.dict(os.environ, prefect_api.client_env()):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        log = _prepare(prefect_api, demo_recipe, tmp_path / "dask", until, TUNELINE_DASK_ADDRESS=cluster.scheduler_address)
        assert "RUNNER DaskTaskRunner" in log, log[-3000:]
        with Client(cluster) as client:
            per_worker = client.run(lambda dask_worker: len(dask_worker.state.log))
        assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker  # both workers worked
    finally:
        cluster.close()

    log = _prepare(prefect_api, demo_recipe, tmp_path / "default", until)
    assert "RUNNER DaskTaskRunner" not in log

    dask_art, default_art = _artifacts(tmp_path / "dask"), _artifacts(tmp_path / "default")
    assert set(default_art) >= set(DATA_STEPS[: DATA_STEPS.index(until) + 1])
    assert dask_art == default_art
    for step in ("ingest", "convert"):
        assert len({rel for rel, *_ in default_art[step]}) > 1  # several shards, so several Dask tasks
    latest = json.loads((tmp_path / "dask" / "latest.json").read_text())
    assert latest == json.loads((tmp_path / "default" / "latest.json").read_text())
    # mix counted its tokens on the cluster (flows.tasks.dask_executor), with the same mixture
    (on_dask,) = ArtifactStore(tmp_path / "dask").latest_manifests("mix")
    (local,) = ArtifactStore(tmp_path / "default").latest_manifests("mix")
    assert "ClientExecutor" in on_dask["stats"]["token_counting"], on_dask["stats"]["token_counting"]
    assert "ClientExecutor" not in local["stats"]["token_counting"]
