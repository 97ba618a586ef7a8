"""Shared reading helpers for the source readers.

Every iterator here yields the reader contract's items (see `tasks.ingest`):

    ("row", origin_row, raw: dict, raw_text: str)
    ("reject", origin_row, reason, detail, raw_text)

A row's `raw_text` is JSON text of `raw` (the original line for JSONL); a reject's is
the native text (the line as read), which goes, cut, into `rejects.raw_prefix`.
`origin_row` is 1-based: the physical line for line formats (JSONL, TSV), the element
index for a JSON array (1 for a single JSON object), the data row for CSV (header
excluded) and Parquet. Blank (whitespace-only) lines of line formats are not rows and
are skipped; everything else is either a row or a reject, never silently dropped.

Files may be `.gz` or `.zst` compressed; a UTF-8 BOM is stripped and CRLF accepted.
Invalid UTF-8 rejects the one line (reason `invalid_utf8`) instead of failing the file.
`hf://` URIs (and, in tests, local files) are read through DuckDB (`iter_duckdb`).
"""
from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import re
from pathlib import Path
from typing import IO, Iterator

from tasks import sql
from tasks.errors import RecipeError
from tasks.schema import record_id, reject_row, turn_text

try:  # orjson is a Prefect dependency; json is the fallback
    import orjson

    def loads(data: bytes | str):
        return orjson.loads(data)

    def dumps(obj) -> str:
        return orjson.dumps(obj).decode("utf-8")

    JSONDecodeError = orjson.JSONDecodeError
    _dumps_bytes = orjson.dumps
except ImportError:  # pragma: no cover - depends on the environment
    _dumps_bytes = None
    import json

    def loads(data: bytes | str):
        return json.loads(data)

    def dumps(obj) -> str:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

    JSONDecodeError = json.JSONDecodeError

import json as _json

BOM = b"\xef\xbb\xbf"
_COMPRESSED = (".gz", ".zst")


def canonical_json(obj) -> str:
    """Sorted-keys compact JSON (non-ASCII kept), so equal content hashes equally on any machine."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str).decode("utf-8")
    except (NameError, TypeError):  # no orjson, or a value it refuses (e.g. an int above 64 bits)
        return _json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def stable_hash(*parts) -> str:
    """Hex sha256 of the canonical JSON of `parts` (ids, seeds)."""
    try:  # canonical_json's bytes without the round trip through str
        payload = orjson.dumps(list(parts), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    except (NameError, TypeError):
        payload = canonical_json(list(parts)).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()


def stable_int(*parts) -> int:
    """A 64-bit integer seed derived from `parts` (for random.Random)."""
    return int(stable_hash(*parts)[:16], 16)


def base_suffix(path: str) -> str:
    """The data suffix of a path, ignoring a compression suffix: `a.jsonl.zst` -> `.jsonl`."""
    p = Path(path.split("?")[0])
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


@functools.lru_cache(maxsize=4096)  # readers ask once per row
def data_stem(path: str) -> str:
    """The file name without its data and compression suffixes: `cot_gsm8k_train.tsv.gz` -> `cot_gsm8k_train`."""
    name = Path(path).name
    for suf in _COMPRESSED:
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
    return name.rsplit(".", 1)[0] if "." in name else name


def open_binary(path: str) -> IO[bytes]:
    """Open a local file for binary reading, decompressing `.gz` / `.zst` transparently."""
    low = path.lower()
    if low.endswith(".gz"):
        return gzip.open(path, "rb")
    if low.endswith(".zst"):
        import zstandard

        fh = open(path, "rb")
        return zstandard.ZstdDecompressor().stream_reader(fh, closefd=True)
    return open(path, "rb")


def read_bytes(path: str) -> bytes:
    with open_binary(path) as fh:
        data = fh.read()
    return data[len(BOM):] if data.startswith(BOM) else data


def iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line bytes without the line end); BOM stripped, CRLF accepted."""
    with open_binary(path) as raw:
        fh = io.BufferedReader(raw) if not hasattr(raw, "peek") else raw
        for n, line in enumerate(fh, 1):
            if n == 1 and line.startswith(BOM):
                line = line[len(BOM):]
            if line.endswith(b"\n"):
                line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            yield n, line


