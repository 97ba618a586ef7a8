"""Shared fixtures. Prefect runs against a real (temporary) Prefect test server."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=f"real data samples not found at {REAL_DATA}")
    for item in items:
        # Flow, deployment and server tests are end to end (minutes): `make test-all` runs them.
        if "/tests/flows/" in str(item.fspath):
            item.add_marker(pytest.mark.slow)
        if "real_data" in item.keywords and not REAL_DATA.exists():
            item.add_marker(skip)


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server (temporary sqlite database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def store(tmp_path):
    from tasks.store import ArtifactStore

    return ArtifactStore(tmp_path / "artifacts")
