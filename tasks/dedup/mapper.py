"""Where the `dedup` step's tasks run: `mapper(fn, [args, ...]) -> [fn(*args), ...]`, in order.

The step's tasks (`tasks.dedup.partitions`: exact groups and LSH buckets of a range of key
partitions; `signatures.fetch`: the records of one shard that the clustering compares) are
module-level functions of plain arguments (paths, manifests, NumPy arrays) returning plain
values, so any of these runs them, and the step's artifacts are the same whichever does:

* `local_map`: one after another, in this process (the default outside Dask);
* `thread_map(n)`: n threads of this process (Parquet reads, NumPy sorts and the compiled
  kernels' callers release the GIL for most of a task);
* `pool_map(executor)`: any `concurrent.futures` executor, e.g. the process pool the
  signatures ran on;
"""
from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Callable, Sequence

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
