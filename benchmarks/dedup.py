"""Benchmark of tasks/dedup against datasketch (two ways) and rensa, on synthetic records with
planted duplicates.

    .venv/bin/python benchmarks/dedup.py --sizes 300000 1000000 --workers 2

For each size N: writes N synthetic instruction records (mean ~1.7 KB, Zipf words) as
convert shards (a multiple of --workers, so the pool's workers finish together), planting
exact copies (case changed) and near copies (k words replaced) of earlier records; then,
each in a fresh subprocess so peak RSS and CPU time are its own:

* tuneline: `signatures` per shard over a ProcessPoolExecutor of --workers processes (like
  the flow's process pool), then `dedup`, whose tasks (key partitions, records to compare)
  run on the same pool (`--dedup-tasks pool`; `threads`: threads of the main process;
  `local`: one after another): the dedup phase, signatures and clustering;
* datasketch per-shingle (`plain`): one `datasketch.MinHash()` per record with `update` per
  shingle (same normalised word 5-grams; MinHashes computed over the same process pool),
  then `MinHashLSH(threshold, num_perm)` query-then-insert; candidates merged unverified;
* datasketch bulk (`bulk`): the same, the MinHashes made by `MinHash.bulk` per batch of 4,096
  records (datasketch's fastest API: the permutations vectorised over each record's shingles);
* rensa (`rensa`, one process: rensa is measured per core): the same normalised word
  5-grams as strings, `RMinHash.from_token_sets` per batch of 8,192, then
  `RMinHashDeduplicator(threshold, num_perm, use_lsh=True)` get-duplicates-then-add
  (candidates checked by rensa's estimated Jaccard), merged.

The datasketch ways run on the first min(N, --plain-max) records (their cost per record does
not depend on N: a 1M run of the per-shingle way takes 20 minutes); rensa and tuneline on all N.

Prints one JSON line per run: wall seconds, docs/s and MB/s of text (the projected text's
UTF-8 bytes), CPU seconds (process + children) and docs and MB per CPU-second (per core),
peak RSS (the process itself, its largest child, and their sum as an upper bound), recall
over planted pairs with Jaccard >= 0.9 and the false-merge rate over planted pairs with
Jaccard < 0.5; then, per N, tuneline's ratios: docs/s over each datasketch way's and per core
over rensa's.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.schema import RECORDS, record_id  # noqa: E402

VOCAB = 50_000
MAX_WORDS = 400
EDITS = np.array([1, 2, 3, 5, 8, 13, 20, 40, 80])
SOURCES = ["src_a", "src_b"]


# -- synthetic data (counter-based randomness: any record can be rebuilt from its index) --------
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a uniform 64-bit hash of a counter, vectorised."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _u(seed: int, stream: int, i: np.ndarray, t: int | np.ndarray = 0) -> np.ndarray:
    key = np.uint64(seed) * np.uint64(1_000_003) + np.uint64(stream) * np.uint64(7_777_777_777)
    return _mix(i.astype(np.uint64) * np.uint64(MAX_WORDS + 1) + np.asarray(t, np.uint64) + key)


def _vocab(seed: int):
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    lens = rng.integers(2, 10, VOCAB)
    words = np.array(["".join(rng.choice(letters, n)) + str(k % 7 if k % 11 == 0 else "") for k, n in enumerate(lens)])
    p = 1.0 / np.arange(1, VOCAB + 1) ** 1.0
    return words, np.cumsum(p / p.sum())


def plan(n: int, seed: int) -> dict[str, np.ndarray]:
    """Per record: kind (0 original, 1 exact copy, 2 near copy), target, edits. Copies sit at odd
    indices and copy an even (original) index before them, in any shard."""
    i = np.arange(n, dtype=np.int64)
    r = _u(seed, 1, i) % np.uint64(1000)
    kind = np.where((i % 2 == 1) & (r < 100), 1, np.where((i % 2 == 1) & (r < 300), 2, 0))
    half = np.maximum((i + 1) // 2, 1).astype(np.uint64)
    target = np.where(kind > 0, 2 * (_u(seed, 2, i) % half).astype(np.int64), i)
    edits = EDITS[(_u(seed, 3, i) % np.uint64(len(EDITS))).astype(np.int64)]
    return {"kind": kind, "target": target, "edits": np.where(kind == 2, edits, 0)}


def _words(seed: int, idx: np.ndarray, cdf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Word ids (len(idx) x MAX_WORDS) and lengths of the original content of records idx."""
    t = np.arange(MAX_WORDS, dtype=np.uint64)
    u = (_u(seed, 4, idx[:, None], t[None, :]) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    ids = np.searchsorted(cdf, u)
    lengths = 120 + (_u(seed, 5, idx) % np.uint64(260)).astype(np.int64)
    return np.minimum(ids, VOCAB - 1), lengths


def shard_rows(seed: int, lo: int, hi: int, pl_: dict, vocab, cdf) -> list[dict]:
    idx = np.arange(lo, hi, dtype=np.int64)
    kind, target, edits = pl_["kind"][lo:hi], pl_["target"][lo:hi], pl_["edits"][lo:hi]
    ids, lengths = _words(seed, target, cdf)
    for e in np.unique(edits[edits > 0]):  # near copies: replace `e` words at hashed positions
        rows = np.flatnonzero(edits == e)
        for k in range(int(e)):
            pos = (_u(seed, 6, idx[rows], k) % lengths[rows].astype(np.uint64)).astype(np.int64)
            ids[rows, pos] = (_u(seed, 7, idx[rows], k) % np.uint64(VOCAB)).astype(np.int64)
    out = []
    for j in range(len(idx)):
        w = vocab[ids[j, : lengths[j]]]
        cut = max(5, lengths[j] // 6)
        user, answer = " ".join(w[:cut]), " ".join(w[cut:])
        if kind[j] == 1:
            user, answer = user.upper(), answer.replace(" ", "  ")  # normalisation makes them equal
        source = SOURCES[int(idx[j]) % 2]
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        out.append({
            "record_id": record_id(source, msgs, "", str(int(idx[j]))), "source": source, "task": "synthetic",
            "template_id": "", "example_id": str(int(idx[j])), "messages": msgs, "answer_choices": [],
            "origin_file": f"synthetic-{source}.jsonl", "origin_row": int(idx[j]) + 1, "n_turns": 2,
            "n_chars": len(user) + len(answer), "lang": "en", "meta": "{}",
        })
    return out


def _gen_shard(args) -> dict:
    root, seed, n, lo, hi, key = args
    from tasks.store import ArtifactStore

    vocab, cdf = _vocab(seed)
    pl_ = plan(n, seed)
    w = ArtifactStore(root).begin("convert", key, label=key)
    for s in range(lo, hi, 20_000):
        w.write("records", RECORDS, shard_rows(seed, s, min(hi, s + 20_000), pl_, vocab, cdf))
    return w.commit()


def generate(root: str, n: int, seed: int, shards: int, workers: int) -> list[dict]:
    bounds = np.linspace(0, n, shards + 1).astype(int)
    jobs = [(root, seed, n, int(bounds[k]), int(bounds[k + 1]), f"bench{n}-{k:03d}") for k in range(shards)]
    with ProcessPoolExecutor(workers) as ex:
        return list(ex.map(_gen_shard, jobs))


# -- ground truth -------------------------------------------------------------------------------
def truth_pairs(convs: list[dict], root: str, n: int, seed: int, max_pairs: int = 20_000) -> dict:
    """Planted (target, copy) pairs with their true Jaccard over the shingle-hash sets."""
    from tasks.dedup import minhash as mh
    from tasks.store import ArtifactStore

    pl_ = plan(n, seed)
    copies = np.flatnonzero(pl_["kind"] > 0)
    rng = np.random.default_rng(seed)
    if len(copies) > max_pairs:
        copies = np.sort(rng.choice(copies, max_pairs, replace=False))
    need = np.unique(np.concatenate([copies, pl_["target"][copies]]))
    store = ArtifactStore(root)
    sets, ids, pos = {}, {}, 0
    for m in convs:
        for batch in store.iter_batches(m, "records", ["record_id", "messages"]):
            take = need[(need >= pos) & (need < pos + batch.num_rows)]
            if len(take):
                sub = batch.take(take - pos)
                h, c = mh.shingle_hashes(mh.normalise_batch(sub.column("messages"), "conversation"), 5)
                ends = np.cumsum(c)
                for g, rid, e, k in zip(take, sub.column("record_id").to_pylist(), ends, c):
                    sets[int(g)], ids[int(g)] = np.unique(h[e - k : e]), rid
            pos += batch.num_rows
    jac = []
    for c in copies:
        a, b = sets[int(pl_["target"][c])], sets[int(c)]
        inter = np.intersect1d(a, b, assume_unique=True).size
        jac.append(inter / (a.size + b.size - inter))
    return {"a": [ids[int(pl_["target"][c])] for c in copies], "b": [ids[int(c)] for c in copies], "jaccard": jac}


def quality(truth: dict, same_cluster) -> dict:
    jac = np.array(truth["jaccard"])
    merged = np.array([same_cluster(a, b) for a, b in zip(truth["a"], truth["b"])])
    hi, lo = jac >= 0.9, jac < 0.5
    return {"pairs_ge_0.9": int(hi.sum()), "recall_ge_0.9": float(merged[hi].mean()) if hi.any() else None,
            "pairs_lt_0.5": int(lo.sum()), "false_merge_lt_0.5": float(merged[lo].mean()) if lo.any() else None}


# -- the two implementations ----------------------------------------------------------------------
def _recipe() -> dict:
    return {"sources": [{"name": s, "format": "dolly", "path": f"{s}.jsonl"} for s in SOURCES]}


def _sig_job(args):
    from tasks.dedup import signatures

    root, rd, m = args
    return signatures(root, rd, m)


def run_tuneline(root: str, convs: list[dict], workers: int, dedup_tasks: str) -> tuple[float, dict]:
    from tasks.dedup import dedup
    from tasks.dedup.mapper import local_map, pool_map, thread_map

    rd = _recipe()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as ex:
        sigs = list(ex.map(_sig_job, [(root, rd, m) for m in convs]))
        t1 = time.perf_counter()
        mapper = {"pool": pool_map(ex), "threads": thread_map(workers), "local": local_map}[dedup_tasks]
        m = dedup(root, rd, convs, sigs, mapper=mapper)
    t2 = time.perf_counter()
    return t2 - t0, {"signatures_s": round(t1 - t0, 2), "dedup_s": round(t2 - t1, 2), "dedup_tasks": dedup_tasks,
                     "manifest": m}


def _plain_minhashes(args):
    from datasketch import MinHash

    from tasks.dedup import minhash as mh
    from tasks.store import ArtifactStore

    root, m, limit = args
    out_ids, out_sigs = [], []
    for batch in ArtifactStore(root).iter_batches(m, "records", ["record_id", "messages"], batch_size=4096):
        if len(out_ids) >= limit:
            break
        batch = batch.slice(0, limit - len(out_ids))
        for rid, text in zip(batch.column("record_id").to_pylist(), mh.project(batch.column("messages"), "conversation")):
            words = mh.normalise(text).split(" ")
            mhash = MinHash(num_perm=128)
            for k in range(len(words) - 4):
                mhash.update(" ".join(words[k : k + 5]).encode("utf-8"))
            out_ids.append(rid)
            out_sigs.append(mhash.hashvalues)
    return out_ids, np.array(out_sigs)


def run_plain(root: str, convs: list[dict], workers: int, limits: list[int]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as ex:
        parts = list(ex.map(_plain_minhashes, [(root, m, lim) for m, lim in zip(convs, limits)]))
    t1 = time.perf_counter()
    find, lsh_s = _lsh_merge(parts)
    return time.perf_counter() - t0, {"minhash_s": round(t1 - t0, 2), "lsh_s": round(lsh_s, 2), "find": find}


def _shingle_lists(root: str, m: dict, limit: int | None, as_bytes: bool):
    """(record ids, shingle lists) of a convert shard, batch by batch: normalised word 5-grams
    (the same normalisation as tuneline's; `str.lower` for ASCII text, which equals it there)."""
    from tasks.dedup import minhash as mh
    from tasks.store import ArtifactStore

    n = 0
    for batch in ArtifactStore(root).iter_batches(m, "records", ["record_id", "messages"], batch_size=4096):
        if limit is not None and n >= limit:
            return
        if limit is not None:
            batch = batch.slice(0, limit - n)
        n += batch.num_rows
        ids, lists = batch.column("record_id").to_pylist(), []
        for text in mh.project(batch.column("messages"), "conversation"):
            w = (text.lower() if text.isascii() else mh.normalise(text)).split()
            shingles = list(map(" ".join, zip(w, w[1:], w[2:], w[3:], w[4:])))
            lists.append([x.encode("utf-8") for x in shingles] if as_bytes else shingles)
        yield ids, lists


def _bulk_minhashes(args):
    from datasketch import MinHash

    root, m, limit = args
    out_ids, out_sigs = [], []
    for ids, lists in _shingle_lists(root, m, limit, as_bytes=True):
        out_ids += ids
        out_sigs += [x.hashvalues for x in MinHash.bulk(lists, num_perm=128)]
    return out_ids, np.array(out_sigs)


def run_bulk(root: str, convs: list[dict], workers: int, limits: list[int]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as ex:
        parts = list(ex.map(_bulk_minhashes, [(root, m, lim) for m, lim in zip(convs, limits)]))
    t1 = time.perf_counter()
    find, lsh_s = _lsh_merge(parts)
    return time.perf_counter() - t0, {"minhash_s": round(t1 - t0, 2), "lsh_s": round(lsh_s, 2), "find": find}


def run_rensa(root: str, convs: list[dict]) -> tuple[float, dict]:
    import rensa

    t0 = time.perf_counter()
    dedup = rensa.RMinHashDeduplicator(threshold=0.8, num_perm=128, use_lsh=True, num_bands=16, seed=1)
    parent: dict[str, str] = {}

    def find(x):
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    minhash_s = 0.0
    for m in convs:
        for ids, lists in _shingle_lists(root, m, None, as_bytes=False):
            t = time.perf_counter()
            mhs = rensa.RMinHash.from_token_sets(lists, num_perm=128, seed=1)
            minhash_s += time.perf_counter() - t
            for rid, mhash in zip(ids, mhs):
                for other in dedup.get_duplicates(mhash):
                    parent[find(rid)] = find(other)
                dedup.add(rid, mhash)
    return time.perf_counter() - t0, {"rensa_minhash_s": round(minhash_s, 2), "find": find}


def _lsh_merge(parts):
    from datasketch import MinHash, MinHashLSH

    t = time.perf_counter()
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    parent: dict[str, str] = {}

    def find(x):
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for ids, sigs in parts:
        for rid, hv in zip(ids, sigs):
            mhash = MinHash(num_perm=128, hashvalues=hv, scheme="affine32")
            for other in lsh.query(mhash):
                parent[find(rid)] = find(other)
            lsh.insert(rid, mhash, check_duplication=False)
    return find, time.perf_counter() - t


# -- driver -------------------------------------------------------------------------------------
def _rss_mb() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"rss_self_mb": round(own), "rss_child_max_mb": round(child)}


def _cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _text_bytes(root: str, convs: list[dict]) -> list[list[int]]:
    """UTF-8 bytes of every record's projected text (the conversation), per shard."""
    from tasks.dedup import minhash as mh
    from tasks.store import ArtifactStore

    import pyarrow.compute as pc

    out = []
    for m in convs:
        sizes = []
        for batch in ArtifactStore(root).iter_batches(m, "records", ["messages"]):
            sizes += pc.binary_length(mh.project_arrow(batch.column("messages"), "conversation")).to_pylist()
        out.append(sizes)
    return out


def one(args) -> None:
    """Run one implementation on one prepared data set (a subprocess of `main`)."""
    import shutil

    # Imported and used once before the pool forks, so the workers start as warm as the flow's
    # task runner workers are when they reach dedup (ingest and convert ran there before):
    # Prefect's run logger and pyarrow's first pa.array() (which imports pandas) are loaded.
    # The numba kernels are not: each worker loads them itself, as in the flow.
    import datasketch  # noqa: F401
    import pyarrow as pa
    from prefect import get_run_logger  # noqa: F401

    import tasks.dedup  # noqa: F401

    pa.array([0])
    from tasks.store import ArtifactStore

    store = ArtifactStore(args.root)
    for step in ("dedup-signatures", "dedup"):  # no cache hits: every run computes
        shutil.rmtree(store.root / step, ignore_errors=True)
    convs = [store.load("convert", k) for k in json.loads(Path(args.root, f"convs-{args.n}.json").read_text())]
    truth = json.loads(Path(args.root, f"truth-{args.n}.json").read_text())
    sizes = json.loads(Path(args.root, f"bytes-{args.n}.json").read_text())
    counts = [len(x) for x in sizes]
    # the datasketch ways: the first rows of every shard, min(N, --plain-max) in all
    limits = [c if args.impl in ("tuneline", "rensa") else min(c, -(-args.plain_max // len(convs))) for c in counts]
    n, text_bytes = sum(limits), sum(sum(x[:lim]) for x, lim in zip(sizes, limits))
    cpu0 = _cpu_s()
    if args.impl == "tuneline":
        secs, info = run_tuneline(args.root, convs, args.workers, args.dedup_tasks)
        m = info.pop("manifest")
        clusters = store.read(m, "dedup_clusters", ["record_id", "cluster_id"])
        cid = dict(zip(clusters.column("record_id").to_pylist(), clusters.column("cluster_id").to_pylist()))
        same = lambda a, b: a in cid and cid.get(a) == cid.get(b)  # noqa: E731
        info.update({k: m["stats"][k] for k in ("exact_removed", "near_removed", "clusters", "bands", "rows",
                                                "candidate_pairs")})
    else:
        if args.impl == "plain":
            secs, info = run_plain(args.root, convs, args.workers, limits)
        elif args.impl == "bulk":
            secs, info = run_bulk(args.root, convs, args.workers, limits)
        else:
            secs, info = run_rensa(args.root, convs)
        find = info.pop("find")
        same = lambda a, b: find(a) == find(b)  # noqa: E731
    cpu = _cpu_s() - cpu0
    if n < sum(counts):  # quality over the planted pairs inside the sample
        ids = set()
        for m, lim in zip(convs, limits):
            ids.update(store.read(m, "records", ["record_id"]).column(0).slice(0, lim).to_pylist())
        keep = [i for i, (a, b) in enumerate(zip(truth["a"], truth["b"])) if a in ids and b in ids]
        truth = {k: [v[i] for i in keep] for k, v in truth.items()}
    mb = text_bytes / 1e6
    res = {"impl": args.impl, "n": n, "seconds": round(secs, 2), "docs_per_s": round(n / secs),
           "mb_per_s": round(mb / secs, 1), "cpu_s": round(cpu, 1), "docs_per_cpu_s": round(n / cpu),
           "mb_per_cpu_s": round(mb / cpu, 1), "load_avg_1m": os.getloadavg()[0],
           **info, **quality(truth, same), **_rss_mb()}
    res["rss_upper_bound_mb"] = res["rss_self_mb"] + args.workers * res["rss_child_max_mb"]
    print(json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-rows", type=int, default=100_000)
    ap.add_argument("--plain-max", type=int, default=100_000,
                    help="records the datasketch ways run on (the first of every shard; 0: not run)")
    ap.add_argument("--impls", nargs="+", default=["tuneline", "plain", "bulk", "rensa"],
                    choices=["tuneline", "plain", "bulk", "rensa"])
    ap.add_argument("--dedup-tasks", choices=["pool", "threads", "local"], default="pool",
                    help="where the dedup step's tasks run: the signatures' process pool (default), "
                         "threads of the main process, or one after another")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default=None, help="artifacts directory (default: a temp dir)")
    ap.add_argument("--impl", choices=["tuneline", "plain", "bulk", "rensa"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.impl:
        return one(args)
    root = args.root or tempfile.mkdtemp(prefix="tuneline-bench-dedup-")
    for n in args.sizes:
        shards = args.workers * math.ceil(math.ceil(n / args.shard_rows) / args.workers)  # a multiple of the workers
        t = time.perf_counter()
        if not Path(root, f"bytes-{n}.json").exists():  # data sets are reused from an earlier run
            convs = generate(root, n, args.seed, shards, args.workers)
            truth = truth_pairs(convs, root, n, args.seed)
            Path(root, f"convs-{n}.json").write_text(json.dumps([m["key"] for m in convs]))
            Path(root, f"truth-{n}.json").write_text(json.dumps(truth))
            Path(root, f"bytes-{n}.json").write_text(json.dumps(_text_bytes(root, convs)))
        sizes = json.loads(Path(root, f"bytes-{n}.json").read_text())
        print(json.dumps({"n": n, "shards": len(sizes), "generate_s": round(time.perf_counter() - t, 1),
                          "mean_record_bytes": round(sum(map(sum, sizes)) / n), "root": root}), flush=True)
        results = {}
        for impl in args.impls:
            if impl in ("plain", "bulk") and args.plain_max <= 0:
                continue
            if impl == "rensa" and importlib.util.find_spec("rensa") is None:
                print(json.dumps({"impl": "rensa", "skipped": "not installed (pip install rensa)"}), flush=True)
                continue
            cmd = [sys.executable, __file__, "--impl", impl, "--n", str(n), "--root", root,
                   "--workers", str(args.workers), "--seed", str(args.seed), "--plain-max", str(args.plain_max),
                   "--dedup-tasks", args.dedup_tasks]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            print(out, end="", flush=True)
            results[impl] = json.loads(out.strip().splitlines()[-1])
        tl = results.get("tuneline")
        if tl:
            ratios = {"n": n}
            for impl in ("plain", "bulk"):
                if impl in results:
                    ratios[f"docs_per_s_over_datasketch_{impl}"] = round(tl["docs_per_s"] / results[impl]["docs_per_s"], 1)
            if "rensa" in results:
                ratios["per_core_over_rensa"] = round(tl["docs_per_cpu_s"] / results["rensa"]["docs_per_cpu_s"], 2)
                ratios["docs_per_s_over_rensa"] = round(tl["docs_per_s"] / results["rensa"]["docs_per_s"], 2)
            print(json.dumps(ratios), flush=True)


if __name__ == "__main__":
    main()
