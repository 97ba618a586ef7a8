"""`tuneline run` without PREFECT_API_URL reuses one lasting local server: started in the
background on first use, the same one for the next run, its history kept, stopped by
`tuneline server stop`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "flows.cli"]


def _tuneline(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_runs_share_a_lasting_server_until_it_is_stopped(demo_recipe, tmp_path):
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TUNELINE_SERVER"))}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    state_file = home / "tuneline-server.json"
    try:
        first = _tuneline(env, "run", str(demo_recipe), "--out", str(tmp_path / "a"), "--until", "ingest")
        assert first.returncode == 0, first.stderr[-3000:]
        state = json.loads(state_file.read_text())
        assert "started a lasting local Prefect server" in first.stderr
        second = _tuneline(env, "run", str(demo_recipe), "--out", str(tmp_path / "b"), "--until", "ingest")
        assert second.returncode == 0, second.stderr[-3000:]
        assert "started a lasting" not in second.stderr and json.loads(state_file.read_text()) == state
        assert state["ui_url"] in second.stderr
        # both runs stay in the server's history after they ended
        runs = httpx.post(f"{state['api_url']}/flow_runs/filter", json={}, timeout=30).json()
        assert sum(r["name"].startswith("pipeline ") for r in runs) == 2
        assert "running" in _tuneline(env, "server", "status").stdout
    finally:
        stopped = _tuneline(env, "server", "stop")
    assert "stopped the Prefect server" in stopped.stdout
    assert not state_file.exists()
    assert subprocess.run(["kill", "-0", str(state["pid"])], capture_output=True).returncode != 0
    assert _tuneline(env, "server", "status").stdout.strip() == "not running"
