"""Where the `dedup` step's tasks run: `mapper(fn, [args, ...]) -> [fn(*args), ...]`, in order.

The step's tasks (`tasks.dedup.partitions`: exact groups and LSH buckets of a range of key
partitions; `signatures.fetch`: the records of one shard that the clustering compares) are
module-level functions of plain arguments (paths, manifests, NumPy arrays) returning plain
values, so any of these runs them, and the step's artifacts are the same whichever does:

* `local_map`: one after another, in this process;
* `thread_map(n)`: n threads of this process (Parquet reads, NumPy sorts and the compiled
  kernels' callers release the GIL for most of a task); `local_threads`, a thread per core, is
  the default outside Dask;
* `pool_map(executor)`: any `concurrent.futures` executor, e.g. the process pool the
  signatures ran on;
* `dask_map(client)`: a `dask.distributed` cluster, one Dask task per step task;
* `auto_mapper()`: Dask when the step runs in a Prefect flow run whose task runner is
  prefect-dask's `DaskTaskRunner` (the runner's client in the flow's process; on a worker,
  the worker's client, seceding), else `local_threads`. `dedup()` uses it by default, so a flow
  on a Dask cluster spreads the clustering over its workers without passing anything.
"""
from __future__ import annotations

import os
import uuid
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Callable, Sequence

from tasks.dask_runner import dask_client, flow_dask_runner

Mapper = Callable[[Callable, Sequence[tuple]], list]


def local_map(fn: Callable, args: Sequence[tuple]) -> list:
    """The tasks one after another, in this process."""
    return [fn(*a) for a in args]


def _call(fn_args):
    fn, args = fn_args
    return fn(*args)


def pool_map(executor: Executor) -> Mapper:
    """The tasks on a `concurrent.futures` executor (a process pool pickles each task's arguments)."""

    def mapper(fn: Callable, args: Sequence[tuple]) -> list:
        return list(executor.map(_call, [(fn, a) for a in args]))

    return mapper


def thread_map(workers: int) -> Mapper:
    """The tasks on `workers` threads of this process."""

    def mapper(fn: Callable, args: Sequence[tuple]) -> list:
        if len(args) < 2 or workers < 2:
            return local_map(fn, args)
        with ThreadPoolExecutor(min(workers, len(args))) as ex:
            return list(ex.map(_call, [(fn, a) for a in args]))

    return mapper


#: The tasks on a thread per core: the step at 10M records took 64 s instead of 90 one after
#: another (keys 9 s instead of 14, re-reading the compared records 28 s instead of 44;
#: benchmarks/README.md), for 0.4 GB more at its peak (two tasks' buffers at once).
local_threads = thread_map(os.cpu_count() or 1)


def dask_map(client) -> Mapper:
    """The tasks on the Dask cluster of `client` (a `distributed.Client`): one Dask task per
    step task (named `dedup-<function>-<n>`), gathered in order."""

    def mapper(fn: Callable, args: Sequence[tuple]) -> list:
        if not args:
            return []
        name = getattr(fn, "__name__", "task").strip("_")
        call = uuid.uuid4().hex[:12]  # a key of its own per call: never an earlier call's result
        keys = [f"dedup-{name}-{call}-{i}" for i in range(len(args))]
        futures = client.map(_call, [(fn, a) for a in args], key=keys, pure=False)
        return client.gather(futures)

    return mapper


def auto_mapper() -> Mapper:
    """`dask_map` on the flow run's Dask cluster under a DaskTaskRunner (`tasks.dask_runner`:
    the worker's client on a worker, the runner's in the flow's process), else `local_threads`."""
    runner = flow_dask_runner()
    if runner is None:
        return local_threads

    def mapper(fn: Callable, args: Sequence[tuple]) -> list:
        with dask_client(runner) as client:
            return dask_map(client)(fn, args)

    return mapper
