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
from typing import Any, Iterator

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
    uvicorn.run(create_app(final=True), host=host, port=port, log_level=log_level)


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


@contextlib.contextmanager
def prefect_api(timeout_s: float | None = None) -> Iterator[Any]:
    """One Prefect API for this process and its shard workers, for the length of a run.

    With PREFECT_API_URL set, that server. Without it, Prefect would start a temporary
    server per process, so task runs in the process pool would land on servers of their
    own, invisible in the run's UI: start one temporary server here (UI on) and hand its
    URL to every child through the environment. Yields the server, or None."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    server = temporary_server_class()()
    server.start(timeout=int(timeout_s or os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 300)))
    os.environ["PREFECT_API_URL"] = server.api_url
    logging.getLogger(__name__).info(
        "Prefect UI of this run (a temporary server, gone when the run ends; `tuneline server` and "
        "PREFECT_API_URL for a lasting one): %s", server.address)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server
    finally:
        # Send what is queued while the server is still there, else each log and event
        # batch retries against a closed port for a minute at exit.
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for worker in (APILogWorker, EventsWorker):
            worker.drain_all(timeout=10)
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
