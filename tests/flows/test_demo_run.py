"""`tuneline demo --model tiny` end to end (every step, two trained stages, evaluation), with
a second process querying the catalog in a loop the whole time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks import catalog
REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

READER = textwrap.dedent(
    """
    import json, sys, time, duckdb, subprocess
    from pathlib import Path
    root, stop, log = Path(sys.argv[1]), Path(sys.argv[2]), open(sys.argv[3], "w")
    views = ["records_raw", "records", "mixture", "rejects"]
    while not stop.exists():
        cat = root / "catalog.duckdb"
        if not cat.exists():
            time.sleep(0.05); continue
        try:
            con = duckdb.connect(str(cat), read_only=True)
            con.execute("SET file_search_path = ?", [str(root)])  # as the README tells a DuckDB user
            have = {r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()}
            for v in views:
                if v in have:
                    log.write(json.dumps({"via": "duckdb", "view": v, "n": con.execute(f"select count(*) from {v}").fetchone()[0]}) + "\\n")
            con.close()
        except Exception as exc:
            log.write(json.dumps({"via": "duckdb", "error": repr(exc)}) + "\\n")
        from tasks.catalog import query
        try:
            n = json.loads(query(root, "select count(*) as n from records_raw", "json"))[0]["n"]
            log.write(json.dumps({"via": "tuneline", "view": "records_raw", "n": n}) + "\\n")
        except Exception as exc:
            if "records_raw" not in str(exc):  # the view does not exist before ingest publishes
                log.write(json.dumps({"via": "tuneline", "error": repr(exc)}) + "\\n")
        log.flush()
        time.sleep(0.05)
    """
)


def test_demo_end_to_end_while_reading(prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    out, stop, log = tmp_path / "out", tmp_path / "stop", tmp_path / "reads.jsonl"
    out.mkdir()
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    reader = subprocess.Popen([sys.executable, "-c", READER, str(out), str(stop), str(log)], cwd=REPO, env=env)
    try:
        # The tiny model: the real one's demo is tests/flows/test_real_model.py's territory (and 5 minutes).
        demo = subprocess.run([sys.executable, "-m", "flows.cli", "demo", "--model", "tiny", "--out", str(out)],
                              cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)
    finally:
        stop.touch()
        reader.wait(timeout=60)
    assert demo.returncode == 0, demo.stderr[-4000:]
    assert "evaluation, base vs stages" in demo.stdout and "| heldout | loss | all |" in demo.stdout

    reads = [json.loads(line) for line in log.read_text().splitlines()]
    errors = [r for r in reads if "error" in r]
    assert not errors, errors[:5]
    assert len(reads) > 20, "the reader should have queried many times during the run"

    con = catalog.connect(out)
    published = {
        "records_raw": {con.execute("select count(*) from records_raw").fetchone()[0]},
        "records": {con.execute("select count(*) from records").fetchone()[0]},
        "mixture": {con.execute("select count(*) from mixture").fetchone()[0]},
    }
    # rejects grows step by step: every count a reader saw is a cumulative total at a step boundary
    steps = [r[0] for r in con.execute(
        "select step from runs group by step order by min(finished_at)").fetchall()]
    cumulative, total = {0}, 0
    for s in steps:
        total += con.execute("select count(*) from rejects where step = ?", [s]).fetchone()[0]
        cumulative.add(total)
    published["rejects"] = cumulative
    for r in reads:
        assert r["n"] in published[r["view"]], r

    # every stage learned its own data: held-out loss below the base model's
    rows = con.execute("select stage, source, value from eval where suite = 'heldout' and metric = 'loss' "
                       "and task is null").fetchall() or con.execute(
        "select stage, source, avg(value) from eval where suite = 'heldout' and metric = 'loss' group by all").fetchall()
    loss = {(s, src): v for s, src, v in rows}
    stages = [r[0] for r in con.execute("select distinct stage from mixture order by stage").fetchall()]
    mix_sources = dict(con.execute("select stage, list(distinct source) from mixture group by stage").fetchall())
    compared = 0
    for stage in stages:
        for src in mix_sources[stage]:
            if ("base", src) in loss and (stage, src) in loss:
                assert loss[(stage, src)] < loss[("base", src)], (stage, src, loss)
                compared += 1
    assert compared >= 4, loss  # every demo source has held-out rows
    assert con.execute("select count(*) from eval where run_id is null").fetchone()[0] == 0
    con.close()
