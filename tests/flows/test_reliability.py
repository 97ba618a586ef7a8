"""Crash safety and content-keyed caching of the data steps, with real SIGKILLs.

Each run is the `tuneline` CLI in its own process session against the session's Prefect test
server; `TUNELINE_FAULT=<step>:before_manifest` makes the store SIGKILL the run's whole process
group in the middle of that step (its parts written, its manifest not yet).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks import catalog
from tasks.catalog import view_files
from tasks.store import ArtifactStore

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_url(prefect_server):
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def run_cli(api_url, recipe, out, until="mix", fault=None, timeout=600):
    env = {**os.environ, "PREFECT_API_URL": api_url, "TUNELINE_WORKERS": "2"}
    env.pop("TUNELINE_FAULT", None)
    if fault:
        env["TUNELINE_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(recipe), "--out", str(out), "--until", until],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True,
    )


def last_run(out) -> list[tuple]:
    con = catalog.connect(out)
    try:
        return con.execute(
            "select step, label, key, skipped from runs where run_id = "
            "(select run_id from runs order by finished_at desc, run_id desc limit 1) order by step, label"
        ).fetchall()
    finally:
        con.close()


def final_parts(out) -> dict:
    """Every Parquet part the catalog's views read, by path relative to the root, with its sha256."""
    store = ArtifactStore(out)
    parts = {}
    for step in store.latest():
        for m in store.latest_manifests(step):
            for table, ps in m["tables"].items():
                for p in ps:
                    parts[f"{m['dir']}/{p['file']}"] = p["sha256"]
    return parts


@pytest.fixture(scope="module")
def reference(api_url, demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    r = run_cli(api_url, demo_dir / "recipe.yaml", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.parametrize("step", ["ingest", "dedup", "mix"])
def test_kill_mid_step_then_rerun_is_identical(api_url, demo_dir, reference, tmp_path, step):
    out = tmp_path / "out"
    killed = run_cli(api_url, demo_dir / "recipe.yaml", out, fault=f"{step}:before_manifest")
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    assert list(out.glob(f"{step}/.staging-*")), "the kill should leave the step's staging dir"

    again = run_cli(api_url, demo_dir / "recipe.yaml", out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert final_parts(out) == final_parts(reference)  # byte-identical artifacts
    rows = last_run(out)
    order = ["ingest", "convert", "dedup", "split", "validate", "mix"]
    for s, label, key, skipped in rows:
        if s in order and order.index(s) < order.index(step):
            assert skipped, f"{s} {label} finished before the kill and should be skipped"
    store = ArtifactStore(out)
    assert not list(out.glob("*/.staging-*")), "staging dirs of the killed run are cleaned"
    for files in view_files(store).values():
        for f in files:
            assert f.exists() and ".staging" not in str(f) and ".tmp" not in f.name


def test_changing_one_input_recomputes_only_what_depends_on_it(api_url, demo_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    out = tmp_path / "out"
    assert run_cli(api_url, data / "recipe.yaml", out).returncode == 0
    first = {(s, l): (k, sk) for s, l, k, sk in last_run(out)}

    again = run_cli(api_url, data / "recipe.yaml", out)
    assert again.returncode == 0
    assert all(sk for _, _, _, sk in last_run(out)), "an identical re-run executes no step body"

    dolly = data / "dolly" / "dolly.jsonl"
    line = json.dumps({"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"})
    with open(dolly, "a") as fh:
        fh.write(line + "\n")
    time.sleep(0.01)
    changed = run_cli(api_url, data / "recipe.yaml", out)
    assert changed.returncode == 0, changed.stderr[-3000:]
    now = {(s, l): (k, sk) for s, l, k, sk in last_run(out)}
    for (s, label), (key, skipped) in now.items():
        touches_dolly = dolly.name in label
        if s in ("ingest", "convert", "dedup-signatures"):
            assert skipped == (not touches_dolly), (s, label)
        elif s in ("dedup", "split", "validate", "mix"):
            assert not skipped and key != first[(s, label)][0], (s, label)
