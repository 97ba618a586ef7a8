"""Dedup's keys on disk, partitioned, so the clustering holds one partition at a time.

The `dedup-signatures` step of each convert shard writes, besides `dedup_signatures`:

* `dedup_bands`: one row per (record with shingles, LSH band): the band key (`key`, uint64)
  and the record's row in the shard (`row`, uint32);
* `dedup_exact`: one row per record with an exact key: the 128-bit key (`hi`, `lo`) and `row`.

Rows are sorted by *fine partition*, the key's top `FINE_BITS` bits (`hi`'s for exact keys),
a stable sort, so a partition's rows are contiguous and in row order; the manifest's stats
hold, per table, the row offset where each fine partition starts (`partition_offsets`: one
list of FINE + 1 offsets per sorted run; a shard writes a new run every `FLUSH_ENTRIES` rows so
its own memory stays bounded). With `scope: within_source` every key is salted with a hash of
the record's source (`source_salt`), so records of two sources never share a bucket or group.

The `dedup` step reads a *task*, a range of consecutive fine partitions, from every shard:
equal keys are in one task, so each task finds its buckets and exact groups alone, and holds
at most about `MAX_TASK_ENTRIES` rows (`task_ranges`). Tasks are independent: they run one
after another, or on a Dask cluster (`tasks.dedup.mapper`); each returns only what it found
(pairs of records in one bucket, members of exact groups), which is proportional to the
duplicates, not to N.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.dedup import aot
from tasks.store import ArtifactStore

FINE_BITS = 10
FINE = 1 << FINE_BITS
#: Rows of `dedup_bands` (or `dedup_exact`) one task holds at most (a task is a whole number of
#: fine partitions, so a fine partition larger than this is one task of its own).
MAX_TASK_ENTRIES = 4_000_000
#: Tasks a table is cut into at least (when it has as many fine partitions with rows).
MIN_TASKS = 8
#: A shard sorts and writes its partition rows every this many rows (its memory bound).
FLUSH_ENTRIES = 8_000_000
#: Buckets up to this size give all their pairs; larger ones a star plus a chain (linear).
SMALL_BUCKET = 16

BANDS_TABLE, EXACT_TABLE = "dedup_bands", "dedup_exact"
BANDS_SCHEMA = pa.schema([pa.field("key", pa.uint64(), nullable=False), pa.field("row", pa.uint32(), nullable=False)])
EXACT_SCHEMA = pa.schema([pa.field("hi", pa.uint64(), nullable=False), pa.field("lo", pa.uint64(), nullable=False),
                          pa.field("row", pa.uint32(), nullable=False)])
HASH_COLUMNS = ("key", "hi", "lo")
_SHIFT = np.uint64(64 - FINE_BITS)


def source_salt(source: str) -> int:
    """A 64-bit salt of a source name (`scope: within_source`)."""
    return int.from_bytes(hashlib.blake2b(source.encode("utf-8"), digest_size=8).digest(), "little")


def fine_partition(keys: np.ndarray) -> np.ndarray:
    return (keys >> _SHIFT).astype(np.uint16)


# -- writing (the signatures step) ------------------------------------------------------------
class PartitionWriter:
    """Collects a shard's band keys and exact keys and writes them sorted by fine partition."""

    def __init__(self, writer):
        self.bands = writer.table(BANDS_TABLE, BANDS_SCHEMA, part_rows=1 << 62, hash_columns=HASH_COLUMNS)
        self.exact = writer.table(EXACT_TABLE, EXACT_SCHEMA, part_rows=1 << 62, hash_columns=HASH_COLUMNS)
        self._bands: list[tuple[np.ndarray, np.ndarray]] = []
        self._exact: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._n_bands = self._n_exact = 0
        self.offsets = {BANDS_TABLE: [], EXACT_TABLE: []}
        self._written = {BANDS_TABLE: 0, EXACT_TABLE: 0}

    def add(self, first_row: int, band_keys: np.ndarray, has_bands: np.ndarray, hi: np.ndarray, lo: np.ndarray,
            has_exact: np.ndarray, salt: np.ndarray | None) -> None:
        """A batch: rows first_row.., band keys (n x bands) of the rows with shingles, exact keys
        (hi, lo) of the rows with one; `salt` (uint64 per row) or None."""
        rows = np.arange(first_row, first_row + len(has_bands), dtype=np.uint32)
        bk = band_keys[has_bands]
        if salt is not None:
            bk = bk ^ salt[has_bands, None]
        self._bands.append((bk.ravel(), np.repeat(rows[has_bands], band_keys.shape[1])))  # row-major: row order
        h = hi[has_exact] ^ salt[has_exact] if salt is not None else hi[has_exact]
        self._exact.append((h, lo[has_exact], rows[has_exact]))
        self._n_bands += len(bk) * band_keys.shape[1]
        self._n_exact += int(has_exact.sum())
        if self._n_bands + self._n_exact >= FLUSH_ENTRIES:
            self.flush()

    def flush(self) -> None:
        if self._bands:
            keys, rows = (np.concatenate(c) for c in zip(*self._bands))
            self._write(self.bands, BANDS_TABLE, fine_partition(keys), {"key": keys, "row": rows}, BANDS_SCHEMA)
        if self._exact:
            hi, lo, rows = (np.concatenate(c) for c in zip(*self._exact))
            self._write(self.exact, EXACT_TABLE, fine_partition(hi), {"hi": hi, "lo": lo, "row": rows}, EXACT_SCHEMA)
        self._bands, self._exact, self._n_bands, self._n_exact = [], [], 0, 0

    def _write(self, out, name: str, part: np.ndarray, cols: dict, schema: pa.Schema) -> None:
        order = np.argsort(part, kind="stable")  # radix sort of uint16: rows stay in row order within a partition
        counts = np.bincount(part, minlength=FINE)
        offsets = np.zeros(FINE + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        out.write(pa.table({k: v[order] for k, v in cols.items()}, schema=schema))
        self.offsets[name].append((offsets + self._written[name]).tolist())
        self._written[name] += len(part)

    def close(self) -> dict:
        self.flush()
        return {"partition_offsets": self.offsets, "fine_bits": FINE_BITS}


# -- reading (the dedup step's tasks) --------------------------------------------------------
def task_ranges(sig_manifests: list[dict], table: str, max_entries: int | None = None,
                min_tasks: int | None = None) -> list[tuple[int, int]]:
    """Ranges [p0, p1) of consecutive fine partitions, in order, each holding at most
    `max_entries` (default MAX_TASK_ENTRIES) rows of `table` over all shards (or a single fine
    partition), and about 1 / `min_tasks` (default MIN_TASKS) of them at most, so that
    workers share even a small step."""
    per_part = np.zeros(FINE, np.int64)
    for m in sig_manifests:
        for run in m["stats"]["partition_offsets"][table]:
            per_part += np.diff(np.asarray(run, np.int64))
    limit = min(max_entries or MAX_TASK_ENTRIES, -(-int(per_part.sum()) // (min_tasks or MIN_TASKS)))
    ranges, start, acc = [], 0, 0
    for p in range(FINE):
        if acc and acc + per_part[p] > limit:
            ranges.append((start, p))
            start, acc = p, 0
        acc += int(per_part[p])
    ranges.append((start, FINE))
    return ranges


def task_inputs(store: ArtifactStore, sig_manifests: list[dict], offsets: list[int], table: str, p0: int,
                p1: int) -> list[tuple[list[str], int, list[tuple[int, int]]]]:
    """What a task of fine partitions [p0, p1) of `table` reads, per shard that has rows there:
    (the table's part files, the shard's first global index, the row ranges (one per sorted run))."""
    out = []
    for shard, m in enumerate(sig_manifests):
        ranges = [(run[p0], run[p1]) for run in m["stats"]["partition_offsets"][table] if run[p1] > run[p0]]
        if ranges:
            out.append(([str(p) for p in store.paths(m, table)], offsets[shard], ranges))
    return out


def read_rows(paths: list[str], lo: int, hi: int) -> pa.Table | None:
    """Rows [lo, hi) of a table (over its part files, in order), reading only the row groups that hold them."""
    out, base = [], 0
    for path in paths:
        f = pq.ParquetFile(path)
        for g in range(f.metadata.num_row_groups):
            n = f.metadata.row_group(g).num_rows
            if base < hi and base + n > lo:
                t = f.read_row_group(g)
                out.append(t.slice(max(lo - base, 0), min(hi, base + n) - max(lo, base)))
            base += n
            if base >= hi:
                return pa.concat_tables(out) if out else None
    return pa.concat_tables(out) if out else None


def read_task(inputs: list[tuple[list[str], int, list[tuple[int, int]]]], columns: list[str]
              ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(columns, global record index) of every row a task reads (`task_inputs`), in shard order
    and, within a shard, in row order."""
    cols: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    idx = []
    for paths, first, ranges in inputs:
        for lo, hi in ranges:
            t = read_rows(paths, lo, hi)
            for c in columns:
                cols[c].append(t.column(c).to_numpy())
            idx.append(t.column("row").to_numpy().astype(np.int64) + first)
    if not idx:
        return {c: np.empty(0, np.uint64) for c in columns}, np.empty(0, np.int64)
    return {c: np.concatenate(v) for c, v in cols.items()}, np.concatenate(idx)


def repeated(keys: np.ndarray) -> np.ndarray:
    """True for the keys (uint64) that occur at least twice (`kernels.repeated_keys`)."""
    size = 1 << max(int(2 * len(keys)).bit_length(), 4)
    return aot.load().repeated_keys(np.ascontiguousarray(keys, np.uint64), np.empty(size, np.uint64),
                                    np.empty(size, np.uint8))


def _runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of every run of equal values."""
    n = len(sorted_keys)
    if not n:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    change = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate([[0], change])
    return starts, np.diff(np.concatenate([starts, [n]]))


def exact_task(inputs: list) -> tuple[np.ndarray, np.ndarray]:
    """(member, group) of every record in an exact group of two or more (equal 128-bit keys)
    among the rows of a task of `dedup_exact` (`task_inputs`): members sorted by group then
    record; groups numbered from 0 in key order within the task."""
    cols, idx = read_task(inputs, ["hi", "lo"])
    sel = repeated(cols["hi"])  # the few keys seen twice, found in linear time; then sorted
    hi, lo, idx = cols["hi"][sel], cols["lo"][sel], idx[sel]
    order = np.lexsort((idx, lo, hi))
    hi, lo, idx = hi[order], lo[order], idx[order]
    new = np.ones(len(idx), bool)
    new[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    gid = np.cumsum(new) - 1
    size = np.bincount(gid)[gid] if len(gid) else np.empty(0, np.int64)
    keep = size > 1
    g = gid[keep]
    return idx[keep], (np.unique(g, return_inverse=True)[1] if len(g) else g).astype(np.int64)


def bucket_pairs(members: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (a < b) of buckets (members[starts[j]:starts[j]+sizes[j]], each sorted):
    every pair in buckets of up to SMALL_BUCKET, a star from the first member plus a chain in
    larger ones."""
    a, b = [], []
    small = sizes <= SMALL_BUCKET
    for k in range(2, SMALL_BUCKET + 1):  # all pairs, per bucket size at once
        s = starts[small & (sizes == k)]
        if not len(s):
            continue
        i, j = np.triu_indices(k, 1)
        a.append(members[s[:, None] + i[None, :]].ravel())
        b.append(members[s[:, None] + j[None, :]].ravel())
    for s, n in zip(starts[~small].tolist(), sizes[~small].tolist()):
        m = members[s : s + n]
        a += [np.full(n - 1, m[0]), m[1:-1]]
        b += [m[1:], m[2:]]
    if not a:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(a), np.concatenate(b)


def band_task(inputs: list) -> tuple[np.ndarray, np.ndarray]:
    """(key, record) of the rows of a task of `dedup_bands` (`task_inputs`) whose band key occurs
    more than once there: the buckets, in record order (a number proportional to the duplicates)."""
    cols, idx = read_task(inputs, ["key"])
    sel = repeated(cols["key"])  # only keys seen twice make buckets: found in linear time
    return cols["key"][sel], idx[sel]


def candidate_pairs(keys: np.ndarray, idx: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Candidate pairs of the bucket rows `band_task` found (tasks concatenated): records (not in
    the sorted `excluded`) sharing a band key, as sorted unique pair codes a * 2**32 + b (a < b)."""
    if len(excluded) and len(idx):  # excluded records leave their buckets (some then hold one record)
        pos = np.searchsorted(excluded, idx)
        hit = excluded[np.minimum(pos, len(excluded) - 1)] == idx
        keys, idx = keys[~hit], idx[~hit]
    order = np.argsort(keys, kind="stable")  # a key's rows are one task's, in record order: buckets stay sorted
    keys, idx = keys[order], idx[order]
    starts, sizes = _runs(keys)
    multi = sizes > 1
    a, b = bucket_pairs(idx, starts[multi], sizes[multi])
    return np.unique(pair_codes(a, b))


def pair_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * 2**32 + b of record pairs (a < b < 2**31)."""
    return (a.astype(np.int64) << 32) | b.astype(np.int64)


def split_codes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return codes >> 32, codes & 0xFFFFFFFF
