"""Step `dedup-signatures`: per convert shard, exact keys, MinHash signatures and LSH band keys.

The table `dedup_signatures` is row-aligned with the shard's `records` table (same order,
same count) and small: ids and keep-rule columns, the exact key, the shingle count and (for
`verify: estimate` only) the signature. The band keys and exact keys go to
`dedup_bands` and `dedup_exact`, partitioned by key (`tasks.dedup.partitions`), which is what
the `dedup` step's tasks read. Shingle hashes are not stored: writing them cost more than
making them again (about 1.2 KB a record, fsynced and hashed, against a few microseconds of
compiled hashing), so `dedup` re-makes them, with `project_batch` and the same kernel, for the
records in a candidate pair or exact group only (`fetch`).

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
import pyarrow.parquet as pq

from tasks.config import DedupConfig, as_recipe
from tasks.dedup import minhash as mh
from tasks.dedup.content import Content
from tasks.dedup.partitions import PartitionWriter, source_salt
from tasks.progress import table_rows
from tasks.schema import RAW_PREFIX_CHARS, text_messages
from tasks.step import Progress, input_ref, run_step
from tasks.store import ArtifactStore

STEP = "dedup-signatures"
VERSION = 7  # 7: band and exact keys partitioned on disk (tasks.dedup.partitions); no band keys, shingle hashes, origin or text prefix in the table (dedup re-makes them: `fetch`); 6: Tuneline's unit hash instead of xxh32 (tasks.dedup.minhash), signature stored as bytes and for `verify: estimate` only; 5: rendered records hash their source's fields (tasks.dedup.content); 4: a turn's text includes its reasoning and tool calls; 3: shingle hashes, origin and reject prefix kept (dedup reads no records)
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
        ]
    )


#: Columns of random hashes: written without a dictionary, compression or statistics.
HASH_COLUMNS = ("exact_key", "signature")


def lsh_params(cfg: DedupConfig) -> tuple[int, int]:
    return mh.lsh_params(cfg.threshold, cfg.num_perm, cfg.false_positive_weight, cfg.false_negative_weight)


def signature_config(cfg: DedupConfig) -> dict:
    """The part of the dedup config the signatures depend on (their cache key)."""
    keys = ["enabled", "projection", "threshold", "num_perm", "shingle", "shingle_size", "seed",
            "false_positive_weight", "false_negative_weight", "verify", "scope"]
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


def project_batch(batch: pa.RecordBatch, cfg: DedupConfig, content: Content | None) -> tuple[pa.Array, pa.Array]:
    """(each record's conversation, each record's projected text) of a batch of records:
    the text a reject shows and the text that is compared. `content` recovers the source
    fields of rendered records (none: every record is projected from its turns)."""
    messages = turn_texts(batch.column("messages"))  # reasoning and tool calls are part of a turn's text
    conversation = mh.project_arrow(messages, "conversation")
    own = conversation if cfg.projection == "conversation" else mh.project_arrow(messages, cfg.projection)
    return conversation, content.text(batch, cfg.projection, own) if content is not None else own


def compute_batch(batch: pa.RecordBatch, cfg: DedupConfig, bands: int, rows: int,
                  content: Content | None = None, workspace: mh.Workspace | None = None,
                  partitions: PartitionWriter | None = None, first_row: int = 0) -> pa.RecordBatch:
    """Signature rows of one batch of records (vectorised over the batch). `workspace`: the
    kernels' buffers, reused from batch to batch; `partitions` gets the batch's band and exact
    keys (rows first_row..)."""
    n = batch.num_rows
    if cfg.enabled:
        _, projected = project_batch(batch, cfg, content)
        num_perm = cfg.num_perm
        sk = mh.sketch_texts(projected, cfg.shingle, cfg.shingle_size, num_perm, cfg.seed, bands, rows, workspace)
        keys, hi, lo, has_key = sk.texts.exact_keys_and_ints()
        units = sk.texts.units()
        counts, sig = sk.counts, sk.sig
        if partitions is not None:
            salt = None
            if cfg.scope == "within_source":
                names = batch.column("source").fill_null("").to_pylist()
                salts = {s: source_salt(s) for s in set(names)}
                salt = np.array([salts[s] for s in names], np.uint64)
            partitions.add(first_row, sk.band_keys, counts > 0, hi, lo, has_key, salt)
    else:  # pass-through: nothing is compared, so nothing is computed
        keys, units = [None] * n, ["word"] * n
        counts, sig = np.zeros(n, np.int64), np.zeros((n, cfg.num_perm), np.uint32)
    empty = counts == 0
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
        "signature": signature,
    }
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


def fetch(root: str, recipe, convert_manifest: dict, rows: np.ndarray) -> dict:
    """What `dedup` needs of some records of a convert shard (`rows`, sorted): their shingle
    hashes (`hashes`, `counts` per record, as `dedup-signatures` made them), the text prefix a
    reject shows (`raw_prefix`), and their origin. Reads only the row groups holding them."""
    rc = as_recipe(recipe)
    cfg = rc.dedup
    store = ArtifactStore(root)
    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return {"rows": rows, "counts": np.empty(0, np.int64), "hashes": np.empty(0, np.uint32),
                "raw_prefix": pa.array([], pa.string()), "origin_file": pa.array([], pa.string()),
                "origin_row": pa.array([], pa.int64()), "record_id": pa.array([], pa.string())}
    content = Content(rc, store, convert_manifest)
    workspace = mh.Workspace()
    out: dict[str, list] = {c: [] for c in ("counts", "hashes", "raw_prefix", "origin_file", "origin_row", "record_id")}
    for batch in _take_batches(store, convert_manifest, "records", rows, READ_COLUMNS, cfg.batch_rows):
        conversation, projected = project_batch(batch, cfg, content)
        sk = mh.sketch_texts(projected, cfg.shingle, cfg.shingle_size, 0, cfg.seed, 0, 1, workspace)
        out["counts"].append(sk.counts.copy())
        out["hashes"].append(sk.hashes.copy())
        out["raw_prefix"].append(pc.utf8_slice_codeunits(conversation, 0, RAW_PREFIX_CHARS).cast(pa.string()))
        for c in ("origin_file", "origin_row", "record_id"):
            out[c].append(batch.column(c))
    return {"rows": rows, "counts": np.concatenate(out["counts"]), "hashes": np.concatenate(out["hashes"]),
            **{c: pa.concat_arrays(out[c]) for c in ("raw_prefix", "origin_file", "origin_row", "record_id")}}


def _take_batches(store: ArtifactStore, manifest: dict, table: str, rows: np.ndarray, columns: list[str],
                  batch_rows: int):
    """The rows `rows` (sorted) of a table, in batches of at most `batch_rows`, reading one row
    group at a time (only those that hold some of them): memory is a row group, not the rows."""
    base = 0
    for path in store.paths(manifest, table):
        f = pq.ParquetFile(path)
        for g in range(f.metadata.num_row_groups):
            n = f.metadata.row_group(g).num_rows
            lo, hi = np.searchsorted(rows, [base, base + n])
            if hi > lo:
                taken = f.read_row_group(g, columns=columns).take(pa.array(rows[lo:hi] - base))
                yield from taken.combine_chunks().to_batches(max_chunksize=batch_rows)
            base += n


def signatures(root: str, recipe: dict, convert_manifest: dict) -> dict:
    """Step `dedup-signatures` over one convert shard; returns its manifest."""
    rc = as_recipe(recipe)
    cfg = rc.dedup
    store = ArtifactStore(root)
    bands, rows = lsh_params(cfg)
    label = convert_manifest.get("label", convert_manifest["key"])

    def body(writer):
        n = 0
        progress = Progress(f"{STEP} {label}", total=table_rows(convert_manifest, "records"))
        schema = signature_schema(cfg.num_perm, bands)
        out = writer.table(TABLE, schema, hash_columns=HASH_COLUMNS)
        content = Content(rc, store, convert_manifest)
        workspace = mh.Workspace()
        partitions = PartitionWriter(writer)
        sources: dict[str, int] = {}
        for batch in store.iter_batches(convert_manifest, "records", READ_COLUMNS, batch_size=cfg.batch_rows):
            out.write(compute_batch(batch, cfg, bands, rows, content, workspace, partitions if cfg.enabled else None, n))
            for vc in pc.value_counts(batch.column("source").fill_null("")).to_pylist():
                sources[vc["values"]] = sources.get(vc["values"], 0) + vc["counts"]
            n += batch.num_rows
            progress.add(batch.num_rows)
        writer.stats.update(partitions.close())
        progress.done()
        writer.stats.update(rows_in=n, rows_out=n, rows_rejected=0, bands=bands, rows=rows, sources=sources,
                            num_perm=cfg.num_perm, seed=cfg.seed, content_fields=content.recovered,
                            content_fallback=content.fallback)

    return run_step(store, STEP, VERSION, {"records": input_ref(convert_manifest)},
                    signature_config(cfg), label, body)