def decode_line(line: bytes) -> tuple[str | None, str]:
    """(text, "") or (None, detail) for bytes that are not valid UTF-8."""
    try:
        return line.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 byte 0x{line[exc.start]:02x} at byte offset {exc.start}"


def _lossy(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


def iter_jsonl(path: str) -> Iterator[tuple]:
    """Rows of a JSON Lines file; each line must hold one JSON object."""
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        text, why = decode_line(line)
        if text is None:
            yield ("reject", n, "invalid_utf8", why, _lossy(line))
            continue
        try:
            obj = loads(text)
        except JSONDecodeError as exc:
            yield ("reject", n, "bad_json", f"{path}:{n}: {_json_error(exc)}", text)
            continue
        if not isinstance(obj, dict):
            yield ("reject", n, "wrong_type", f"line holds a JSON {type(obj).__name__}, expected an object", text)
            continue
        yield ("row", n, obj, text)


def _json_error(exc: Exception) -> str:
    msg = getattr(exc, "msg", None) or str(exc)
    line, col = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    return f"{msg} (line {line}, column {col})" if line is not None else msg


def iter_json_document(path: str) -> Iterator[tuple]:
    """Rows of a JSON document: an array of objects (row = 1-based index) or one object (row 1).

    A document that does not parse is one reject naming the parser's line and column.
    """
    data = read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        yield ("reject", line, "invalid_utf8",
               f"{path}: invalid UTF-8 byte 0x{data[exc.start]:02x} on line {line}; the document cannot be read",
               _lossy(data[:400]))
        return
    try:
        doc = loads(text)
    except JSONDecodeError as exc:
        if _first_line_is_object(text):  # a `.json` file that is really JSON Lines
            yield from iter_jsonl(path)
            return
        line = getattr(exc, "lineno", None) or 1
        yield ("reject", line, "bad_json", f"{path}: {_json_error(exc)}", text[:400])
        return
    items = doc if isinstance(doc, list) else [doc]
    for i, obj in enumerate(items, 1):
        raw_text = dumps(obj)
        if isinstance(obj, dict):
            yield ("row", i, obj, raw_text)
        else:
            yield ("reject", i, "wrong_type", f"element {i} is a JSON {type(obj).__name__}, expected an object", raw_text)


def _first_line_is_object(text: str) -> bool:
    first = text.lstrip().split("\n", 1)
    if len(first) < 2:
        return False
    try:
        return isinstance(loads(first[0]), dict)
    except JSONDecodeError:
        return False


def iter_duckdb_lines(uri: str, batch_size: int = 8192) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line bytes) of a text file read through DuckDB (`hf://` URIs)."""
    import duckdb

    literal = sql.literal(uri)
    con = duckdb.connect()
    try:
        # one VARCHAR column: a delimiter byte that text never holds, no quoting, no sniffing
        rel = con.sql(f"SELECT line FROM read_csv({literal}, columns={{'line': 'VARCHAR'}}, delim='\\x01', "
                      f"header=false, quote='', escape='', auto_detect=false, strict_mode=false)")
        n = 0
        for batch in rel.to_arrow_reader(batch_size):
            for line in batch.column(0).to_pylist():
                n += 1
                yield n, (line or "").rstrip("\r").encode("utf-8")
    finally:
        con.close()


def iter_csv(path: str, delimiter: str = ",") -> Iterator[tuple]:
    """Rows of a CSV file with a header; quoted fields may hold newlines."""
    with open_binary(path) as raw:
        # surrogateescape keeps bad bytes visible per row instead of failing the file
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        for i, fields in enumerate(reader, 1):
            raw_text = delimiter.join(fields)
            if any(_has_surrogate(f) for f in fields):
                yield ("reject", i, "invalid_utf8", "row holds bytes that are not valid UTF-8",
                       raw_text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
                continue
            if len(fields) != len(header):
                yield ("reject", i, "wrong_field_count", f"{len(fields)} fields, header has {len(header)}", raw_text)
                continue
            row = dict(zip(header, fields))
            yield ("row", i, row, dumps(row))


_SURROGATE = re.compile("[\udc80-\udcff]")


def _has_surrogate(s: str) -> bool:
    return bool(_SURROGATE.search(s))


def iter_parquet(path: str, batch_size: int = 8192) -> Iterator[tuple]:
    """Rows of a Parquet file (row = 1-based position in the file)."""
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        for obj in batch.to_pylist():
            n += 1
            yield ("row", n, obj, dumps_lenient(obj))


def dumps_lenient(obj) -> str:
    """JSON text of a native row; values JSON lacks (bytes, dates) become strings."""
    try:
        return dumps(obj)
    except TypeError:
        return _json.dumps(obj, ensure_ascii=False, default=str)


def iter_duckdb(uri: str, batch_size: int = 8192) -> Iterator[tuple]:
    """Rows of any file DuckDB reads (`hf://datasets/...` URIs included) by its suffix.

    Remote reads need DuckDB's httpfs extension (auto-loaded where the network allows).
    Row numbers are 1-based positions in DuckDB's scan order of the file.
    """
    import duckdb

    suffix = base_suffix(uri)
    fn = {".parquet": "read_parquet", ".csv": "read_csv", ".tsv": "read_csv",
          ".json": "read_json_auto", ".jsonl": "read_json_auto", ".ndjson": "read_json_auto"}.get(suffix)
    if fn is None:
        raise ValueError(f"{uri}: cannot tell the file type from suffix {suffix!r}")
    con = duckdb.connect()
    try:
        literal = sql.literal(uri)
        reader = con.sql(f"SELECT * FROM {fn}({literal})").to_arrow_reader(batch_size)
        n = 0
        for batch in reader:
            for obj in batch.to_pylist():
                n += 1
                yield ("row", n, obj, dumps_lenient(obj))
    finally:
        con.close()


def iter_records(path: str, layout: str | None = None) -> Iterator[tuple]:
    """Rows of a record file by layout (`jsonl`, `json`, `csv`, `parquet`) or, by default, suffix."""
    if path.startswith("hf://"):
        yield from iter_duckdb(path)
        return
    layout = layout or {".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(base_suffix(path), "jsonl")
    if layout == "json":
        yield from iter_json_document(path)
    elif layout == "parquet":
        yield from iter_parquet(path)
    elif layout == "csv":
        yield from iter_csv(path)
    elif layout == "duckdb":
        yield from iter_duckdb(path)
    else:
        yield from iter_jsonl(path)


# -- field checks used by every reader's convert --------------------------------------------
class FieldError(Exception):
    """A raw row lacks a field or holds the wrong type; `reason` is the reject reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def need_str(raw: dict, field: str, allow_empty: bool = True) -> str:
    """The string field `field` of `raw`, or FieldError(missing_field / null_field / wrong_type / empty_field)."""
    if field not in raw:
        raise FieldError("missing_field", f"field {field!r} is missing")
    v = raw[field]
    if v is None:
        raise FieldError("null_field", f"field {field!r} is null, expected a string")
    if not isinstance(v, str):
        raise FieldError("wrong_type", f"field {field!r} is {type(v).__name__}, expected a string")
    if not allow_empty and not v.strip():
        raise FieldError("empty_field", f"field {field!r} is empty")
    return v


