"""The one contract every step body follows.

A step body is a plain function that receives a `StepWriter`, writes its tables and
fills `writer.stats` with at least `rows_in`, `rows_out`, `rows_rejected`
(rows in = rows out + rows rejected). `run_step` computes the content key, returns the
existing manifest when it verifies (a cache hit: the body never runs), and otherwise
runs the body and publishes atomically.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from tasks.errors import TooManyRejects
from tasks.log import logger
from tasks.progress import Progress
from tasks.store import ArtifactStore, StepWriter, step_key

__all__ = ["Progress", "input_ref", "logger", "run_step", "top_reasons"]  # Progress: tasks/progress.py


def input_ref(manifest: dict) -> dict:
    """What of an upstream manifest goes into a downstream key: its step and key only."""
    return {"step": manifest["step"], "key": manifest["key"]}


def run_step(
    store: ArtifactStore,
    step: str,
    version: int,
    inputs: Any,
    config: Any,
    label: str,
    body: Callable[[StepWriter], None],
    max_reject_share: float | None = None,
) -> dict:
    """Run `body` unless a verified manifest for the same inputs+config+version exists."""
    key = step_key(step, version, inputs, config)
    found = store.load(step, key)
    if found is not None:
        found["skipped"] = True
        logger().info(f"{step} {label}: up to date ({key}), skipped")
        return found
    writer = store.begin(step, key, label=label, version=version, inputs=inputs, config=config)
    t0 = time.perf_counter()
    try:
        body(writer)
        stats = writer.stats
        for k in ("rows_in", "rows_out", "rows_rejected"):
            stats.setdefault(k, 0)
        if stats["rows_in"] != stats["rows_out"] + stats["rows_rejected"]:
            raise AssertionError(
                f"{step} {label}: rows in {stats['rows_in']} != out {stats['rows_out']} "
                f"+ rejected {stats['rows_rejected']}"
            )
        if max_reject_share is not None and stats["rows_in"]:
            _check_reject_share(writer, label, max_reject_share)
        stats["seconds"] = round(time.perf_counter() - t0, 3)
        manifest = writer.commit()
    except BaseException:
        writer.abort()
        raise
    manifest["skipped"] = False
    return manifest


def _check_reject_share(writer: StepWriter, label: str, max_share: float) -> None:
    """Raise TooManyRejects naming the top reasons; the rejects are kept under
    `failed/<step>/<key>/` so the message can say how to query them."""
    stats = writer.stats
    share = stats["rows_rejected"] / stats["rows_in"]
    if share <= max_share:
        return
    where = Path("failed") / writer.step / writer.key
    parts = writer.keep_table("rejects", writer.store.root / where)
    reasons = top_reasons(parts)
    query = (f"; see them: tuneline query \"select reason, detail, origin_file, origin_row from "
             f"read_parquet('{where}/*.parquet')\"" if parts else "")
    raise TooManyRejects(
        f"{writer.step} {label}: rejected {stats['rows_rejected']:,} of {stats['rows_in']:,} rows ({share:.1%}), "
        f"above max_reject_share {max_share:.1%}" + (f"; top reasons: {reasons}" if reasons else "") + query)


def top_reasons(parts: list[Path], n: int = 3) -> str:
    """'reason count, ...' of the `n` most frequent reasons in rejects Parquet parts."""
    if not parts:
        return ""
    import pyarrow as pa
    import pyarrow.parquet as pq

    reasons = pa.concat_tables([pq.read_table(p, columns=["reason"]) for p in parts])
    counts = reasons.group_by("reason").aggregate([("reason", "count")]).sort_by([("reason_count", "descending"),
                                                                                 ("reason", "ascending")])
    return ", ".join(f"{r['reason']} {r['reason_count']:,}" for r in counts.slice(0, n).to_pylist())
