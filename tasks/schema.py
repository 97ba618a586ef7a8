"""Arrow schemas of the artifacts every step exchanges (DESIGN.md §4).

One place defines each table kind; readers, transforms and the catalog all use it.
"""
from __future__ import annotations

import hashlib
import json

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

#: Raw rows as a reader yields them, before conversion (`records_raw` view).
RAW = pa.schema(
    [
        ("source", pa.string()),
        ("format", pa.string()),
        ("origin_file", pa.string()),
        ("origin_row", pa.int64()),
        ("raw", pa.string()),  # the native row, re-serialised as JSON
    ]
)

#: The canonical record (`records` view).
RECORDS = pa.schema(
    [
        ("record_id", pa.string()),
        ("source", pa.string()),
        ("task", pa.string()),
        ("template_id", pa.string()),
        ("example_id", pa.string()),  # underlying source example; template variants share it
        ("messages", pa.list_(MESSAGE)),
        ("answer_choices", pa.list_(pa.string())),
        ("origin_file", pa.string()),
        ("origin_row", pa.int64()),
        ("n_turns", pa.int32()),
        ("n_chars", pa.int64()),
        ("lang", pa.string()),
        ("meta", pa.string()),  # JSON object of extra native fields
    ]
)

#: Every dropped or rejected row, from every step (`rejects` view).
REJECTS = pa.schema(
    [
        ("step", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("source", pa.string()),
        ("origin_file", pa.string()),
        ("origin_row", pa.int64()),
        ("record_id", pa.string()),  # null when the row never became a record
        ("related_id", pa.string()),  # e.g. the record a duplicate duplicates, the eval item matched
        ("raw_prefix", pa.string()),
    ]
)

RAW_PREFIX_CHARS = 200


def record_id(source: str, messages: list[dict], template_id: str = "", example_id: str = "") -> str:
    """Stable content hash of a record: same content gives the same id on any machine."""
    payload = json.dumps(
        [source, template_id, example_id, [[m["role"], m["content"]] for m in messages]],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def reject_row(
    step: str,
    reason: str,
    *,
    source: str | None = None,
    origin_file: str | None = None,
    origin_row: int | None = None,
    record_id: str | None = None,
    related_id: str | None = None,
    detail: str = "",
    raw: str | bytes | None = None,
) -> dict:
    """One `rejects` row; `raw` is cut to a prefix so a huge broken row stays small."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return {
        "step": step,
        "reason": reason,
        "detail": detail,
        "source": source,
        "origin_file": origin_file,
        "origin_row": origin_row,
        "record_id": record_id,
        "related_id": related_id,
        "raw_prefix": None if raw is None else raw[:RAW_PREFIX_CHARS],
    }
