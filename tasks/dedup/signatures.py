"""Step `dedup-signatures`: per convert shard, exact keys, MinHash signatures and LSH band keys.

The table `dedup_signatures` is row-aligned with the shard's `records` table (same
order, same count) and holds no document text: besides the signature and band keys it
keeps each record's shingle hashes, so that the `dedup` step verifies candidate pairs by
exact Jaccard without re-reading and re-shingling their text.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from tasks.config import DedupConfig, Recipe
from tasks.dedup import minhash as mh
from tasks.step import Progress, input_ref, run_step
from tasks.store import ArtifactStore

STEP = "dedup-signatures"
VERSION = 2  # 2: shingle hashes kept (exact verification reads them, not the text)
TABLE = "dedup_signatures"
READ_COLUMNS = ["record_id", "source", "example_id", "template_id", "messages", "n_turns", "n_chars"]


def signature_schema(num_perm: int, bands: int) -> pa.Schema:
    return pa.schema(
        [
            ("record_id", pa.string()),
            ("source", pa.string()),
            ("example_id", pa.string()),
            ("template_id", pa.string()),
            ("n_turns", pa.int32()),
            ("n_chars", pa.int64()),
            ("exact_key", pa.string()),  # null: empty projection, never matched
            ("unit", pa.string()),  # word | char
            ("n_shingles", pa.int32()),  # 0: too short, exact matching only
            ("band_keys", pa.list_(pa.uint64(), bands)),  # null when n_shingles == 0
            ("signature", pa.list_(pa.uint32(), num_perm)),  # null when n_shingles == 0
            ("shingles", pa.large_list(pa.uint32())),  # shingle hashes in text order; empty when none
        ]
    )


#: Columns of random hashes: written without a dictionary, which cannot shrink them.
HASH_COLUMNS = ("exact_key", "band_keys", "signature", "shingles")


def lsh_params(cfg: DedupConfig) -> tuple[int, int]:
    return mh.lsh_params(cfg.threshold, cfg.num_perm, cfg.false_positive_weight, cfg.false_negative_weight)


def signature_config(cfg: DedupConfig) -> dict:
    """The part of the dedup config the signatures depend on (their cache key)."""
    keys = ["enabled", "projection", "threshold", "num_perm", "shingle", "shingle_size", "seed",
            "false_positive_weight", "false_negative_weight"]
    return {k: getattr(cfg, k) for k in keys}


def compute_batch(batch: pa.RecordBatch, cfg: DedupConfig, bands: int, rows: int) -> pa.RecordBatch:
    """Signature rows of one batch of records (vectorised over the batch)."""
    n = batch.num_rows
    if cfg.enabled:
        texts = mh.normalise_batch(batch.column("messages"), cfg.projection, cfg.shingle)
        keys, units = texts.exact_keys(), texts.units()
        hashes, counts = mh.shingle_hashes(texts, cfg.shingle_size)
        sig = mh.minhash_batch(hashes, counts, cfg.num_perm, cfg.seed)
        bkeys = mh.band_keys(sig, bands, rows)
    else:  # pass-through: nothing is compared, so nothing is computed
        keys, units = [None] * n, ["word"] * n
        counts, hashes = np.zeros(n, np.int64), np.empty(0, np.uint32)
        sig = np.zeros((n, cfg.num_perm), np.uint32)
        bkeys = np.zeros((n, bands), np.uint64)
    empty = pa.array(counts == 0)
    shingle_offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=shingle_offsets[1:])
    schema = signature_schema(cfg.num_perm, bands)
    cols = {
        "record_id": batch.column("record_id"),
        "source": batch.column("source"),
        "example_id": batch.column("example_id"),
        "template_id": batch.column("template_id"),
        "n_turns": batch.column("n_turns").fill_null(0),
        "n_chars": batch.column("n_chars").fill_null(0),
        "exact_key": pa.array(keys, pa.string()),
        "unit": pa.array(units, pa.string()),
        "n_shingles": pa.array(counts.astype(np.int32)),
        "band_keys": pa.FixedSizeListArray.from_arrays(pa.array(bkeys.ravel()), bands, mask=empty),
        "signature": pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel()), cfg.num_perm, mask=empty),
        "shingles": pa.LargeListArray.from_arrays(pa.array(shingle_offsets), pa.array(hashes, pa.uint32())),
    }
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


def signatures(root: str, recipe: dict, convert_manifest: dict) -> dict:
    """Step `dedup-signatures` over one convert shard; returns its manifest."""
    cfg = Recipe.model_validate(recipe).dedup
    store = ArtifactStore(root)
    bands, rows = lsh_params(cfg)
    label = convert_manifest.get("label", convert_manifest["key"])

    def body(writer):
        n = 0
        progress = Progress(f"{STEP} {label}")
        schema = signature_schema(cfg.num_perm, bands)
        out = writer.table(TABLE, schema, use_dictionary=[c for c in schema.names if c not in HASH_COLUMNS])
        for batch in store.iter_batches(convert_manifest, "records", READ_COLUMNS, batch_size=cfg.batch_rows):
            out.write(compute_batch(batch, cfg, bands, rows))
            n += batch.num_rows
            progress.add(batch.num_rows)
        progress.done()
        writer.stats.update(rows_in=n, rows_out=n, rows_rejected=0, bands=bands, rows=rows,
                            num_perm=cfg.num_perm, seed=cfg.seed)

    return run_step(store, STEP, VERSION, {"records": input_ref(convert_manifest)},
                    signature_config(cfg), label, body)
