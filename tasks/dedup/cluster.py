"""Step `dedup`: exact groups, LSH candidate pairs, verification, clusters, one kept per cluster.

Reads only the `dedup_signatures` tables, never the records: ids, keys and band keys to find
candidates, the shingle hashes (verify: exact) or signatures (estimate) of candidate records
only, and the origin and text prefix of the removed ones for their `rejects`. The kept rows
are not copied: `dedup_removed` lists where each removed row sits in the convert shards,
and `survivors()` streams the convert shards without them (what `split` reads).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tasks.config import DedupConfig, Recipe
from tasks.dedup import aot
from tasks.dedup.signatures import TABLE as SIG_TABLE
from tasks.dedup.signatures import lsh_params
from tasks.errors import TunelineError
from tasks.schema import REJECTS
from tasks.step import input_ref, logger, run_step
from tasks.store import ArtifactStore

STEP = "dedup"
VERSION = 3  # 3: template variants are of one source; 2: kept rows are not copied (dedup_removed + survivors())
#: Buckets up to this size give all their pairs; larger ones a star plus a chain (linear).
SMALL_BUCKET = 16
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

META_COLUMNS = ["record_id", "source", "example_id", "template_id", "n_turns", "n_chars", "exact_key", "n_shingles"]


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


def _load_meta(store: ArtifactStore, shards: list[tuple[dict, dict]], priorities: dict[str, int]) -> pl.DataFrame:
    """One row per record over all shards: ids, keys, keep-rule columns, global `idx`."""
    frames = []
    for shard, (conv, sig) in enumerate(shards):
        files = store.paths(sig, SIG_TABLE)
        df = pl.concat([pl.read_parquet(f, columns=META_COLUMNS) for f in files]) if files else None
        n_records = sum(p["rows"] for p in conv.get("tables", {}).get("records", []))
        if (0 if df is None else df.height) != n_records:
            raise TunelineError(
                f"dedup: {sig['dir']}/{SIG_TABLE} has {0 if df is None else df.height} rows but "
                f"{conv['dir']}/records has {n_records}; rebuild the signatures"
            )
        if df is not None:
            frames.append(df.with_columns(shard=pl.lit(shard, pl.Int32), row=pl.int_range(df.height, dtype=pl.Int64)))
    if not frames:
        return pl.DataFrame(schema={c: pl.String for c in META_COLUMNS})
    meta = pl.concat(frames).with_row_index("idx").with_columns(pl.col("idx").cast(pl.Int64))
    prio = pl.DataFrame({"source": list(priorities), "priority": list(priorities.values())},
                        schema={"source": pl.String, "priority": pl.Int64})
    return meta.join(prio, on="source", how="left", maintain_order="left").with_columns(
        pl.col("priority").fill_null(0),
        pl.col("n_turns").fill_null(0),
        pl.col("n_chars").fill_null(0),
    )


def _keep_rank(meta: pl.DataFrame) -> np.ndarray:
    """rank[idx]: 0 is the record a cluster keeps first. Source priority (higher wins),
    then more turns, then more characters, then the smallest record_id."""
    order = meta.sort(
        ["priority", "n_turns", "n_chars", "record_id", "idx"],
        descending=[True, True, True, False, False],
        nulls_last=True,
    )["idx"].to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _codes(series: pl.Series, empty_is_null: bool = True) -> np.ndarray:
    """Dense integer codes of a string column; -1 for null (and, by default, empty strings)."""
    s = series
    if empty_is_null:
        s = pl.select(pl.when(s == "").then(None).otherwise(s).alias("s"))["s"]
    return s.rank("dense").fill_null(0).to_numpy().astype(np.int64) - 1


# -- exact stage -------------------------------------------------------------------------
def _exact_edges(meta: pl.DataFrame, rank: np.ndarray, scope_code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(member, group representative) for every non-representative of an exact group."""
    ex = meta.select("idx", "exact_key").with_columns(
        scope=pl.Series(scope_code), rank=pl.Series(rank)
    ).filter(pl.col("exact_key").is_not_null())
    reps = ex.group_by(["scope", "exact_key"]).agg(rep=pl.col("idx").sort_by("rank").first())
    ex = ex.join(reps, on=["scope", "exact_key"]).filter(pl.col("idx") != pl.col("rep"))
    return ex["idx"].to_numpy(), ex["rep"].to_numpy()


