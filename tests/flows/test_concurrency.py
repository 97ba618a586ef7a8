"""Two runs of the same recipe at once, into the same artifacts directory.

Both compute the same content keys at about the same time, so they race to publish the
same step directories and to update latest.json, runs/ and catalog.duckdb. Afterwards
every manifest verifies, nothing is left half-written, and the catalog's counts equal
the manifests'. (The deployments also carry a Prefect concurrency limit of 1; this test
is about what holds without it: `tuneline run` from two shells.)
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks import catalog
from tasks.store import ArtifactStore

REPO = Path(__file__).resolve().parents[2]
TUNELINE = str(Path(sys.executable).with_name("tuneline"))
pytestmark = pytest.mark.slow
DATA_STEPS = ["ingest", "convert", "dedup", "split", "validate", "mix"]
UNTIL = "split"  # ingest to split: every step that races on shards, latest.json and the catalog


@pytest.fixture(scope="module")
def two_runs(prefect_api, demo_recipe, tmp_path_factory):
    recipe = demo_recipe
    out = tmp_path_factory.mktemp("concurrent") / "artifacts"
    procs = [subprocess.Popen([TUNELINE, "run", str(recipe), "--out", str(out), "--until", UNTIL], cwd=REPO,
                              env=prefect_api.client_env(TUNELINE_WORKERS="1"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-5000:]
    return out


def test_every_published_step_directory_verifies(two_runs):
    store = ArtifactStore(two_runs)
    published = [d for d in two_runs.glob("*/*") if d.is_dir() and not d.name.startswith(".")
                 and d.parent.name != "runs"]
    assert published
    for d in published:
        assert store.load(d.parent.name, d.name) is not None, f"{d} does not verify"
    assert not list(two_runs.glob("*/.staging-*")), "a staging directory was left behind"
    assert not list(two_runs.glob("*/.invalid-*")), "a published directory failed to verify"
    assert not list(two_runs.glob(".*.tmp-*")) and not list(two_runs.glob("*/.*.tmp-*"))


def test_both_runs_are_recorded_with_the_same_keys(two_runs):
    con = catalog.connect(two_runs)
    try:
        rows = con.execute("select run_id, step, label, key from runs order by run_id, step, label").fetchall()
    finally:
        con.close()
    runs: dict[str, list] = {}
    for run_id, *rest in rows:
        runs.setdefault(run_id, []).append(tuple(rest))
    assert len(runs) == 2
    a, b = runs.values()
    assert a == b  # same steps, shards and content keys: the second run reused or tied the first
    assert {r[0] for r in a} >= set(DATA_STEPS[: DATA_STEPS.index(UNTIL) + 1])


def test_catalog_counts_equal_the_manifests(two_runs):
    store = ArtifactStore(two_runs)
    expected: dict[str, int] = {}
    for step in store.latest():
        for m in store.latest_manifests(step):
            assert store.load(m["step"], m["key"]) is not None
            for table, parts in m["tables"].items():
                expected[table] = expected.get(table, 0) + sum(p["rows"] for p in parts)
    assert {"records_raw", "records", "rejects"} <= set(expected)
    con = catalog.connect(two_runs)
    try:
        for table, n in expected.items():
            assert con.execute(f'select count(*) from "{table}"').fetchone()[0] == n, table
    finally:
        con.close()
