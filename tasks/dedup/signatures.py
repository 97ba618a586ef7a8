"""Step `dedup-signatures`: per convert shard, exact keys, MinHash signatures and LSH band keys.

The table `dedup_signatures` is row-aligned with the shard's `records` table (same
order, same count) and holds everything the `dedup` step needs, so that it never reads the
records: ids and keep-rule columns, the exact key, the signature and band keys, each
record's shingle hashes (exact verification of candidate pairs) and, of its text, only the
`RAW_PREFIX_CHARS` prefix a reject shows.

A turn's text is `tasks.schema.turn_text`: its reasoning, content and each tool call as
`name(arguments)`. So the projections cover: `prompt` the user turns; `response` the
assistant turns with their reasoning and tool calls; `conversation` every turn, system
and tool results included. Records a template rendered (Dolly, FLAN CoT, Super-NI,
promptsource) are projected from their source's own fields instead (`tasks.dedup.content`),
so the template's wording is not compared.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.config import DedupConfig, Recipe
from tasks.dedup import minhash as mh
from tasks.dedup.content import Content
from tasks.schema import RAW_PREFIX_CHARS, text_messages
from tasks.step import Progress, input_ref, run_step
from tasks.store import ArtifactStore

STEP = "dedup-signatures"
VERSION = 6  # 6: Tuneline's unit hash instead of xxh32 (tasks.dedup.minhash), signature stored as bytes and for `verify: estimate` only; 5: rendered records hash their source's fields (tasks.dedup.content); 4: a turn's text includes its reasoning and tool calls; 3: shingle hashes, origin and reject prefix kept (dedup reads no records)
TABLE = "dedup_signatures"
READ_COLUMNS = ["record_id", "source", "example_id", "template_id", "messages", "n_turns", "n_chars",
                "origin_file", "origin_row", "answer_choices", "meta"]


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
            # the MinHash signature, num_perm little-endian uint32s; written for `verify: estimate`
            # only (null otherwise, and when n_shingles == 0): exact verification never reads it
            ("signature", pa.binary(4 * num_perm)),
            ("band_keys", pa.list_(pa.uint64(), bands)),  # null when n_shingles == 0
            ("shingles", pa.large_binary()),  # shingle hashes in text order, little-endian uint32s
            ("origin_file", pa.string()),
            ("origin_row", pa.int64()),
            ("raw_prefix", pa.string()),  # the conversation's first RAW_PREFIX_CHARS characters
        ]
    )


#: Columns of random hashes: written without a dictionary, compression or statistics.
HASH_COLUMNS = ("exact_key", "band_keys", "signature", "shingles")


def lsh_params(cfg: DedupConfig) -> tuple[int, int]:
    return mh.lsh_params(cfg.threshold, cfg.num_perm, cfg.false_positive_weight, cfg.false_negative_weight)


def signature_config(cfg: DedupConfig) -> dict:
    """The part of the dedup config the signatures depend on (their cache key)."""
    keys = ["enabled", "projection", "threshold", "num_perm", "shingle", "shingle_size", "seed",
            "false_positive_weight", "false_negative_weight", "verify"]
    return {k: getattr(cfg, k) for k in keys}


def turn_texts(messages: pa.Array) -> pa.Array:
    """`tasks.schema.text_messages` (a turn's text: reasoning, content, tool calls), without its
    Polars pass when no turn of the batch has reasoning or tool calls (the common case)."""
    messages = messages.combine_chunks() if isinstance(messages, pa.ChunkedArray) else messages
    flat = messages.values
    names = [flat.type.field(i).name for i in range(flat.type.num_fields)]
    if "reasoning" in names and "tool_calls" in names:
        if flat.field("reasoning").null_count != len(flat) or flat.field("tool_calls").null_count != len(flat):
            return text_messages(messages)
        content = pc.fill_null(flat.field("content"), "")
        turns = pa.StructArray.from_arrays([flat.field("role"), content], names=["role", "content"])
        return pa.ListArray.from_arrays(messages.offsets, turns)
    return text_messages(messages)


def compute_batch(batch: pa.RecordBatch, cfg: DedupConfig, bands: int, rows: int,
                  content: Content | None = None, workspace: mh.Workspace | None = None) -> pa.RecordBatch:
    """Signature rows of one batch of records (vectorised over the batch). `content` recovers
    the source fields of rendered records (none: every record is projected from its turns);
    `workspace`: the kernels' buffers, reused from batch to batch."""
    n = batch.num_rows
    messages = turn_texts(batch.column("messages"))  # reasoning and tool calls are part of a turn's text
    conversation = mh.project_arrow(messages, "conversation")
    if cfg.enabled:
        own = conversation if cfg.projection == "conversation" else mh.project_arrow(messages, cfg.projection)
        projected = content.text(batch, cfg.projection, own) if content is not None else own
        num_perm = cfg.num_perm
        sk = mh.sketch_texts(projected, cfg.shingle, cfg.shingle_size, num_perm, cfg.seed, bands, rows, workspace)
        keys, units = sk.texts.exact_keys(), sk.texts.units()
        hashes, counts, sig, bkeys = sk.hashes, sk.counts, sk.sig, sk.band_keys
    else:  # pass-through: nothing is compared, so nothing is computed
        keys, units = [None] * n, ["word"] * n
        counts, hashes = np.zeros(n, np.int64), np.empty(0, np.uint32)
        sig = np.zeros((n, cfg.num_perm), np.uint32)
        bkeys = np.zeros((n, bands), np.uint64)
    empty = counts == 0
    shingle_offsets = np.zeros(n + 1, np.int64)  # in bytes
    np.cumsum(counts * 4, out=shingle_offsets[1:])
    schema = signature_schema(cfg.num_perm, bands)
    if cfg.verify == "estimate":
        signature = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(4 * cfg.num_perm), n, [pa.array(~empty).buffers()[1],
                                             pa.py_buffer(np.ascontiguousarray(sig, "<u4"))])
    else:
        signature = pa.nulls(n, pa.binary(4 * cfg.num_perm))
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
        "band_keys": pa.FixedSizeListArray.from_arrays(pa.array(bkeys.ravel()), bands, mask=pa.array(empty)),
        "signature": signature,
        "shingles": pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [
            None, pa.py_buffer(shingle_offsets), pa.py_buffer(np.ascontiguousarray(hashes, "<u4"))]),
        "origin_file": batch.column("origin_file"),
        "origin_row": batch.column("origin_row"),
        "raw_prefix": pc.utf8_slice_codeunits(conversation, 0, RAW_PREFIX_CHARS),
    }
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