# -- LSH candidate stage ------------------------------------------------------------------
def _load_band_keys(store: ArtifactStore, shards: list[tuple[dict, dict]], bands: int) -> np.ndarray:
    col = store.read([sig for _, sig in shards], SIG_TABLE, ["band_keys"]).column("band_keys").combine_chunks()
    # records without shingles have null band keys (never compared): 0 keeps the dtype
    return col.values.fill_null(0).to_numpy().reshape(-1, bands) if len(col) else np.empty((0, bands), np.uint64)


def _bucket_pairs(groups: pl.DataFrame) -> pl.DataFrame:
    """Candidate pairs (a < b) of buckets: all pairs in small buckets, star + chain in large ones."""
    groups = groups.with_row_index("gid").with_columns(n=pl.col("members").list.len())
    small = groups.filter(pl.col("n") <= SMALL_BUCKET).select("gid", idx="members").explode("idx")
    allp = small.join(small, on="gid", suffix="_b").filter(pl.col("idx") < pl.col("idx_b"))
    allp = allp.select(a="idx", b="idx_b")
    large = groups.filter(pl.col("n") > SMALL_BUCKET)
    star = large.select(a=pl.col("members").list.first(), b=pl.col("members").list.slice(1)).explode("b")
    chain = large.select(
        a=pl.col("members").list.slice(1, pl.col("n") - 2), b=pl.col("members").list.slice(2)
    ).explode("a", "b")
    return pl.concat([allp, star, chain.drop_nulls()])


