"""Basic auth on the Prefect server: PREFECT_SERVER_API_AUTH_STRING / PREFECT_API_AUTH_STRING.

The session server (conftest) runs with an auth string. Unauthenticated or wrongly
authenticated API calls get 401; the client, the CLI and a worker work with the string;
the server listens on 127.0.0.1 only; the secret is in no file we ship and in no log.
"""
from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def test_api_refuses_calls_without_the_auth_string(prefect_api):
    url = prefect_api.api_url
    user = prefect_api.auth_string.split(":")[0]
    assert httpx.post(f"{url}/flows/filter", json={}).status_code == 401
    assert httpx.post(f"{url}/flows/filter", json={}, auth=(user, "wrong")).status_code == 401
    assert httpx.get(f"{url}/work_pools/tuneline").status_code == 401
    user, password = prefect_api.auth_string.split(":", 1)
    assert httpx.post(f"{url}/flows/filter", json={}, auth=(user, password)).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200  # probes stay open, and say nothing


def test_python_client_works_with_the_auth_string_and_fails_without(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with prefect_api.settings(), get_client(sync_client=True) as client:
        # Unfiltered reads send null fields: 422 from stock Prefect 3.8.8 on FastAPI >= 0.132,
        # fine through `tuneline server` (flows/prefect_server.py).
        assert client.read_flows() is not None and client.read_flow_runs() is not None
    with temporary_settings(updates={PREFECT_API_URL: prefect_api.api_url}, restore_defaults={PREFECT_API_AUTH_STRING}):
        with get_client(sync_client=True) as client, pytest.raises(PrefectHTTPStatusError, match="401"):
            client.read_flows()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on `port`, from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                found.add(addr)
    return found


def test_server_binds_loopback_only(prefect_api):
    port = int(prefect_api.api_url.split(":")[2].split("/")[0])
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, little-endian hex; no 0.0.0.0, no ::


@pytest.mark.slow
def test_cli_and_worker_work_with_the_string_and_never_log_it(prefect_api):
    secret = prefect_api.auth_string.split(":", 1)[1]
    pool = "auth-check"
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with prefect_api.settings(), get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
    # One polling round of a real worker: it registers itself through the authenticated API.
    worker = prefect_api.spawn([PREFECT, "worker", "start", "--pool", pool, "--run-once", "--name", "auth-worker"],
                               "auth-worker")
    assert worker.wait(timeout=120) == 0, (prefect_api.home / "auth-worker.log").read_text()[-3000:]
    listing = prefect_api.cli("work-pool", "inspect", pool)
    assert pool in listing.stdout
    with prefect_api.settings(), get_client(sync_client=True) as client:
        assert "auth-worker" in [w.name for w in client.read_workers_for_work_pool(pool, offset=0, limit=10)]

    # Without the string the CLI fails with 401 instead of falling back to anything.
    import subprocess

    env = prefect_api.client_env()
    env.pop("PREFECT_API_AUTH_STRING")
    res = subprocess.run([PREFECT, "--no-prompt", "work-pool", "inspect", pool], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "401" in res.stdout + res.stderr

    assert secret not in (REPO / "deployments" / "prefect.yaml").read_text()
    assert secret not in (REPO / "deployments" / "README.md").read_text()
    for log in prefect_api.logs:  # server, CLI and worker output captured so far
        assert log.exists() and secret not in log.read_text(errors="replace"), log