def signatures(root: str, recipe: dict, convert_manifest: dict) -> dict:
    """Step `dedup-signatures` over one convert shard; returns its manifest."""
    rc = Recipe.model_validate(recipe)
    cfg = rc.dedup
    store = ArtifactStore(root)
    bands, rows = lsh_params(cfg)
    label = convert_manifest.get("label", convert_manifest["key"])

    def body(writer):
        n = 0
        progress = Progress(f"{STEP} {label}")
        schema = signature_schema(cfg.num_perm, bands)
        out = writer.table(TABLE, schema, hash_columns=HASH_COLUMNS)
        content = Content(rc, store, convert_manifest)
        workspace = mh.Workspace()
        for batch in store.iter_batches(convert_manifest, "records", READ_COLUMNS, batch_size=cfg.batch_rows):
            out.write(compute_batch(batch, cfg, bands, rows, content, workspace))
            n += batch.num_rows
            progress.add(batch.num_rows)
        progress.done()
        writer.stats.update(rows_in=n, rows_out=n, rows_rejected=0, bands=bands, rows=rows,
                            num_perm=cfg.num_perm, seed=cfg.seed, content_fields=content.recovered,
                            content_fallback=content.fallback)

    return run_step(store, STEP, VERSION, {"records": input_ref(convert_manifest)},
                    signature_config(cfg), label, body)