def _candidate_pairs(nodes: np.ndarray, scope_code: np.ndarray, bkeys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of LSH nodes that share a band key (and a scope), deduplicated, a < b."""
    if len(nodes) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    scope = scope_code[nodes]
    salt = scope.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # other scope, other bucket
    gids, members, first_gid = [], [], 0
    for j in range(bkeys.shape[1]):  # buckets of one band: runs of equal keys once sorted
        key = bkeys[nodes, j] ^ salt
        order = np.argsort(key)
        key = key[order]
        gid = np.cumsum(np.r_[True, key[1:] != key[:-1]]) - 1
        shared = np.bincount(gid)[gid] > 1
        gids.append(gid[shared] + first_gid)
        members.append(nodes[order[shared]])
        first_gid += int(gid[-1]) + 1
    buckets = pl.DataFrame({"gid": np.concatenate(gids), "idx": np.concatenate(members)})
    if not buckets.height:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pairs = _bucket_pairs(buckets.group_by("gid").agg(members=pl.col("idx").sort()).select("members"))
    pairs = pairs.unique().sort(["a", "b"])
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    same = scope_code[a] == scope_code[b]  # a salted-key collision across scopes (p ~ 2**-64)
    return a[same], b[same]


def _example_codes(meta: pl.DataFrame) -> np.ndarray:
    """Dense codes of (source, example_id); -1 where example_id is empty. Template variants are
    renderings of one example by one source: the same example in two sources is duplicate data."""
    key = meta.select(pl.when(pl.col("example_id").fill_null("") == "").then(None)
                      .otherwise(pl.concat_str([pl.col("source").fill_null(""), pl.col("example_id")],
                                               separator="\x1f")).alias("k"))["k"]
    return _codes(key)


def _variant_mask(a: np.ndarray, b: np.ndarray, ex_code: np.ndarray, tpl_code: np.ndarray) -> np.ndarray:
    """True where a and b are template variants: same source and example_id, different template_id."""
    return (ex_code[a] >= 0) & (ex_code[a] == ex_code[b]) & (tpl_code[a] != tpl_code[b])


def _by_shard(idx: np.ndarray, offsets: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """(shard, its first global idx, rows within the shard) for every shard, of sorted global
    record indices `idx`; `offsets[k]` is shard k's first global idx."""
    bounds = np.searchsorted(idx, offsets)
    return [(k, int(offsets[k]), idx[bounds[k] : bounds[k + 1]] - offsets[k]) for k in range(len(offsets) - 1)]


# -- verification --------------------------------------------------------------------------
class Verifier:
    """Jaccard of record pairs: exact over the sets of shingle hashes, or estimated from the
    signatures (the share of equal slots); both read from `dedup_signatures`, only for the
    records asked for. Exact: each record's hashes sorted once, pairs merged by a compiled loop
    (`kernels.jaccard_pairs`)."""

    def __init__(self, store: ArtifactStore, shards: list[tuple[dict, dict]], offsets: np.ndarray, cfg: DedupConfig):
        self.store, self.shards, self.offsets, self.cfg = store, shards, offsets, cfg
        self.ids = np.empty(0, np.int64)  # sorted global indices loaded
        self.values = np.empty(0, np.uint32)  # exact: their hashes, each record's sorted; estimate: signatures
        self.bounds = np.zeros(1, np.int64)  # exact: record j is values[bounds[j]:bounds[j+1]]

    def load(self, idx: np.ndarray) -> None:
        need = np.setdiff1d(np.unique(idx), self.ids)
        if not len(need):
            return
        column = "signature" if self.cfg.verify == "estimate" else "shingles"
        parts, sizes = [], []
        for shard, base, rows in _by_shard(need, self.offsets):
            if not len(rows):
                continue
            col = self.store.take(self.shards[shard][1], SIG_TABLE, rows, [column]).column(0).combine_chunks()
            if column == "signature":  # fixed-size binary: num_perm little-endian uint32s per record
                parts.append(np.frombuffer(col.buffers()[1], "<u4", len(rows) * self.cfg.num_perm,
                                           4 * self.cfg.num_perm * col.offset))
                sizes.append(np.full(len(rows), self.cfg.num_perm, np.int64))
            else:
                _, offsets, data = col.buffers()
                ends = np.frombuffer(offsets, np.int64)[col.offset : col.offset + len(rows) + 1] // 4
                parts.append(np.frombuffer(data, "<u4", ends[-1] - ends[0], 4 * ends[0]) if ends[-1] > ends[0]
                             else np.empty(0, np.uint32))
                sizes.append(np.diff(ends))
        new_values = np.concatenate(parts).astype(np.uint32)  # a copy: sorted in place below
        new_bounds = np.zeros(len(need) + 1, np.int64)
        np.cumsum(np.concatenate(sizes), out=new_bounds[1:])
        if column == "shingles":
            aot.load().sort_segments(new_values, new_bounds)
        ids = np.concatenate([self.ids, need])
        order = np.argsort(ids, kind="stable")
        sizes_all = np.concatenate([np.diff(self.bounds), np.diff(new_bounds)])[order]
        starts_all = np.concatenate([self.bounds[:-1], new_bounds[:-1] + len(self.values)])[order]
        values = np.concatenate([self.values, new_values])
        self.values = np.concatenate([values[s:s + n] for s, n in zip(starts_all.tolist(), sizes_all.tolist())]) \
            if len(self.ids) else new_values
        self.ids = ids[order]
        self.bounds = np.zeros(len(self.ids) + 1, np.int64)
        np.cumsum(sizes_all, out=self.bounds[1:])

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.load(np.concatenate([a, b]))
        ia, ib = np.searchsorted(self.ids, a), np.searchsorted(self.ids, b)
        if self.cfg.verify == "estimate":
            sig = self.values.reshape(-1, self.cfg.num_perm)
            out = np.empty(len(a), np.float64)
            for s in range(0, len(a), PAIR_CHUNK):
                out[s : s + PAIR_CHUNK] = (sig[ia[s : s + PAIR_CHUNK]] == sig[ib[s : s + PAIR_CHUNK]]).mean(axis=1)
            return out
        return aot.load().jaccard_pairs(self.values, self.bounds, ia.astype(np.int64), ib.astype(np.int64))


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
    sim = np.ones(len(members), np.float64)
    near = np.flatnonzero((members != kept_of) & ~is_exact)
    if len(near):
        sim[near] = verifier.similarity(proxy[members[near]], kept_of[near])
    return sim


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


def _write_removed(writer, store, shards, offsets, removed, related, reason, sim, meta) -> None:
    """`dedup_removed` (where each removed row sits in the convert shards) and `rejects`
    (one row per removed record, with the record it duplicates), both from the signature
    tables. The kept rows are not copied: `survivors()` reads them from the convert shards."""
    gone = np.flatnonzero(removed)
    writer.write("dedup_removed", REMOVED, pa.table({
        "shard": meta["shard"].gather(gone).to_arrow(),
        "row": meta["row"].gather(gone).to_arrow(),
        "record_id": meta["record_id"].gather(gone).to_arrow(),
    }))
    columns = ["record_id", "source", "origin_file", "origin_row", "raw_prefix"]
    found = pa.concat_tables([store.take(shards[shard][1], SIG_TABLE, rows, columns)
                              for shard, _, rows in _by_shard(gone, offsets)])
    n = len(gone)
    writer.write("rejects", REJECTS, pa.table({
        "step": pa.array([STEP] * n, pa.string()),
        "reason": pa.array(reason[gone].tolist(), pa.string()),
        "detail": pa.array([f"jaccard {x:.3f} to kept record" for x in sim[gone].tolist()], pa.string()),
        **{c: found.column(c) for c in ("source", "origin_file", "origin_row", "record_id")},
        "related_id": meta["record_id"].gather(related[gone]).to_arrow(),
        "raw_prefix": found.column("raw_prefix"),
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


def _run(writer, store: ArtifactStore, shards, cfg: DedupConfig, priorities: dict[str, int]) -> None:
    log = logger()
    bands, rows = lsh_params(cfg)
    meta = _load_meta(store, shards, priorities)
    n = meta.height
    if n == 0:
        _pass_through(writer, shards)
        writer.stats["enabled"] = True
        return
    counts = np.bincount(meta["shard"].to_numpy(), minlength=len(shards))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    rank = _keep_rank(meta)
    src_code = _codes(meta["source"], empty_is_null=False)
    scope_code = src_code if cfg.scope == "within_source" else np.zeros(n, np.int64)
    ex_code = _example_codes(meta)
    tpl_code = _codes(meta["template_id"])
    key_code = _codes(meta["exact_key"])
    keep_variants = cfg.template_variants == "keep"

    # 1. exact duplicates: every member points at its group's best-ranked record.
    ea, eb = _exact_edges(meta, rank, scope_code)
    if keep_variants:
        ok = ~_variant_mask(ea, eb, ex_code, tpl_code)
        ea, eb = ea[ok], eb[ok]
    proxy = np.arange(n)
    proxy[ea] = eb  # same normalised text, same shingles
    # 2. LSH candidates among the records left, verified.
    has_exact_edge = np.zeros(n, bool)
    has_exact_edge[ea] = True
    nodes = np.flatnonzero((meta["n_shingles"].to_numpy() > 0) & ~has_exact_edge)
    bkeys = _load_band_keys(store, shards, bands)
    ca, cb = _candidate_pairs(nodes, scope_code, bkeys)
    del bkeys
    if keep_variants:
        ok = ~_variant_mask(ca, cb, ex_code, tpl_code)
        ca, cb = ca[ok], cb[ok]
    verifier = Verifier(store, shards, offsets, cfg)
    csim = verifier.similarity(ca, cb) if len(ca) else np.empty(0)
    near = csim >= cfg.threshold
    log.info(f"dedup: {len(ea):,} exact edges, {len(ca):,} candidate pairs, {int(near.sum()):,} verified")
    # 3. clusters (connected components = union-find over all edges), keep rule.
    a = np.concatenate([ea, ca[near]])
    b = np.concatenate([eb, cb[near]])
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    members, kept_of = _choose_kept(labels, rank, ex_code, tpl_code, keep_variants)
    is_kept = members == kept_of
    is_exact = (key_code[members] >= 0) & (key_code[members] == key_code[kept_of])
    sim = _similarities(members, kept_of, is_exact, proxy, verifier)

    removed = np.zeros(n, bool)
    removed[members[~is_kept]] = True
    related = np.arange(n)
    related[members] = kept_of
    reason = np.full(n, None, object)
    reason[members[~is_kept & is_exact]] = "exact_duplicate"
    reason[members[~is_kept & ~is_exact]] = "near_duplicate"
    simg = np.ones(n)
    simg[members] = sim

    # cluster ids: clusters ordered by the record_id of their best-ranked kept record.
    lab = labels[members]
    first = np.r_[True, lab[1:] != lab[:-1]] if len(lab) else np.empty(0, bool)
    head_ids = meta["record_id"].gather(members[first]).to_numpy()
    cluster_of_label = np.zeros(labels.max() + 1, np.int64)
    cluster_of_label[lab[first]] = np.argsort(np.argsort(head_ids, kind="stable"), kind="stable")
    clusters = pa.table(
        {
            "cluster_id": cluster_of_label[lab],
            "record_id": meta["record_id"].gather(members).to_arrow(),
            "is_kept": is_kept,
            "kept_record_id": meta["record_id"].gather(kept_of).to_arrow(),
            "similarity": sim,
            "source": meta["source"].gather(members).to_arrow(),
            "reason": pa.array(reason[members].tolist(), pa.string()),
        }
    )
    writer.write("dedup_clusters", CLUSTERS, clusters.sort_by([("cluster_id", "ascending"),
                                                               ("is_kept", "descending"),
                                                               ("record_id", "ascending")]))
    _write_removed(writer, store, shards, offsets, removed, related, reason, simg, meta)

    per_source = (
        pl.DataFrame({"source": meta["source"],
                      "exact": reason == "exact_duplicate", "near": reason == "near_duplicate"})
        .group_by("source").agg(rows_in=pl.len(), exact=pl.col("exact").sum(), near=pl.col("near").sum())
        .sort("source")
    )
    stats = writer.stats
    stats.update(
        rows_in=n, rows_out=int(n - removed.sum()), rows_rejected=int(removed.sum()),
        exact_removed=int((reason == "exact_duplicate").sum()), near_removed=int((reason == "near_duplicate").sum()),
        clusters=int(first.sum()), candidate_pairs=int(len(ca)), verified_pairs=int(near.sum()),
        bands=bands, rows=rows, num_perm=cfg.num_perm, threshold=cfg.threshold, shingle=cfg.shingle,
        shingle_size=cfg.shingle_size, seed=cfg.seed, projection=cfg.projection, scope=cfg.scope,
        verify=cfg.verify, template_variants=cfg.template_variants, enabled=True,
        per_source={r["source"]: {k: r[k] for k in ("rows_in", "exact", "near")} for r in per_source.iter_rows(named=True)},
    )
    stats["report_markdown"] = _report(per_source, stats)


def dedup(root: str, recipe: dict, convert_manifests: list[dict], signature_manifests: list[dict]) -> dict:
    """Step `dedup` over all convert shards; returns its manifest (tables dedup_clusters,
    dedup_removed, rejects; `survivors()` reads the kept records through it)."""
    rec = Recipe.model_validate(recipe)
    cfg = rec.dedup
    store = ArtifactStore(root)
    shards = _pair_shards(convert_manifests, signature_manifests)
    priorities = {s.name: s.priority for s in rec.sources}
    inputs = {"shards": [[input_ref(c), input_ref(s)] for c, s in shards]}
    config = {**cfg.model_dump(), "priorities": priorities}

    def body(writer):
        if cfg.enabled:
            _run(writer, store, shards, cfg, priorities)
        else:
            _pass_through(writer, shards)

    return run_step(store, STEP, VERSION, inputs, config, "dedup", body)
