"""The convert step: one ingest manifest's `records_raw` -> canonical `records` + `rejects`.

Raw rows are read in batches (Arrow), parsed back to dicts one batch at a time, and handed
to the source's reader (`Reader.convert`). Before the first batch of a file the reader may
build an exemplar pool from that batch (FLAN CoT few-shot); the batch holds at least
tasks.ingest.POOL_ROWS rows, so the pool does not depend on the batch size.

Counts: rows_in = raw rows; rows_out = raw rows that produced at least one record (a row
rendered with several templates counts once); rows_rejected = raw rows that produced none.
stats.records_out = records written; stats.reject_rows = rows written to `rejects` (may
exceed rows_rejected when one rendering of a row failed and another succeeded).
With `on_error: strict` the first row (in file order) that produced no record raises
InputError(file, row, reason) and nothing is published.
"""
from __future__ import annotations

from tasks.config import as_recipe
from tasks.errors import InputError
from tasks.ingest.common import loads
from tasks.ingest.registry import POOL_ROWS, READERS
from tasks.progress import table_rows
from tasks.schema import RECORDS, REJECTS
from tasks.step import Progress, input_ref, run_step
from tasks.store import ArtifactStore

VERSION = 4  # 4: MESSAGE extras (reasoning, tool calls, tool results), record `tools`; 3: sandbox bounds loops, call arguments and format widths; `choice`/`random` seeded per row
BATCH_ROWS = max(4096, POOL_ROWS)


def convert_shard(root: str, recipe: dict, ingest_manifest: dict) -> dict:
    """Convert one ingested file; returns the convert step manifest."""
    rc = as_recipe(recipe)
    store = ArtifactStore(root)
    src_name = ingest_manifest["inputs"]["source"]["name"]
    src = rc.source(src_name)
    reader = READERS[src.format]
    inputs = {"ingest": input_ref(ingest_manifest), **reader.config_inputs(rc, src)}
    config = {"source": src.model_dump(), "seed": rc.seed, "on_error": rc.on_error,
              "reader": {"name": reader.name, "version": reader.version}}
    label = ingest_manifest.get("label", src_name)

    def body(writer) -> None:
        progress = Progress(f"convert {label}", total=table_rows(ingest_manifest, "records_raw"))
        n_in = n_out = n_records = n_reject_rows = 0
        rejected_rows: set = set()
        pools: dict[str, object] = {}
        for batch in store.iter_batches(ingest_manifest, "records_raw",
                                        columns=["origin_file", "origin_row", "raw"], batch_size=BATCH_ROWS):
            cols = batch.to_pydict()
            rows = [(f, r, loads(raw)) for f, r, raw in zip(cols["origin_file"], cols["origin_row"], cols["raw"])]
            n_in += len(rows)
            for f in dict.fromkeys(r[0] for r in rows):
                if f not in pools:
                    pools[f] = reader.exemplar_pool(rc, src, f, [r for r in rows if r[0] == f])
            records, rejects, out_keys, rej_keys = [], [], set(), set()
            for f in dict.fromkeys(r[0] for r in rows):
                for item in reader.convert(rc, src, [r for r in rows if r[0] == f], pools[f]):
                    key = (item["origin_file"], item["origin_row"])
                    if "record_id" in item and "messages" in item:
                        records.append(item)
                        out_keys.add(key)
                    else:
                        rejects.append(item)
                        rej_keys.add(key)
            batch_keys = {(r[0], r[1]) for r in rows}
            silent = batch_keys - out_keys - rej_keys
            if silent:
                raise AssertionError(f"reader {reader.name} yielded nothing for rows {sorted(silent)[:5]}")
            if rc.on_error == "strict" and rej_keys - out_keys:
                # strict fails on a row that produced no record; a failed rendering of a row that
                # another template rendered (e.g. a conditional promptsource template) is not bad input
                first = min(rej_keys - out_keys, key=lambda k: k[1])
                bad = next(r for r in rejects if (r["origin_file"], r["origin_row"]) == first)
                raise InputError(bad["origin_file"], bad["origin_row"], bad["reason"], bad["detail"])
            n_out += len(out_keys)
            rejected_rows |= rej_keys - out_keys
            n_records += len(records)
            n_reject_rows += len(rejects)
            writer.write("records", RECORDS, records)
            writer.write("rejects", REJECTS, rejects)
            progress.add(len(rows))
        writer.write("records", RECORDS, [])
        writer.write("rejects", REJECTS, [])
        progress.done()
        writer.stats.update(rows_in=n_in, rows_out=n_out, rows_rejected=len(rejected_rows), records_out=n_records,
                            reject_rows=n_reject_rows, source=src_name, file=ingest_manifest["inputs"]["file"])
        writer.stats["report_markdown"] = (f"**convert {label}**: {n_in} raw rows -> {n_records} records "
                                           f"({n_out} rows), {len(rejected_rows)} rows rejected")

    return run_step(store, "convert", VERSION, inputs, config, label, body,
                    max_reject_share=rc.max_reject_share if rc.on_error == "lenient" else None)
