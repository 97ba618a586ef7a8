"""Shared fixtures. Prefect runs against a real (temporary) Prefect test server."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"

# Tests never talk to a user's own Prefect server: every one starts its own.
for _name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_PROFILE"):
    os.environ.pop(_name, None)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=f"real data samples not found at {REAL_DATA}")
    for item in items:
        # Flow, deployment and server tests are end to end: `make test-fast` leaves them out.
        if "/tests/flows/" in str(item.fspath):
            item.add_marker(pytest.mark.slow)
        if "real_data" in item.keywords and not REAL_DATA.exists():
            item.add_marker(skip)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """The temporary Prefect server `tuneline run` starts (flows/prefect_server.py), with a
    sqlite database of its own, for the whole session."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    from flows.prefect_server import prefect_api

    db = tmp_path_factory.mktemp("prefect") / "prefect.db"
    with temporary_settings(updates={PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{db}"}):
        with prefect_api(timeout_s=300) as server:
            yield server


@pytest.fixture
def store(tmp_path):
    from tasks.store import ArtifactStore

    return ArtifactStore(tmp_path / "artifacts")
