"""Language identification of user turns (py3langid), batched in NumPy, on every core for large batches.

py3langid classifies one text at a time in Python (about 60 us for 160 characters: a minute
of one core for a million user turns): a byte-by-byte walk of its tokenizer automaton, then
a naive Bayes score per language from the features the walk visits. `classify` does the same
for a whole batch at once (`Batched`): the automaton steps every text one byte per NumPy
operation, the feature counts become a sparse matrix, and one sparse product scores every
text in every language (float32, like py3langid).

The labels are py3langid's own. The batched scores and py3langid's are both float32 sums of
the same terms, each within (K + 2) u sum|terms| of the exact value (K features, u = 2**-24,
whatever the summation order), so when a text's best language leads the runner-up by more
than four such bounds both pick the same one; any closer text (and any text without
features) is classified by py3langid itself, and every batch's first SPOT_CHECK texts are
compared with py3langid before the rest is trusted.

Distinct texts are classified once; from `PARALLEL_MIN` distinct texts on, chunks go to a
pool of spawned worker processes (this module is all they import), one per core, kept for
the life of the process.
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import functools
import multiprocessing
import os
from collections.abc import Callable

import numpy as np

UNDETERMINED = "und"
#: From this many distinct texts in one call (a validate batch has up to 20,000 rows) the
#: pool is used: its one-time start-up (about a second) is then repaid many times.
PARALLEL_MIN = 4_000
CHUNK = 2_500
#: Texts of every batch also classified one by one by py3langid; a difference means py3langid for all.
SPOT_CHECK = 16
_pool: cf.ProcessPoolExecutor | None = None


def classify(texts: list[str]) -> list[str]:
    """py3langid's language code of each text."""
    batched = _batched()
    if batched is None:
        return classify_each(texts)
    return batched.classify(texts)


def classify_each(texts: list[str]) -> list[str]:
    """py3langid's language code of each text, one text at a time (py3langid itself)."""
    import py3langid

    return [py3langid.classify(t)[0] for t in texts]


@functools.lru_cache(maxsize=1)
def _batched() -> Batched | None:
    """The batched classifier of py3langid's default model; None when the identifier is set up
    in a way it does not reproduce (normalised probabilities, a confidence floor)."""
    from py3langid import langid as model

    ident = model._get_identifier()
    if ident._norm_probs or ident.min_confidence is not None:
        return None
    return Batched(ident)


class Batched:
    """py3langid's classification of many texts at once (module docstring)."""

    def __init__(self, ident):
        self.ident = ident
        self.next_state = np.frombuffer(ident.tk_nextmove, dtype=np.dtype(f"u{ident.tk_nextmove.itemsize}"))
        self.row_base = np.asarray(ident.tk_row, dtype=np.int64) << 8
        self.feature = np.asarray(ident.tk_output, dtype=np.int64)  # per state: the feature it emits, or -1
        self.table = np.asarray(ident.nb_ptc, dtype=np.float32)  # float16 -> float32 is exact
        self.table_max = np.abs(self.table).max(axis=1).astype(np.float64)
        self.prior = np.asarray(ident.nb_pc, dtype=np.float32)
        self.prior_max = float(np.abs(self.prior).max())

    def features(self, encoded: list[bytes]):
        """Sparse (texts x features) matrix of py3langid's feature counts (its `visit_counts`)."""
        from scipy import sparse

        n = len(encoded)
        lengths = np.fromiter(map(len, encoded), np.int64, n)
        order = np.argsort(-lengths, kind="stable")  # longest first: the texts still walking are a prefix
        by_length = lengths[order]
        data = np.frombuffer(b"".join(encoded[i] for i in order.tolist()), np.uint8)
        starts = np.concatenate([[0], np.cumsum(by_length)[:-1]]).astype(np.int64)
        states = np.zeros(n, np.int64)
        rows, cols = [], []
        walking = n
        for p in range(int(by_length[0]) if n else 0):
            while by_length[walking - 1] <= p:
                walking -= 1
            s = self.next_state[self.row_base[states[:walking]] + data[starts[:walking] + p]].astype(np.int64)
            states[:walking] = s
            f = self.feature[s]
            hit = np.flatnonzero(f >= 0)
            rows.append(order[hit])
            cols.append(f[hit])
        rows_a = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        cols_a = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        counts = sparse.csr_matrix((np.ones(len(rows_a), np.float32), (rows_a, cols_a)),
                                   shape=(n, len(self.table)))
        counts.sum_duplicates()
        return counts

    def classify(self, texts: list[str]) -> list[str]:
        if not texts:
            return []
        ident = self.ident
        x = self.features([ident._encode(t) for t in texts])
        x.data = np.log1p(x.data)  # float32, as py3langid weighs a feature's count
        n_features = np.diff(x.indptr)
        scores = np.asarray(x @ self.table) + self.prior
        for i, j in ident._alias_pairs:  # a label with two columns scores its better one
            scores[:, i] = np.maximum(scores[:, i], scores[:, j])
            scores[:, j] = -np.inf
        best = scores.argmax(axis=1)
        top2 = -np.partition(-scores, 1, axis=1)[:, :2]
        terms = x.astype(np.float64) @ self.table_max + self.prior_max  # >= sum |terms| of any language
        bound = (n_features + 2) * 2.0**-24 * terms * 1.01
        sure = (n_features > 0) & (top2[:, 0] - top2[:, 1] > 4 * bound)
        labels = [ident.nb_classes[i] for i in best.tolist()]
        unsure = np.flatnonzero(~sure).tolist()
        for i, label in zip(unsure, classify_each([texts[i] for i in unsure])):
            labels[i] = label
        spot = [i for i in range(min(SPOT_CHECK, len(texts))) if sure[i]]
        if classify_each([texts[i] for i in spot]) != [labels[i] for i in spot]:
            return classify_each(texts)
        return labels


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
