"""A real `prefect server` on loopback for the deployment, auth, Dask and concurrency tests.

One server per test session, started the way the README tells a user to start one:
`tuneline server --host 127.0.0.1 --port <free port>` with its own temporary
`PREFECT_HOME` and sqlite database, and basic auth switched on
(`PREFECT_SERVER_API_AUTH_STRING`), so every client in these tests (CLI, worker, flow
runs) proves it works with `PREFECT_API_AUTH_STRING`. The UI is off to start faster.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
# A run without PREFECT_API_URL gets a temporary server, never the user's lasting local one
# (tests/flows/test_local_server.py exercises that one in a PREFECT_HOME of its own).
os.environ["TUNELINE_SERVER"] = "temporary"
PREFECT = str(Path(sys.executable).with_name("prefect"))
TUNELINE = str(Path(sys.executable).with_name("tuneline"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    """This process's environment without any PREFECT_* setting (the test harness sets some)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


@dataclass
class PrefectServer:
    """A running server: its API URL, the auth string clients need, and its captured log."""

    api_url: str
    auth_string: str | None
    home: Path
    log: Path
    process: subprocess.Popen
    logs: list[Path] = field(default_factory=list)  # every log a test captured (server, worker, CLI)

    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment for a client subprocess (CLI, worker, flow) of this server."""
        env = clean_env() | {
            "PREFECT_HOME": str(self.home / "client"),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "TOKENIZERS_PARALLELISM": "false",
        }
        if self.auth_string:
            env["PREFECT_API_AUTH_STRING"] = self.auth_string
        return env | extra

    def settings(self):
        """In-process client settings (for `get_client()` in the test process)."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        updates = {PREFECT_API_URL: self.api_url}
        if self.auth_string:
            updates[PREFECT_API_AUTH_STRING] = self.auth_string
        return temporary_settings(updates=updates)

    def cli(self, *args: str, timeout: float = 120, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess:
        """Run `prefect <args>` against this server; the output is kept in a log for the secret check."""
        res = subprocess.run([PREFECT, "--no-prompt", *args], cwd=cwd, env=self.client_env(**env),
                             capture_output=True, text=True, timeout=timeout)
        log = self.home / f"cli-{len(self.logs)}.log"
        log.write_text(f"$ prefect {' '.join(args)}\n{res.stdout}\n{res.stderr}")
        self.logs.append(log)
        if res.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    @staticmethod
    def stop(process: subprocess.Popen) -> None:
        stop(process)

    def spawn(self, args: list[str], name: str, cwd: Path = REPO, **env: str) -> subprocess.Popen:
        """Start a long-running client (a worker) with its output captured to `<home>/<name>.log`."""
        log = self.home / f"{name}.log"
        self.logs.append(log)
        fh = open(log, "w")
        return subprocess.Popen(args, cwd=cwd, env=self.client_env(**env), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:  # /health needs no auth
                return
        time.sleep(0.3)
    raise RuntimeError(f"prefect server not healthy after {timeout}s:\n{log.read_text()[-4000:]}")


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group we started (server, worker and their children), then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 15)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait(timeout)


@contextlib.contextmanager
def prefect_server_process(home: Path, auth_string: str | None = None, ui: bool = False,
                           timeout: float = 300) -> Iterator[PrefectServer]:
    """`tuneline server` on 127.0.0.1 and a free port, with a sqlite db under `home`."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = clean_env() | {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "INFO",
    }
    if auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    if ui:
        env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    with open(log, "w") as fh:
        process = subprocess.Popen(
            [TUNELINE, "server", "--host", "127.0.0.1", "--port", str(port), *([] if ui else ["--no-ui"])],
            env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=home, start_new_session=True)
    api_url = f"http://127.0.0.1:{port}/api"
    server = PrefectServer(api_url, auth_string, home, log, process, logs=[log])
    try:
        _wait_healthy(api_url, process, log, timeout)
        yield server
    finally:
        stop(process)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The demo input files and their recipe.yaml for the tiny model (`tuneline demo-data
    --model tiny`), written once per session. Tests only read them; copy the directory to change anything."""
    from tasks.demo_data import write_demo_data

    d = tmp_path_factory.mktemp("demo-data")
    write_demo_data(d, seed=0, model="tiny")
    return d


@pytest.fixture(scope="session")
def demo_recipe(demo_dir) -> Path:
    return demo_dir / "recipe.yaml"


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> Iterator[PrefectServer]:
    """One real Prefect server with basic auth for the whole session.

    It starts in ~15 s on an idle 2-core machine (database migrations, services); the
    300 s limit is for a loaded one."""
    auth = f"tuneline:{secrets.token_hex(12)}"
    with prefect_server_process(tmp_path_factory.mktemp("prefect-server"), auth_string=auth) as server:
        yield server