def opt_str(raw: dict, field: str) -> str | None:
    """An optional string field: None when missing or null, FieldError(wrong_type) otherwise."""
    v = raw.get(field)
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str):
        raise FieldError("wrong_type", f"field {field!r} is {type(v).__name__}, expected a string")
    return v


def need_str_list(raw: dict, field: str, required: bool = False) -> list[str]:
    """A list-of-strings field (empty list when missing and not required)."""
    v = raw.get(field)
    if v is None:
        if required:
            raise FieldError("missing_field" if field not in raw else "null_field", f"field {field!r} is missing")
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise FieldError("wrong_type", f"field {field!r} is {type(v).__name__}, expected a list of strings")
    return v


_OPTIONS_HEAD = re.compile(r"(?im)^[ \t]*options[ \t]*:?[ \t]*$")


def split_options(text: str) -> tuple[str, list[str]]:
    """Split a FLAN-style options block (`Options:` then `- a` lines) out of a prompt.

    Returns (text without the block, options); options is empty when there is no block.
    The last `Options:` header wins; its options are the `- ` lines right after it.
    """
    if "opt" not in text.lower():  # a header holds "options" in some case, and o, p, t have no other case forms
        return text, []
    heads = list(_OPTIONS_HEAD.finditer(text))
    if not heads:
        return text, []
    m = heads[-1]
    lines = text[m.end():].split("\n")
    opts, used = [], 0
    for ln in lines[1:] if lines and not lines[0].strip() else lines:
        if ln.lstrip().startswith("-"):
            opts.append(ln.lstrip()[1:].strip())
            used += 1
        elif ln.strip() or opts:
            break
    if not opts:
        return text, []
    rest = "\n".join(lines[(1 if lines and not lines[0].strip() else 0) + used:])
    stem = (text[: m.start()].rstrip() + ("\n" + rest.strip() if rest.strip() else "")).strip()
    return stem, [o for o in opts if o]


