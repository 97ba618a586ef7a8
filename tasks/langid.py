"""Language identification of user turns (py3langid), on every core for large batches.

py3langid classifies one text at a time in Python (about 40 us for 160 characters: 49 s of
one core for a million user turns), the slowest row-level check at a million rows.
Distinct texts are classified once; from `PARALLEL_MIN` distinct texts on, chunks go to a
pool of spawned worker processes (this module is all they import), one per core, kept for
the life of the process.
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import multiprocessing
import os
from typing import Callable

UNDETERMINED = "und"
#: From this many distinct texts in one call (a validate batch has up to 20,000 rows) the
#: pool is used: its one-time start-up (about a second) is then repaid many times.
PARALLEL_MIN = 4_000
CHUNK = 2_500
_pool: cf.ProcessPoolExecutor | None = None


def classify(texts: list[str]) -> list[str]:
    """py3langid's language code of each text."""
    import py3langid

    return [py3langid.classify(t)[0] for t in texts]


def languages(texts: list[str | None], min_chars: int, max_chars: int) -> list[str]:
    """The language of each text's first `max_chars` characters; `und` below `min_chars`."""
    return languages_later(texts, min_chars, max_chars)()


def languages_later(texts: list[str | None], min_chars: int, max_chars: int) -> Callable[[], list[str]]:
    """`languages`, started now on the worker pool (when the texts are many) and collected by
    calling the result: the caller's process can do other work while the pool classifies."""
    prepared = [(t or "").strip()[:max_chars] for t in texts]
    distinct = list(dict.fromkeys(p for p in prepared if len(p) >= max(min_chars, 1)))
    workers = os.cpu_count() or 1
    if len(distinct) >= PARALLEL_MIN and workers > 1:
        chunks = [distinct[i : i + CHUNK] for i in range(0, len(distinct), CHUNK)]
        futures = [_workers(workers).submit(classify, c) for c in chunks]
        labelled = lambda: [lang for f in futures for lang in f.result()]  # noqa: E731
    else:
        labelled = lambda: classify(distinct)  # noqa: E731

    def collect() -> list[str]:
        found = dict(zip(distinct, labelled()))
        return [found.get(p, UNDETERMINED) for p in prepared]

    return collect


def _workers(n: int) -> cf.ProcessPoolExecutor:
    global _pool
    if _pool is None:
        _pool = cf.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))
        atexit.register(_pool.shutdown, wait=False, cancel_futures=True)
    return _pool
