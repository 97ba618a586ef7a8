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

import json
import os
import subprocess
import sys
from typing import Any

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
        _instances: dict = {}

        def _run_uvicorn_command(self) -> subprocess.Popen:
            env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
                   "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1", "PREFECT_UI_ENABLED": "1",
                   "PREFECT_UI_API_URL": self.api_url}
            return subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "flows.prefect_server:create_app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "error", "--lifespan", "on"], env=env)

    return TemporaryServer
