"""Prefect's API server, as Tuneline runs it: `tuneline server` and the temporary server
of one `tuneline demo|run|evaluate`.

It is Prefect's own app (`prefect.server.api.server.create_app`) with one compatibility
layer. FastAPI 0.132 and later validate an explicit JSON `null` in a request body field
against the field's type, and Prefect 3.8.8's server declares its optional query fields as
`limit: int = Body(None)`, `flows: FlowFilter = None`, ... while Prefect's own client sends
those fields as `null`. Every unfiltered read (`prefect flow-run ls`, `prefect deploy`, a
worker listing its pool's workers, `client.read_flow_runs()`) then gets 422. FastAPI
before 0.132 read `null` as "not given"; `NullAsMissing` restores that for the read-style
endpoints (their bodies are sets of optional filters), so stock Prefect clients, workers,
the CLI and the UI work against this server. Prefect 3.8.8 needs FastAPI >= 0.139, so
pinning an older FastAPI is not an option (tests/flows/test_auth.py,
tests/flows/test_deployments.py exercise these calls).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from tasks.errors import TunelineError
from tasks.store import atomic_write_json

# POST endpoints whose JSON body is a set of optional query fields (filters, sort, limit).
READ_ENDPOINTS = ("/filter", "/count", "/paginate", "/history", "/get_scheduled_flow_runs", "/get_runs",
                  "/next-runs", "/lateness", "/count-task-runs", "/count-deployments", "/dashboard/counts")


class NullAsMissing:
    """ASGI middleware: drop top-level `null` fields of JSON bodies sent to READ_ENDPOINTS."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].rstrip("/").endswith(READ_ENDPOINTS):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None  # not JSON: let the API answer it as it would
        if isinstance(data, dict) and any(v is None for v in data.values()):
            body = json.dumps({k: v for k, v in data.items() if v is not None}).encode()
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
            scope = dict(scope, headers=headers + [(b"content-length", str(len(body)).encode())])
        return await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive),
                              send)


def _replay(messages: list[dict], receive):
    pending = list(messages)

    async def replayed():
        return pending.pop(0) if pending else await receive()

    return replayed


def create_app(*args: Any, **kwargs: Any):
    """Prefect's app factory, with `NullAsMissing` in front (uvicorn --factory target)."""
    from prefect.server.api.server import create_app as prefect_create_app

    app = prefect_create_app(*args, **kwargs)
    if not getattr(app.state, "tuneline_null_as_missing", False):  # Prefect caches apps per settings
        app.add_middleware(NullAsMissing)
        app.state.tuneline_null_as_missing = True
    return app


def serve(host: str, port: int, ui: bool = True, log_level: str = "info") -> None:
    """`tuneline server`: a lasting Prefect server (API, UI, scheduler and other services) in
    the foreground, as `prefect server start` runs it."""
    import uvicorn

    os.environ.setdefault("PREFECT_UI_API_URL", f"http://{host}:{port}/api")  # else the UI calls port 4200
    os.environ["PREFECT_UI_ENABLED"] = "1" if ui else "0"
    os.environ["PREFECT_SERVER_API_HOST"], os.environ["PREFECT_SERVER_API_PORT"] = host, str(port)
    print(f"Prefect server with Tuneline's compatibility layer: UI http://{host}:{port}, API http://{host}:{port}/api\n"
          f"Clients: export PREFECT_API_URL=http://{host}:{port}/api", flush=True)
    local = host in ("127.0.0.1", "localhost")
    recorded = _read_state()
    if local and (recorded is None or (recorded["pid"] != os.getpid() and running_server() is None)):
        _record(os.getpid(), host, port, "")  # `tuneline run` without PREFECT_API_URL reuses it
    try:
        uvicorn.run(create_app(final=True), host=host, port=port, log_level=log_level)
    finally:
        if local:
            _forget(os.getpid())


