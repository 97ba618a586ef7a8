"""The ingest step: one source file -> `records_raw` (tasks.schema.RAW) + `rejects`.

Step key inputs: the file path and its sha256 content hash (the URI for `hf://`, which is
not downloaded to hash), the source's name, format and options and the reader's version; config: on_error and
max_reject_share. With `on_error: strict` the first bad row raises InputError(file, line,
reason) and nothing is published; `lenient` writes rejects and the step fails only above
recipe.max_reject_share.
"""
from __future__ import annotations

from pathlib import Path

from tasks.config import as_recipe
from tasks.errors import InputError
from tasks.ingest.registry import READERS
from tasks.schema import RAW, REJECTS, reject_row
from tasks.progress import FileProgress
from tasks.step import run_step
from tasks.store import ArtifactStore, file_sha256

VERSION = 1
BATCH_ROWS = 20_000


def ingest_file(root: str, recipe: dict, source: str, file: str) -> dict:
    """Read one file of one source into `records_raw` / `rejects`; returns the step manifest."""
    rc = as_recipe(recipe)
    src = rc.source(source)
    reader = READERS[src.format]
    inputs = {
        "file": file,
        "sha256": None if file.startswith("hf://") else file_sha256(file),
        # only what reading depends on: convert-time settings (templates, seed) do not re-run ingest
        "source": {"name": src.name, "format": src.format, "options": src.options},
        "reader": {"name": reader.name, "version": reader.version},
    }
    config = {"on_error": rc.on_error}
    label = f"{source}:{Path(file).name}"

    def body(writer) -> None:
        rows, rejects = [], []
        n_rows = n_rejects = 0
        progress = FileProgress(f"ingest {label}", file)  # bytes read of the file
        for item in reader.read(rc, src, file):
            progress.row(len(item[-1] or ""))  # raw_text, last in rows and rejects
            if item[0] == "row":
                _, origin_row, raw, raw_text = item
                rows.append({"source": source, "format": src.format, "origin_file": file,
                             "origin_row": origin_row, "raw": raw_text})
                n_rows += 1
            else:
                _, origin_row, reason, detail, raw_text = item
                if rc.on_error == "strict":
                    raise InputError(file, origin_row, reason, detail)
                rejects.append(reject_row("ingest", reason, source=source, origin_file=file,
                                          origin_row=origin_row, detail=detail, raw=raw_text))
                n_rejects += 1
            if len(rows) >= BATCH_ROWS:
                writer.write("records_raw", RAW, rows)
                rows = []
        writer.write("records_raw", RAW, rows)  # also creates the table when the file is empty
        writer.write("rejects", REJECTS, rejects)
        progress.done()
        writer.stats.update(rows_in=n_rows + n_rejects, rows_out=n_rows, rows_rejected=n_rejects,
                            source=source, file=file, format=src.format)
        writer.stats["report_markdown"] = (f"**ingest {label}**: {n_rows} rows, {n_rejects} rejected")

    return run_step(ArtifactStore(root), "ingest", VERSION, inputs, config, label, body,
                    max_reject_share=rc.max_reject_share if rc.on_error == "lenient" else None)
