"""What a user sees of `tuneline` errors: one line on stderr, exit 2, no traceback unless
`--debug`; argument errors from argparse; DuckDB's own SQL messages; quiet closed pipes."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from flows.cli import build_parser
from tasks import catalog
from tasks.step import run_step
from tasks.store import RunLog

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "flows.cli"]


def tuneline(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=REPO, env=env or dict(os.environ), capture_output=True, text=True,
                          timeout=timeout)


def _actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {a.dest}", a) for a in sub._actions)
        else:
            yield action.dest, action


def test_every_argument_has_help():
    missing = [name for name, a in _actions(build_parser()) if not a.help and a.dest != "help"]
    assert not missing, missing


def test_unknown_until_step_is_an_argparse_error(tmp_path):
    res = tuneline("run", str(tmp_path / "recipe.yaml"), "--until", "trian", timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "argument --until: invalid choice: 'trian'" in res.stderr and "'train'" in res.stderr


@pytest.fixture
def catalog_root(store):
    def body(w):
        w.write("things", pa.schema([("x", pa.int64())]), [{"x": i} for i in range(50_000)])
        w.stats.update(rows_in=50_000, rows_out=50_000)

    m = run_step(store, "s", 1, [], {}, "l", body)
    catalog.publish_step(store, RunLog(store, "r1", "r.yaml"), "s", [m], [{"step": "s"}])
    return store.root


def test_sql_error_is_duckdbs_message(catalog_root):
    res = tuneline("query", "--out", str(catalog_root), "select nope from things", timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith('tuneline: error: Binder Error: Referenced column "nope" not found')


def test_closed_pipe_ends_quietly(catalog_root):
    proc = subprocess.Popen([*CLI, "query", "--out", str(catalog_root), "select * from things"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("| x")
    proc.stdout.close()  # as `| head -1` does
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == ""


def test_too_many_rejects_is_one_line_with_reasons_and_a_query(prefect_server, demo_dir, tmp_path):
    from prefect.settings import PREFECT_API_URL

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    recipe = data / "recipe.yaml"
    recipe.write_text(recipe.read_text() + "\nmax_reject_share: 0.02\n")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    out = tmp_path / "out"
    res = tuneline("run", str(recipe), "--out", str(out), "--until", "convert", env=env)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "TooManyRejects" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("tuneline: error: convert "), errors
    assert "above max_reject_share 2.0%; top reasons: " in errors[0]
    query = errors[0].split('see them: tuneline query "', 1)[1].rstrip('"')
    rows = json.loads(tuneline("query", "--out", str(out), "--format", "json", query, timeout=60).stdout)
    assert rows and all(r["reason"] for r in rows)
    top = errors[0].split("top reasons: ", 1)[1].split(";")[0]
    assert top.split(",")[0].split()[0] in {r["reason"] for r in rows}

    debug = tuneline("run", str(recipe), "--out", str(out), "--until", "convert", "--debug", env=env)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "TooManyRejects" in debug.stderr