def temporary_server_class():
    """Prefect's temporary server for one run, serving `create_app` above, with the UI on."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class TemporaryServer(SubprocessASGIServer):
        # Shares Prefect's per-port registry on purpose: a thread that has not seen the
        # run's settings (contextvars do not cross threads) and falls back to Prefect's own
        # temporary server gets this one instead of starting a second.

        def _run_uvicorn_command(self) -> subprocess.Popen:
            env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
                   "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1", "PREFECT_UI_ENABLED": "1",
                   "PREFECT_UI_API_URL": self.api_url}
            # Its telemetry heartbeat writes to the fresh SQLite database while the server
            # migrates it ("database is locked" tracebacks at start); a per-run server on an
            # offline machine has nothing to report. A user's own setting wins.
            env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
            return subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "flows.prefect_server:create_app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "error", "--lifespan", "on"], env=env)

    return TemporaryServer


# -- the local lasting server `tuneline run` reuses ------------------------------------------
STATE_FILE = "tuneline-server.json"  # in $PREFECT_HOME: the local server's pid, port and URL
SERVER_ENV = "TUNELINE_SERVER"  # "temporary": a server per run instead of the lasting one


def _state_path() -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()).expanduser() / STATE_FILE


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_state() -> dict | None:
    try:
        return json.loads(_state_path().read_text())
    except (FileNotFoundError, ValueError):
        return None


def running_server() -> dict | None:
    """The local lasting server recorded in $PREFECT_HOME, if it is alive and answers."""
    state = _read_state()
    return state if state and _alive(state["pid"]) and _healthy(state["api_url"]) else None


def _forget(pid: int) -> None:
    """Remove the record of the server `pid` (a server that stops)."""
    with contextlib.suppress(FileNotFoundError, OSError):
        if (_read_state() or {}).get("pid") == pid:
            _state_path().unlink()


def _record(pid: int, host: str, port: int, log: str) -> dict:
    state = {"pid": pid, "host": host, "port": port, "api_url": f"http://{host}:{port}/api",
             "ui_url": f"http://{host}:{port}", "log": log}
    _state_path().parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(_state_path(), state)
    return state


def _free_port(preferred: int = 4200) -> int:
    import socket

    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port")


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    import fcntl

    path = _state_path().with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_server(timeout_s: float = 300) -> dict:
    """The local lasting server: the one running (from `tuneline server` or an earlier run),
    else `tuneline server` started in the background on port 4200 (or a free one), its log in
    $PREFECT_HOME/tuneline-server.log. One start at a time across processes."""
    import time

    with _state_lock():
        found = running_server()
        if found:
            return found
        port = _free_port()
        log = _state_path().with_name("tuneline-server.log")
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_API_URL")}
        with open(log, "ab") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "server", "--port", str(port)],
                                    stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # not the terminal's: Ctrl-C of a run leaves it up
        state = _record(proc.pid, "127.0.0.1", port, str(log))
        deadline = time.monotonic() + timeout_s
        while not _healthy(state["api_url"]):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                _state_path().unlink(missing_ok=True)
                raise TunelineError(f"the local Prefect server did not start (see {log}); set "
                                    f"{SERVER_ENV}=temporary for a server per run")
            time.sleep(0.2)
        logging.getLogger(__name__).info("started a lasting local Prefect server: %s (`tuneline server stop` "
                                         "stops it)", state["ui_url"])
        return state


def stop_server(timeout_s: float = 30) -> str:
    """`tuneline server stop`: stop the local lasting server; says what it did."""
    import signal
    import time

    with _state_lock():
        state = running_server()
        _state_path().unlink(missing_ok=True)
    if state is None:
        return "no local Tuneline Prefect server is running"
    os.kill(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return f"stopped the Prefect server at {state['ui_url']} (pid {state['pid']}); its history stays in $PREFECT_HOME"


def _drain() -> None:
    """Send the queued logs and events while the server is still there, else each batch
    retries against a closed port for a minute at exit."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=10)


def _no_heartbeats() -> dict:
    """Flow run heartbeats off for a run on Tuneline's own local server, unless the user set
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY. A heartbeat only lets a server automation mark a flow run
    whose process died as crashed (none exists unless a user made one), and at the end of every
    flow run Prefect waits for the heartbeat thread to wake from its one-second sleep: up to a
    second per flow run, and a small `tuneline run` has two (pipeline, prepare)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:
        return {}
    return {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}


@contextlib.contextmanager
def prefect_api(timeout_s: float | None = None) -> Iterator[Any]:
    """One Prefect API for this process and its shard workers, for the length of a run.

    With PREFECT_API_URL set, that server. Without it, the local lasting server (started in
    the background on first use, `ensure_server`), so the run's history and UI outlive it and
    a run pays no server start; with TUNELINE_SERVER=temporary, a temporary server for this
    run only (UI on). Either way its URL goes to every child through the environment (else
    Prefect would start a temporary server per process, and task runs in the process pool
    would land on servers of their own); flow heartbeats are off on either (`_no_heartbeats`).
    Yields the temporary server or the lasting one's state, or None."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    timeout = float(timeout_s or os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 300))
    if os.environ.get(SERVER_ENV) == "temporary":
        server = temporary_server_class()()
        server.start(timeout=int(timeout))
        api_url, stop = server.api_url, server.stop
        logging.getLogger(__name__).info(
            "Prefect UI of this run (a temporary server, gone when the run ends; unset %s to keep a lasting "
            "one): %s", SERVER_ENV, server.address)
    else:
        server = ensure_server(timeout)
        api_url, stop = server["api_url"], lambda: None
        logging.getLogger(__name__).info("Prefect UI: %s (a lasting local server; `tuneline server stop` stops it, "
                                         "%s=temporary runs without it)", server["ui_url"], SERVER_ENV)
    from prefect.context import refresh_global_settings_context

    os.environ["PREFECT_API_URL"] = api_url
    refresh_global_settings_context()  # threads without the run's context read the global one
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url, **_no_heartbeats()}):
            yield server
    finally:
        _drain()
        os.environ.pop("PREFECT_API_URL", None)
        refresh_global_settings_context()
        stop()
