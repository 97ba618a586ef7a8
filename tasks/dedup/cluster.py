"""Step `dedup`: exact groups, LSH candidate pairs, verification, clusters, one kept per cluster.

Out of core: the band keys and exact keys are on disk, partitioned by key
(`tasks.dedup.partitions`), and read one task (a range of partitions) at a time; each task
returns only what it found (exact groups, candidate pairs), so the step's memory is one task's
keys plus what is proportional to the duplicates (their ids, keep-rule columns, shingle
hashes), never N records. Tasks run on a thread per core, one after another, or on a Dask
cluster (`mapper`, `tasks.dedup.mapper`), with the same results.

Reads the partitions and, of the records in an exact group or a candidate pair only (a
number proportional to the duplicates): their keep-rule columns from `dedup_signatures`, and
their text from the convert shards' `records`, of which `signatures.fetch` re-makes the
shingle hashes (`verify: exact`; `estimate` reads their signatures instead), the prefix a
reject shows and the origin. The kept rows are not copied: `dedup_removed` lists where each
removed row sits in the convert shards, and `survivors()` streams the convert shards without
them (what `split` reads).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tasks.config import DedupConfig, Recipe, as_recipe
from tasks.dedup import aot
from tasks.dedup.mapper import Mapper, auto_mapper, local_map
from tasks.dedup.partitions import (
    BANDS_TABLE,
    EXACT_TABLE,
    band_task,
    candidate_pairs,
    exact_task,
    split_codes,
    task_inputs,
    task_ranges,
)
from tasks.dedup.signatures import TABLE as SIG_TABLE
from tasks.dedup.signatures import fetch, lsh_params
from tasks.errors import TunelineError
from tasks.schema import REJECTS
from tasks.step import input_ref, logger, run_step
from tasks.store import ArtifactStore, take_rows

STEP = "dedup"
VERSION = 4  # 4: out of core (partitioned keys, tasks); 3: template variants are of one source; 2: kept rows are not copied (dedup_removed + survivors())
PAIR_CHUNK = 200_000

CLUSTERS = pa.schema(
    [
        ("cluster_id", pa.int64()),
        ("record_id", pa.string()),
        ("is_kept", pa.bool_()),
        ("kept_record_id", pa.string()),
        ("similarity", pa.float64()),  # Jaccard to kept_record_id (1.0 for exact and kept rows)
        ("source", pa.string()),
        ("reason", pa.string()),  # null for kept rows
    ]
)

REMOVED = pa.schema([("shard", pa.int32()), ("row", pa.int64()), ("record_id", pa.string())])

META_COLUMNS = ["record_id", "source", "example_id", "template_id", "n_turns", "n_chars", "exact_key"]
# -- inputs ----------------------------------------------------------------------------
def _pair_shards(convert_manifests: list[dict], signature_manifests: list[dict]) -> list[tuple[dict, dict]]:
    by_input = {m["inputs"]["records"]["key"]: m for m in signature_manifests}
    out = []
    for c in convert_manifests:
        s = by_input.get(c["key"])
        if s is None:
            raise TunelineError(f"dedup: convert shard {c.get('label', c['key'])} has no dedup-signatures manifest")
        out.append((c, s))
    return out


def _shard_offsets(shards: list[tuple[dict, dict]]) -> np.ndarray:
    """Global index of each shard's first record (and the total), checking that every signature
    table has its convert shard's rows."""
    counts = []
    for conv, sig in shards:
        n_records = sum(p["rows"] for p in conv.get("tables", {}).get("records", []))
        n_sig = sum(p["rows"] for p in sig.get("tables", {}).get(SIG_TABLE, []))
        if n_sig != n_records:
            raise TunelineError(
                f"dedup: {sig['dir']}/{SIG_TABLE} has {n_sig} rows but "
                f"{conv['dir']}/records has {n_records}; rebuild the signatures"
            )
        counts.append(n_records)
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)


