"""Language identification of user turns (py3langid), on every core for large batches.

py3langid classifies one text at a time in Python (about 1.4 ms for 160 characters), which
made it the slowest row-level check at a million rows. Distinct texts are classified once;
from `PARALLEL_MIN` distinct texts on, chunks go to a pool of spawned worker processes (this
module is all they import), one per core, kept for the life of the process.
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import multiprocessing
import os

UNDETERMINED = "und"
PARALLEL_MIN = 20_000
CHUNK = 5_000
_pool: cf.ProcessPoolExecutor | None = None


def classify(texts: list[str]) -> list[str]:
    """py3langid's language code of each text."""
    import py3langid

    return [py3langid.classify(t)[0] for t in texts]


def languages(texts: list[str | None], min_chars: int, max_chars: int) -> list[str]:
    """The language of each text's first `max_chars` characters; `und` below `min_chars`."""
    prepared = [(t or "").strip()[:max_chars] for t in texts]
    distinct = list(dict.fromkeys(p for p in prepared if len(p) >= max(min_chars, 1)))
    workers = os.cpu_count() or 1
    if len(distinct) >= PARALLEL_MIN and workers > 1:
        chunks = [distinct[i : i + CHUNK] for i in range(0, len(distinct), CHUNK)]
        labels = [lang for part in _workers(workers).map(classify, chunks) for lang in part]
    else:
        labels = classify(distinct)
    found = dict(zip(distinct, labels))
    return [found.get(p, UNDETERMINED) for p in prepared]


def _workers(n: int) -> cf.ProcessPoolExecutor:
    global _pool
    if _pool is None:
        _pool = cf.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))
        atexit.register(_pool.shutdown, wait=False, cancel_futures=True)
    return _pool
