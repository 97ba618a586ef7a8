"""The Dask cluster a Prefect flow run runs on, for the steps that spread their own work over
it (dedup's tasks, `tasks.dedup.mapper`; mix's token counts, `flows.tasks.mix_task`): the
cluster of the flow run's prefect-dask `DaskTaskRunner` (flows.pipeline.shard_runner,
TUNELINE_DASK_ADDRESS), if it has one."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator


def flow_dask_runner():
    """The prefect-dask DaskTaskRunner of the Prefect flow run this runs in, or None."""
    try:
        from prefect.context import FlowRunContext
    except ImportError:  # pragma: no cover - Prefect is a dependency
        return None
    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx is not None else None
    return runner if runner is not None and type(runner).__name__ == "DaskTaskRunner" else None


@contextlib.contextmanager
def dask_client(runner) -> Iterator:
    """A `distributed.Client` of `runner`'s cluster (a `flow_dask_runner()`). On a Dask worker (a
    task the runner sent there) the worker's client, the worker's thread given back while it is
    used (`worker_client`); in the flow's own process the runner's client, or a client of the
    runner's scheduler."""
    from distributed import Client, get_worker, worker_client

    try:
        get_worker()
        on_worker = True
    except ValueError:
        on_worker = False
    if on_worker:
        with worker_client() as client:
            yield client
        return
    client = getattr(runner, "_client", None)  # prefect-dask keeps its client there
    if client is not None:
        yield client
        return
    with Client(runner.address, set_as_default=False) as client:
        yield client