def _by_shard(idx: np.ndarray, offsets: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """(shard, its first global idx, rows within the shard) for every shard, of sorted global
    record indices `idx`; `offsets[k]` is shard k's first global idx."""
    bounds = np.searchsorted(idx, offsets)
    return [(k, int(offsets[k]), idx[bounds[k] : bounds[k + 1]] - offsets[k]) for k in range(len(offsets) - 1)]


def meta_task(paths: list[str], rows: np.ndarray) -> pa.Table:
    """`META_COLUMNS` of rows `rows` (sorted) of a shard's `dedup_signatures` (its part files)."""
    return pa.concat_tables(take_rows(paths, rows, META_COLUMNS)[0])


def _key_task(fn, inputs):
    return fn(inputs)


class Meta:
    """Keep-rule and identity columns (`META_COLUMNS`, source priority) of the records the
    clustering touches, read from `dedup_signatures` when first needed: a frame sorted by the
    records' global index `idx`."""

    def __init__(self, store: ArtifactStore, shards: list[tuple[dict, dict]], offsets: np.ndarray,
                 priorities: dict[str, int]):
        self.store, self.shards, self.offsets, self.priorities = store, shards, offsets, priorities
        self.idx = np.empty(0, np.int64)
        self.df = pl.DataFrame(schema={**{c: pl.String for c in META_COLUMNS}, "n_turns": pl.Int32,
                                       "n_chars": pl.Int64, "idx": pl.Int64, "priority": pl.Int64})

    def load(self, idx: np.ndarray, mapper: Mapper = local_map) -> None:
        """Read the rows of records `idx` not read yet (a `meta_task` per shard, on `mapper`)."""
        need = np.setdiff1d(np.unique(idx), self.idx)
        if not len(need):
            return
        jobs = [(shard, base, rows) for shard, base, rows in _by_shard(need, self.offsets) if len(rows)]
        tables = mapper(meta_task, [([str(p) for p in self.store.paths(self.shards[k][1], SIG_TABLE)], rows)
                                    for k, _, rows in jobs])
        parts = [pl.from_arrow(t).with_columns(idx=pl.Series(rows + base, dtype=pl.Int64))
                 for (_, base, rows), t in zip(jobs, tables)]
        prio = pl.DataFrame({"source": list(self.priorities), "priority": list(self.priorities.values())},
                            schema={"source": pl.String, "priority": pl.Int64})
        new = pl.concat(parts).join(prio, on="source", how="left", maintain_order="left").with_columns(
            pl.col("priority").fill_null(0), pl.col("n_turns").fill_null(0), pl.col("n_chars").fill_null(0))
        self.df = pl.concat([self.df, new.select(self.df.columns)], how="vertical_relaxed").sort("idx")
        self.idx = self.df["idx"].to_numpy()

    def of(self, idx: np.ndarray) -> pl.DataFrame:
        """The rows of records `idx`, in that order (read first if needed)."""
        self.load(idx)
        return self.df[np.searchsorted(self.idx, idx)]


def _keep_rank(frame: pl.DataFrame) -> np.ndarray:
    """rank[i] of the frame's records: 0 is the record a cluster keeps first. Source priority
    (higher wins), then more turns, then more characters, then the smallest record_id (then
    the smallest index). Only the order matters, so ranks over any subset of the records agree
    with the ranks over all of them."""
    order = frame.with_row_index("_pos").sort(
        ["priority", "n_turns", "n_chars", "record_id", "idx"],
        descending=[True, True, True, False, False],
        nulls_last=True,
    )["_pos"].to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _codes(series: pl.Series, empty_is_null: bool = True) -> np.ndarray:
    """Dense integer codes of a string column; -1 for null (and, by default, empty strings)."""
    s = series
    if empty_is_null:
        s = pl.select(pl.when(s == "").then(None).otherwise(s).alias("s"))["s"]
    return s.rank("dense").fill_null(0).to_numpy().astype(np.int64) - 1


def _example_key(frame: pl.DataFrame) -> pl.Series:
    """(source, example_id) as one string; null where example_id is empty. Template variants are
    renderings of one example by one source: the same example in two sources is duplicate data."""
    return frame.select(pl.when(pl.col("example_id").fill_null("") == "").then(None)
                        .otherwise(pl.concat_str([pl.col("source").fill_null(""), pl.col("example_id")],
                                                 separator="\x1f")).alias("k"))["k"]


def _variant_mask(fa: pl.DataFrame, fb: pl.DataFrame) -> np.ndarray:
    """True where records a and b (rows of fa, fb) are template variants: same source and
    example_id, different template_id."""
    ea, eb = _example_key(fa), _example_key(fb)
    ta, tb = fa["template_id"].fill_null(""), fb["template_id"].fill_null("")
    return (ea.is_not_null() & (ea == eb).fill_null(False) & (ta != tb)).to_numpy()


# -- exact stage -------------------------------------------------------------------------
def _exact_edges(members: np.ndarray, groups: np.ndarray, meta: Meta) -> tuple[np.ndarray, np.ndarray]:
    """(member, group representative: its best-ranked record) for every other member of an exact group."""
    if not len(members):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rank = _keep_rank(meta.of(members))
    order = np.lexsort((rank, groups))
    m, g = members[order], groups[order]
    first = np.r_[True, g[1:] != g[:-1]]
    rep = m[np.maximum.accumulate(np.where(first, np.arange(len(m)), 0))]
    return m[~first], rep[~first]


class Fetched:
    """What `signatures.fetch` re-made of the records the clustering touches (shingle hashes,
    reject prefix, origin), by global index `ids` (sorted): record j's hashes are
    values[bounds[j]:bounds[j+1]]."""

    def __init__(self, parts: list[tuple[int, dict]]):
        parts = [(base, f) for base, f in parts if len(f["rows"])]
        self.ids = np.concatenate([f["rows"] + base for base, f in parts]) if parts else np.empty(0, np.int64)
        counts = np.concatenate([f["counts"] for _, f in parts]) if parts else np.empty(0, np.int64)
        self.bounds = np.zeros(len(self.ids) + 1, np.int64)
        np.cumsum(counts, out=self.bounds[1:])
        self.values = np.empty(int(self.bounds[-1]), np.uint32)
        at = 0
        for _, f in parts:  # each part's hashes copied in, then let go: one copy at a time
            n = len(f["hashes"])
            self.values[at : at + n] = f["hashes"]
            f["hashes"] = None
            at += n
        types = {"raw_prefix": pa.string(), "origin_file": pa.string(), "origin_row": pa.int64(), "record_id": pa.string()}
        self.columns = {c: pa.concat_arrays([f[c].cast(t) for _, f in parts]) if parts else pa.array([], t)
                        for c, t in types.items()}

    def pos(self, idx: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.ids, idx)
        if len(idx) and (pos.max() >= len(self.ids) or not np.array_equal(self.ids[pos], idx)):
            raise TunelineError("dedup: a record's shingles were not fetched")  # a bug, not bad input
        return pos


class Verifier:
    """Jaccard of record pairs: exact over the sets of shingle hashes (`Fetched`; a compiled loop
    puts one record's hashes in a hash set and probes it with the other's:
    `kernels.jaccard_pairs_hashed`), or estimated from the signatures (the share of equal slots,
    read from `dedup_signatures` for the records asked for)."""

    def __init__(self, store: ArtifactStore, shards: list[tuple[dict, dict]], offsets: np.ndarray, cfg: DedupConfig,
                 fetched: Fetched):
        self.store, self.shards, self.offsets, self.cfg, self.fetched = store, shards, offsets, cfg, fetched
        self.sig_ids, self.sigs = np.empty(0, np.int64), np.empty((0, cfg.num_perm), np.uint32)

    def _load_signatures(self, idx: np.ndarray) -> None:
        need = np.setdiff1d(np.unique(idx), self.sig_ids)
        parts = []
        for shard, base, rows in _by_shard(need, self.offsets):
            if len(rows):  # fixed-size binary: num_perm little-endian uint32s per record
                col = self.store.take(self.shards[shard][1], SIG_TABLE, rows, ["signature"]).column(0).combine_chunks()
                parts.append(np.frombuffer(col.buffers()[1], "<u4", len(rows) * self.cfg.num_perm,
                                           4 * self.cfg.num_perm * col.offset).reshape(-1, self.cfg.num_perm))
        if parts:
            ids = np.concatenate([self.sig_ids, need])
            order = np.argsort(ids)
            self.sig_ids, self.sigs = ids[order], np.concatenate([self.sigs] + parts)[order]

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.cfg.verify == "estimate":
            self._load_signatures(np.concatenate([a, b]))
            ia, ib = np.searchsorted(self.sig_ids, a), np.searchsorted(self.sig_ids, b)
            out = np.empty(len(a), np.float64)
            for s in range(0, len(a), PAIR_CHUNK):
                out[s : s + PAIR_CHUNK] = (self.sigs[ia[s : s + PAIR_CHUNK]] == self.sigs[ib[s : s + PAIR_CHUNK]]).mean(axis=1)
            return out
        f = self.fetched
        ia, ib = f.pos(a), f.pos(b)
        longest = int(np.diff(f.bounds).max(initial=1))
        size = 1 << max((4 * longest).bit_length(), 4)  # a pair's two sets fit at most half full
        return aot.load().jaccard_pairs_hashed(f.values, f.bounds, ia.astype(np.int64), ib.astype(np.int64),
                                               np.empty(size, np.uint32), np.zeros(size, np.int64))


# -- clusters and the keep rule -----------------------------------------------------------
def _choose_kept(labels: np.ndarray, rank: np.ndarray, ex_code: np.ndarray, tpl_code: np.ndarray,
                 keep_variants: bool) -> tuple[np.ndarray, np.ndarray]:
    """(members of clusters with 2+ records sorted by cluster then rank, kept_of per member).

    Each cluster keeps its best-ranked record. With `template_variants: keep`, a member
    that is a template variant of every record kept so far is kept too, so no record is
    ever removed as a duplicate of its own template variant.
    """
    sizes = np.bincount(labels)
    members = np.flatnonzero(sizes[labels] > 1)
    members = members[np.lexsort((rank[members], labels[members]))]
    lab = labels[members]
    first = np.r_[True, lab[1:] != lab[:-1]]
    kept_of = members[np.maximum.accumulate(np.where(first, np.arange(len(members)), 0))]
    if keep_variants and len(members):
        ex, tpl = ex_code[members], tpl_code[members]
        conflict = (
            pl.DataFrame({"lab": lab, "ex": ex, "tpl": tpl}).filter(pl.col("ex") >= 0)
            .group_by("lab", "ex").agg(pl.col("tpl").n_unique()).filter(pl.col("tpl") > 1)["lab"].unique()
        )
        for c in conflict.to_list():
            sel = np.flatnonzero(lab == c)
            kept: list[int] = []
            for p in sel:
                m = members[p]
                target = next((k for k in kept if not (ex_code[m] == ex_code[k] and tpl_code[m] != tpl_code[k])), None)
                if target is None:
                    kept.append(m)
                    kept_of[p] = m
                else:
                    kept_of[p] = target
    return members, kept_of


def _similarities(members, kept_of, is_exact, proxy, verifier) -> np.ndarray:
    """Jaccard of each member to the record it is kept for (1.0 for kept and exact members);
    `proxy`: per member, the record whose shingles it has (its exact group's representative)."""
    sim = np.ones(len(members), np.float64)
    near = np.flatnonzero((members != kept_of) & ~is_exact)
    if len(near):
        sim[near] = verifier.similarity(proxy[near], kept_of[near])
    return sim


def _components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the records on the edges, sorted; their component labels, numbered in the order of each
    component's smallest record)."""
    nodes = np.unique(np.concatenate([a, b]))
    m = len(nodes)
    graph = coo_matrix((np.ones(len(a), np.int8), (np.searchsorted(nodes, a), np.searchsorted(nodes, b))),
                       shape=(m, m)).tocsr()
    _, labels = connected_components(graph, directed=False)  # labels in order of first (smallest) node
    return nodes, labels


# -- output --------------------------------------------------------------------------------
def _report(per_source: pl.DataFrame, stats: dict) -> str:
    lines = [
        f"**dedup**: {stats['rows_in']:,} records in, {stats['rows_out']:,} kept, "
        f"{stats['exact_removed']:,} exact and {stats['near_removed']:,} near duplicates removed "
        f"in {stats['clusters']:,} clusters.",
        "",
        f"MinHash LSH: threshold {stats['threshold']}, num_perm {stats['num_perm']}, "
        f"{stats['bands']} bands x {stats['rows']} rows, {stats['shingle']} {stats['shingle_size']}-gram "
        f"shingles, seed {stats['seed']}, projection {stats['projection']}, scope {stats['scope']}, "
        f"verify {stats['verify']}.",
        "",
        "| source | rows in | exact removed | near removed | kept | dedup rate |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in per_source.iter_rows(named=True):
        rate = (r["exact"] + r["near"]) / r["rows_in"] if r["rows_in"] else 0.0
        lines.append(f"| {r['source']} | {r['rows_in']:,} | {r['exact']:,} | {r['near']:,} | "
                     f"{r['rows_in'] - r['exact'] - r['near']:,} | {rate:.1%} |")
    return "\n".join(lines)


def _row_group_starts(store: ArtifactStore, shards: list[tuple[dict, dict]], offsets: np.ndarray) -> np.ndarray:
    """Global index of the first record of every row group of the shards' `dedup_signatures`."""
    starts = []
    for (_, sig), base in zip(shards, offsets[:-1].tolist()):
        for path in store.paths(sig, SIG_TABLE):
            md = pq.ParquetFile(path).metadata
            for g in range(md.num_row_groups):
                starts.append(base)
                base += md.row_group(g).num_rows
    return np.asarray(starts, np.int64)


def _chunked(values, type_: pa.DataType, bounds: list[int]) -> pa.ChunkedArray:
    """`values` (an Arrow array or a list) as chunks [bounds[k], bounds[k+1])."""
    values = values if isinstance(values, pa.Array) else pa.array(values, type_)
    return pa.chunked_array([values.slice(a, b - a) for a, b in zip(bounds, bounds[1:])], type_)


def _write_removed(writer, store, shards, offsets, gone, related_ids, reason, sim, sources, fetched: Fetched) -> None:
    """`dedup_removed` (where each removed row sits in the convert shards) and `rejects`
    (one row per removed record, with the record it duplicates), in record order (`gone`
    sorted). The kept rows are not copied: `survivors()` reads them from the convert shards.
    The columns read per record are chunked by signature row group, as they were when they were
    read from that table (dedup v3): Parquet's page layout follows the chunks, and the bytes
    written stay the same."""
    shard = np.searchsorted(offsets, gone, side="right") - 1
    pos = pa.array(fetched.pos(gone))
    col = {c: fetched.columns[c].take(pos) for c in fetched.columns}
    group = np.searchsorted(_row_group_starts(store, shards, offsets), gone, side="right")
    bounds = [0] + (np.flatnonzero(np.diff(group)) + 1).tolist() + [len(gone)]
    record_ids = _chunked(col["record_id"], pa.string(), bounds)
    writer.write("dedup_removed", REMOVED, pa.table({
        "shard": pa.array(shard.astype(np.int32)),
        "row": pa.array((gone - offsets[shard]).astype(np.int64)),
        "record_id": col["record_id"],
    }))
    n = len(gone)
    writer.write("rejects", REJECTS, pa.table({
        "step": pa.array([STEP] * n, pa.string()),
        "reason": pa.array(reason, pa.string()),
        "detail": pa.array([f"jaccard {x:.3f} to kept record" for x in sim.tolist()], pa.string()),
        "source": _chunked(sources, pa.string(), bounds),
        "origin_file": _chunked(col["origin_file"], pa.string(), bounds),
        "origin_row": _chunked(col["origin_row"], pa.int64(), bounds),
        "record_id": record_ids,
        "related_id": pa.array(related_ids, pa.string()),
        "raw_prefix": _chunked(col["raw_prefix"], pa.string(), bounds),
    }))


def _pass_through(writer, shards) -> None:
    n = sum(p["rows"] for conv, _ in shards for p in conv.get("tables", {}).get("records", []))
    for name, schema in (("dedup_removed", REMOVED), ("dedup_clusters", CLUSTERS), ("rejects", REJECTS)):
        writer.table(name, schema)
    writer.stats.update(rows_in=n, rows_out=n, rows_rejected=0, exact_removed=0, near_removed=0, clusters=0,
                        enabled=False, report_markdown=f"**dedup** disabled: {n:,} records passed through.")


def survivors(store: ArtifactStore, dedup_manifest: dict, columns: list[str] | None = None,
              batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
    """The records a `dedup` step kept, in order: each convert shard's `records` without the
    rows its `dedup_removed` table lists."""
    removed = store.read(dedup_manifest, "dedup_removed", ["shard", "row"])
    shard_of, row_of = (np.asarray(removed.column(c)) for c in ("shard", "row"))
    for shard, (ref, _) in enumerate(dedup_manifest["inputs"]["shards"]):
        conv = store.load(ref["step"], ref["key"], verify=False)
        if conv is None:
            raise TunelineError(f"dedup {dedup_manifest['dir']} reads {ref['step']}/{ref['key']}, which is gone "
                                f"from {store.root}; run the pipeline again from convert")
        gone = np.sort(row_of[shard_of == shard])
        pos = 0
        for batch in store.iter_batches(conv, "records", columns, batch_size):
            n = batch.num_rows
            lo, hi = np.searchsorted(gone, [pos, pos + n])
            if hi > lo:
                keep = np.ones(n, bool)
                keep[gone[lo:hi] - pos] = False
                batch = batch.filter(pa.array(keep))
            pos += n
            yield batch


def _run(writer, store: ArtifactStore, shards, recipe: Recipe, priorities: dict[str, int], mapper: Mapper) -> None:
    cfg = recipe.dedup
    log = logger()
    bands, rows = lsh_params(cfg)
    offsets = _shard_offsets(shards)
    n = int(offsets[-1])
    if n == 0:
        _pass_through(writer, shards)
        writer.stats["enabled"] = True
        return
    root, sigs, offs = str(store.root), [s for _, s in shards], offsets.tolist()
    meta = Meta(store, shards, offsets, priorities)
    keep_variants = cfg.template_variants == "keep"

    # 1. the key partitions, exact and band tasks together: exact groups and bucket rows.
    exact_ranges, band_ranges = task_ranges(sigs, EXACT_TABLE), task_ranges(sigs, BANDS_TABLE)
    found = mapper(_key_task, [(exact_task, task_inputs(store, sigs, offs, EXACT_TABLE, p0, p1))
                               for p0, p1 in exact_ranges] +
                   [(band_task, task_inputs(store, sigs, offs, BANDS_TABLE, p0, p1)) for p0, p1 in band_ranges])
    exact_found, band_found = found[: len(exact_ranges)], found[len(exact_ranges):]
    pa.default_memory_pool().release_unused()  # the tasks' Parquet buffers, when they ran here
    shift = np.cumsum([0] + [int(g.max()) + 1 if len(g) else 0 for _, g in exact_found])
    members = np.concatenate([np.empty(0, np.int64)] + [m for m, _ in exact_found]).astype(np.int64)
    groups = np.concatenate([np.empty(0, np.int64)] + [g + s for (_, g), s in zip(exact_found, shift)]).astype(np.int64)
    bucket_keys = np.concatenate([np.empty(0, np.uint64)] + [k for k, _ in band_found])
    bucket_idx = np.concatenate([np.empty(0, np.int64)] + [i for _, i in band_found]).astype(np.int64)
    meta.load(np.unique(np.concatenate([members, bucket_idx])), mapper)
    # 2. exact duplicates: every member points at its group's best-ranked record.
    ea, eb = _exact_edges(members, groups, meta)
    if keep_variants and len(ea):
        ok = ~_variant_mask(meta.of(ea), meta.of(eb))
        ea, eb = ea[ok], eb[ok]
    order = np.argsort(ea)
    ea, eb = ea[order], eb[order]  # sorted by member: the proxy lookup below
    # 3. LSH candidates among the records left, verified.
    ca, cb = split_codes(candidate_pairs(bucket_keys, bucket_idx, ea))
    if len(ca):
        fa, fb = meta.of(ca), meta.of(cb)
        ok = (fa["source"] == fb["source"]).fill_null(False).to_numpy() if cfg.scope == "within_source" else (
            np.ones(len(ca), bool))  # a salted-key collision across sources (p ~ 2**-64)
        if keep_variants:
            ok &= ~_variant_mask(fa, fb)
        ca, cb = ca[ok], cb[ok]
    # the records in an exact group or candidate pair: their shingles (re-made), prefix and origin
    needed = np.unique(np.concatenate([members, ca, cb]))
    convs = [c for c, _ in shards]
    jobs = [(k, base, rows) for k, base, rows in _by_shard(needed, offsets) if len(rows)]
    fetched = Fetched(list(zip([base for _, base, _ in jobs], mapper(fetch, [
        (root, recipe, convs[k], rows) for k, _, rows in jobs]))))
    pa.default_memory_pool().release_unused()
    verifier = Verifier(store, shards, offsets, cfg, fetched)
    csim = verifier.similarity(ca, cb) if len(ca) else np.empty(0)
    near = csim >= cfg.threshold
    log.info(f"dedup: {len(ea):,} exact edges, {len(ca):,} candidate pairs, {int(near.sum()):,} verified")
    # 4. clusters (connected components over all edges), keep rule.
    a, b = np.concatenate([ea, ca[near]]), np.concatenate([eb, cb[near]])
    nodes, labels = _components(a, b) if len(a) else (np.empty(0, np.int64), np.empty(0, np.int64))
    frame = meta.of(nodes)
    rank = _keep_rank(frame)
    ex_code, tpl_code, key_code = _codes(_example_key(frame)), _codes(frame["template_id"]), _codes(frame["exact_key"])
    local, local_kept = _choose_kept(labels, rank, ex_code, tpl_code, keep_variants)
    members, kept_of = nodes[local], nodes[local_kept]
    is_kept = members == kept_of
    is_exact = (key_code[local] >= 0) & (key_code[local] == key_code[local_kept])
    pos = np.searchsorted(ea, members)
    has_rep = (pos < len(ea)) & (ea[np.minimum(pos, max(len(ea) - 1, 0))] == members) if len(ea) else (
        np.zeros(len(members), bool))
    proxy = np.where(has_rep, eb[np.minimum(pos, max(len(ea) - 1, 0))] if len(ea) else members, members)
    sim = _similarities(members, kept_of, is_exact, proxy, verifier)
    reason = np.where(is_kept, None, np.where(is_exact, "exact_duplicate", "near_duplicate")).astype(object)

    # cluster ids: clusters ordered by the record_id of their best-ranked kept record.
    record_ids = frame["record_id"].to_numpy()
    lab = labels[local]
    first = np.r_[True, lab[1:] != lab[:-1]] if len(lab) else np.empty(0, bool)
    head_ids = record_ids[local[first]]
    cluster_of_label = np.zeros(int(labels.max()) + 1 if len(labels) else 1, np.int64)
    cluster_of_label[lab[first]] = np.argsort(np.argsort(head_ids, kind="stable"), kind="stable")
    clusters = pa.table(
        {
            "cluster_id": cluster_of_label[lab],
            "record_id": pa.array(record_ids[local].tolist(), pa.string()),
            "is_kept": is_kept,
            "kept_record_id": pa.array(record_ids[local_kept].tolist(), pa.string()),
            "similarity": sim,
            "source": pa.array(frame["source"].to_numpy()[local].tolist(), pa.string()),
            "reason": pa.array(reason.tolist(), pa.string()),
        }
    )
    writer.write("dedup_clusters", CLUSTERS, clusters.sort_by([("cluster_id", "ascending"),
                                                               ("is_kept", "descending"),
                                                               ("record_id", "ascending")]))
    gone_order = np.argsort(members[~is_kept], kind="stable")
    gone = members[~is_kept][gone_order]
    _write_removed(writer, store, shards, offsets, gone, record_ids[local_kept][~is_kept][gone_order].tolist(),
                   reason[~is_kept][gone_order].tolist(), sim[~is_kept][gone_order],
                   frame["source"].to_numpy()[local][~is_kept][gone_order].tolist(), fetched)

    rows_in: dict[str, int] = {}
    for sig in sigs:
        for src, c in sig["stats"].get("sources", {}).items():
            rows_in[src] = rows_in.get(src, 0) + c
    removed_src = frame["source"].to_numpy()[local][~is_kept]
    removed_reason = reason[~is_kept]
    per_source = pl.DataFrame({
        "source": list(rows_in), "rows_in": list(rows_in.values()),
        "exact": [int(((removed_src == s) & (removed_reason == "exact_duplicate")).sum()) for s in rows_in],
        "near": [int(((removed_src == s) & (removed_reason == "near_duplicate")).sum()) for s in rows_in],
    }, schema={"source": pl.String, "rows_in": pl.Int64, "exact": pl.Int64, "near": pl.Int64}).sort("source")
    n_removed = int((~is_kept).sum())
    stats = writer.stats
    stats.update(
        rows_in=n, rows_out=n - n_removed, rows_rejected=n_removed,
        exact_removed=int((removed_reason == "exact_duplicate").sum()),
        near_removed=int((removed_reason == "near_duplicate").sum()),
        clusters=int(first.sum()), candidate_pairs=int(len(ca)), verified_pairs=int(near.sum()),
        bands=bands, rows=rows, num_perm=cfg.num_perm, threshold=cfg.threshold, shingle=cfg.shingle,
        shingle_size=cfg.shingle_size, seed=cfg.seed, projection=cfg.projection, scope=cfg.scope,
        verify=cfg.verify, template_variants=cfg.template_variants, enabled=True,
        per_source={r["source"]: {k: r[k] for k in ("rows_in", "exact", "near")} for r in per_source.iter_rows(named=True)},
    )
    stats["report_markdown"] = _report(per_source, stats)


def dedup(root: str, recipe: dict, convert_manifests: list[dict], signature_manifests: list[dict],
          mapper: Mapper | None = None) -> dict:
    """Step `dedup` over all convert shards; returns its manifest (tables dedup_clusters,
    dedup_removed, rejects; `survivors()` reads the kept records through it). `mapper` runs the
    step's tasks (`tasks.dedup.mapper`; default `auto_mapper()`: on the Dask cluster of a flow
    run under prefect-dask's DaskTaskRunner, else here, on a thread per core): the artifacts are
    the same wherever they run."""
    rec = as_recipe(recipe)
    cfg = rec.dedup
    store = ArtifactStore(root)
    shards = _pair_shards(convert_manifests, signature_manifests)
    priorities = {s.name: s.priority for s in rec.sources}
    inputs = {"shards": [[input_ref(c), input_ref(s)] for c, s in shards]}
    config = {**cfg.model_dump(), "priorities": priorities}

    def body(writer):
        if cfg.enabled:
            _run(writer, store, shards, rec, priorities, mapper or auto_mapper())
        else:
            _pass_through(writer, shards)

    return run_step(store, STEP, VERSION, inputs, config, "dedup", body)