# -- field mapping (`columns` option) ------------------------------------------------------
def lookup(obj, path: str):
    """(True, value) of `path` in `obj`: the key itself, else a dotted path into nested objects."""
    if isinstance(obj, dict) and path in obj:
        return True, obj[path]
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


class Columns:
    """A source's `columns` option (LLaMA-Factory's `dataset_info.json` columns and tags):
    the reader's field name -> the dataset's (a dotted path reaches into nested objects), and
    `roles`: the dataset's role name -> the reader's. `row` / `turn` give a native object with
    the reader's names (a mapped field the object lacks is missing); unmapped keys stay."""

    def __init__(self, spec: dict | None, turn_fields: frozenset = frozenset()):
        spec = dict(spec or {})
        self.roles: dict = dict(spec.pop("roles", None) or {})
        self.row_map = {k: v for k, v in spec.items() if k not in turn_fields}
        self.turn_map = {k: v for k, v in spec.items() if k in turn_fields}

    @staticmethod
    def _apply(obj, mapping: dict):
        if not mapping or not isinstance(obj, dict):
            return obj
        out = {k: v for k, v in obj.items() if k not in mapping.values() or k in mapping}
        for mine, theirs in mapping.items():
            found, value = lookup(obj, theirs)
            if found:
                out[mine] = value
            else:
                out.pop(mine, None)
        return out

    def row(self, raw: dict) -> dict:
        return self._apply(raw, self.row_map)

    def turn(self, t):
        return self._apply(t, self.turn_map)

    def role(self, native: str) -> str:
        return self.roles.get(native, native)


