"""`tuneline run` without PREFECT_API_URL reuses one lasting local server: started in the
background on first use, the same one for the next run, its history kept, stopped by
`tuneline server stop`. And the per-run costs cut around it: no flow heartbeats on it, no
module teardown at the end of the program."""
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


def test_flow_heartbeats_are_off_unless_the_user_set_them():
    """At its end every flow run waits for its heartbeat thread's one-second sleep (about a
    second per flow of a small run); a run on Tuneline's local server sends none, unless the
    user configured PREFECT_FLOWS_HEARTBEAT_FREQUENCY (e.g. for a zombie-run automation)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    from flows.prefect_server import _no_heartbeats

    with temporary_settings(updates=_no_heartbeats()):
        assert get_current_settings().flows.heartbeat_frequency is None
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):
        assert _no_heartbeats() == {}


def test_quick_exit_still_joins_threads_runs_exit_handlers_and_flushes(tmp_path):
    """`tuneline run|demo|evaluate` end without Python's module teardown (flows/cli.py
    `_exit_now`), but nothing a normal exit does for the user's data is skipped."""
    script = f"""
import atexit, sys, threading, time
from pathlib import Path
from flows.cli import _exit_now
atexit.register(lambda: Path({str(tmp_path / 'atexit')!r}).write_text('ran'))
threading.Thread(target=lambda: (time.sleep(0.3), Path({str(tmp_path / 'thread')!r}).write_text('done'))).start()
sys.stdout.write('buffered, no newline')
_exit_now(3)
"""
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 3 and res.stdout == "buffered, no newline"
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "done"