def check_columns(source, fields: frozenset, turn_fields: frozenset, roles: frozenset) -> None:
    """Recipe-time check of a `columns` option: known reader fields, string names, known roles."""
    spec = source.options.get("columns")
    where = f"source {source.name!r}: options.columns"
    if not isinstance(spec, dict):
        raise RecipeError(f"{where} must be a mapping of {source.format} field names to the dataset's")
    unknown = set(spec) - fields - turn_fields - {"roles"}
    if unknown:
        raise RecipeError(f"{where}: unknown fields {sorted(unknown)} for format {source.format!r}; "
                          f"known: {sorted(fields | turn_fields | ({'roles'} if roles else set()))}")
    for k, v in spec.items():
        if k != "roles" and (not isinstance(v, str) or not v.strip()):
            raise RecipeError(f"{where}.{k} must be the dataset's field name, got {v!r}")
    role_map = spec.get("roles") or {}
    if not isinstance(role_map, dict) or (role_map and not roles):
        raise RecipeError(f"{where}.roles must map the dataset's role names to {source.format} role names")
    bad = {k: v for k, v in role_map.items() if not isinstance(v, str) or v.strip().lower() not in roles}
    if bad:
        raise RecipeError(f"{where}.roles: {bad} name no {source.format} role; known: {sorted(roles)}")


# -- canonical records --------------------------------------------------------------------
def make_record(
    *,
    source: str,
    task: str,
    template_id: str,
    example_id: str,
    messages: list[dict],
    origin_file: str,
    origin_row: int,
    answer_choices: list[str] | None = None,
    meta: dict | None = None,
    lang: str | None = None,
    tools: list[dict] | None = None,
) -> dict:
    """One `records` row (tasks.schema.RECORDS) with its stable id and derived counts.

    A message holds `role`, `content` and only the MESSAGE extras it has (Arrow writes the
    absent ones as null). `tools` (the schemas offered) is stored as canonical JSON, None when empty."""

    tools_json = canonical_json(tools) if tools else None
    return {
        "record_id": fast_record_id(source, messages, template_id, example_id, tools_json),
        "source": source,
        "task": task,
        "template_id": template_id,
        "example_id": example_id,
        "messages": messages,
        "answer_choices": list(answer_choices or []),
        "origin_file": origin_file,
        "origin_row": origin_row,
        "n_turns": len(messages),
        "n_chars": sum(len(m["content"] or "") if m.keys() == _PLAIN_TURN else len(turn_text(m)) for m in messages),
        "lang": lang,
        "meta": canonical_json(meta or {}),
        "tools": tools_json,
    }


#: The keys of a turn without MESSAGE extras: its turn_text is its content.
_PLAIN_TURN = frozenset(("role", "content"))


def fast_record_id(source: str, messages: list[dict], template_id: str = "", example_id: str = "",
                   tools: str | None = None) -> str:
    """`tasks.schema.record_id`, the same id: for records of plain turns (role and content
    strings, no extras) the JSON it hashes is written by orjson, which gives the same bytes as
    its `json.dumps(..., ensure_ascii=False, separators=(",", ":"))` for lists of strings
    (tests/test_convert.py checks), about 5x faster; anything else goes to `record_id`."""
    turns = []
    for m in messages:
        if m.keys() != _PLAIN_TURN or type(m["role"]) is not str or not (type(m["content"]) is str or m["content"] is None):
            return record_id(source, messages, template_id, example_id, tools)
        turns.append([m["role"], m["content"]])
    parts = [source, template_id, example_id, turns] if tools is None else [source, template_id, example_id, turns, tools]
    if _dumps_bytes is None or not all(type(p) is str for p in parts if p is not turns):
        return record_id(source, messages, template_id, example_id, tools)
    try:
        payload = _dumps_bytes(parts)
    except TypeError:  # orjson refuses a lone surrogate: record_id raises what it always raised
        return record_id(source, messages, template_id, example_id, tools)
    return hashlib.sha256(payload).hexdigest()[:24]


def convert_reject(source: str, origin_file: str, origin_row: int, reason: str, detail: str, raw) -> dict:
    """A `rejects` row of the convert step."""

    raw_text = raw if isinstance(raw, str) else dumps_lenient(raw)
    return reject_row("convert", reason, source=source, origin_file=origin_file, origin_row=origin_row,
                      detail=detail, raw=raw_text)
