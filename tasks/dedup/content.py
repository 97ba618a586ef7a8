"""What dedup compares of a record: the source's own fields where a template rendered them.

A record rendered through a template carries the template's wording in its turns (the Dolly
instruction templates, FLAN CoT's zero/few-shot templates and exemplars, Super-NI's definition
and positive examples, a promptsource template's Jinja text). Hashing that text judges two
records partly on their templates: the same Dolly row under two context templates has a
median word 5-gram Jaccard of 0.89 on the real Dolly sample (43 pairs of its first 208 rows
under two source names; 9% of them under 0.8). So the projection of such a
record is made of the fields its source gave, recovered here:

| source format, `template_id` | prompt side (`user`) | response side (`assistant`) |
|---|---|---|
| `dolly`, `dolly:*` | instruction, context | response |
| `flan_cot` / `flan` (.tsv), `cot:*` | question (its options block removed), the options | rationale, answer |
| `super_ni`, `super_ni:*` | the instance's input | its output |
| `promptsource` (or `p3` with `templates:`) | every field of the dataset row but `options.id_field`, by name | the rendered target |

`conversation` is the prompt side then the response side, except for promptsource, whose
dataset row already holds the answer (its label) and whose rendered target is the template's
wording of it: there `conversation` is the row's fields alone. Fields are joined by newlines.
Every other record (chat sources, FLAN and P3 records, which are published already rendered,
and Alpaca, whose rendering is its own fields) is projected from its turns as before
(`tasks.schema.turn_text`: reasoning, content, tool calls).

Dolly, FLAN CoT and Super-NI fields are recovered from the rendering by the template that
made it (`tasks.render`): the zero-shot part after the exemplars (meta `shots_chars`) is split
at the template's literal text and accepted only if putting the fields back into the template
gives the rendering again; where it does not (a template changed without this module), the
rendered text is compared and the step's stats count the record (`content_fallback`). A field
that itself contains the template text after it (a Dolly instruction holding
"\\n\\nContext:\\n") splits at the first occurrence for short fields (instruction, options,
answer) and the last for long ones (context, question, rationale). Promptsource rows are read
back from the ingest step's `records_raw` (the templates are third-party Jinja, which cannot
be inverted), matched by `origin_row`.
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.errors import TunelineError
from tasks.ingest.common import loads
from tasks.render import COT_TEMPLATES, DOLLY_NO_CONTEXT, DOLLY_TEMPLATES

#: Fields split at the last occurrence of the text after them (long fields); others at the first.
GREEDY = frozenset({"context", "question", "rationale"})
#: Super-NI's zero-shot tail (tasks.ingest.super_ni.render) before the instance's input.
SUPER_NI_PREFIX = "Now complete the following example -\nInput: "


# -- inverting a str.format template ---------------------------------------------------------
@dataclass(frozen=True)
class Template:
    """A `str.format` template with named fields, inverted by `fields(text)`."""

    source: str

    @property
    def parts(self) -> list[tuple[str, str | None]]:
        return [(lit, name) for lit, name, _, _ in string.Formatter().parse(self.source)]

    def fields(self, text: str) -> dict[str, str] | None:
        """The field values that render to `text`, or None when the template cannot have made it."""
        parts = self.parts
        out: dict[str, str] = {}
        pos, end = 0, len(text)
        tail = parts[-1][0] if parts[-1][1] is None else ""
        if not text.endswith(tail):
            return None
        end -= len(tail)
        for k, (lit, name) in enumerate(parts):
            if name is None:  # the trailing literal, checked above
                break
            if not text.startswith(lit, pos) or pos + len(lit) > end:
                return None
            pos += len(lit)
            nxt = parts[k + 1] if k + 1 < len(parts) else ("", None)
            if nxt[1] is None:  # the last field: up to the trailing literal
                out[name] = text[pos:end]
                pos = end
                continue
            sep = nxt[0]
            at = text.rfind(sep, pos, end) if name in GREEDY else text.find(sep, pos, end)
            if at < 0:
                return None
            out[name] = text[pos:at]
            pos = at
        try:
            ok = self.source.format(**out) == text
        except (KeyError, IndexError, ValueError):
            ok = False
        return out if ok else None


_DOLLY = {f"dolly:context_{i}": Template(t) for i, t in enumerate(DOLLY_TEMPLATES)}
_DOLLY["dolly:no_context"] = Template(DOLLY_NO_CONTEXT)
_COT = {(ttype, i): (Template(inp), Template(tgt)) for ttype, pairs in COT_TEMPLATES.items()
        for i, (inp, tgt) in enumerate(pairs)}


# -- per format: the fields of one record ---------------------------------------------------------
#: (prompt-side fields, response-side fields) of one record, or None when not recovered.
Fields = tuple[list[str], list[str]]


def _turn(messages: list[dict], role: str) -> str | None:
    texts = [m["content"] or "" for m in messages if m["role"] == role]
    return texts[0] if len(texts) == 1 else None


def dolly_fields(row: dict) -> Fields | None:
    tpl = _DOLLY.get(row["template_id"])
    user, response = _turn(row["messages"], "user"), _turn(row["messages"], "assistant")
    if tpl is None or user is None or response is None:
        return None
    f = tpl.fields(user)
    if f is None:
        return None
    return [f["instruction"]] + ([f["context"]] if f.get("context") else []), [response]


def cot_fields(row: dict) -> Fields | None:
    _, ttype, idx = (row["template_id"].split(":") + ["", ""])[:3]
    pair = _COT.get((ttype, int(idx) if idx.isdigit() else -1))
    user, target = _turn(row["messages"], "user"), _turn(row["messages"], "assistant")
    if pair is None or user is None or target is None:
        return None
    shots = _shots_chars(row["meta"])
    fi, ft = pair[0].fields(user[shots:]), pair[1].fields(target)
    if fi is None or ft is None:
        return None
    options = list(row["answer_choices"] or [])
    return [fi["question"]] + (["\n".join(options)] if options else []), [ft["rationale"], ft["answer"]]


def super_ni_fields(row: dict) -> Fields | None:
    user, target = _turn(row["messages"], "user"), _turn(row["messages"], "assistant")
    if user is None or target is None:
        return None
    rest = user[_shots_chars(row["meta"]):]
    if not rest.startswith(SUPER_NI_PREFIX):
        return None
    return [rest[len(SUPER_NI_PREFIX):]], [target]


def _shots_chars(meta: str | None) -> int:
    try:
        return int(json.loads(meta or "{}").get("shots_chars") or 0)
    except (ValueError, TypeError, AttributeError):
        return 0


def field_text(value) -> str | None:
    """A dataset field as text: strings as they are, lists one item a line, other values as JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def promptsource_fields(row: dict, raw: dict, id_field: str | None) -> Fields:
    prompt = [t for k in sorted(raw) if k != id_field and (t := field_text(raw[k])) is not None]
    target = _turn(row["messages"], "assistant")
    return prompt, [target] if target is not None else []


# -- a batch ----------------------------------------------------------------------------------
def kind_of(fmt: str | None, has_templates: bool, template_id: str) -> str | None:
    """Which recovery applies to a record of a source of format `fmt`, or None (its turns)."""
    template_id = template_id or ""
    if fmt == "dolly" and template_id.startswith("dolly:"):
        return "dolly"
    if fmt in ("flan_cot", "flan") and template_id.startswith("cot:"):
        return "cot"
    if fmt == "super_ni" and template_id.startswith("super_ni:"):
        return "super_ni"
    if fmt == "promptsource" or (fmt == "p3" and has_templates):
        return "promptsource"
    return None


#: The template_id prefix of rendered records, per format (promptsource: every record).
PREFIX = {"dolly": "dolly:", "flan_cot": "cot:", "flan": "cot:", "super_ni": "super_ni:"}
_RECOVER: dict[str, Callable[[dict], Fields | None]] = {
    "dolly": dolly_fields, "cot": cot_fields, "super_ni": super_ni_fields}
READ_COLUMNS = ["source", "template_id", "messages", "answer_choices", "meta", "origin_row"]


def join(fields: Fields, projection: str, kind: str) -> str:
    prompt, response = fields
    if projection == "prompt":
        parts = prompt
    elif projection == "response":
        parts = response
    else:
        parts = prompt if kind == "promptsource" else prompt + response
    return "\n".join(parts)


class RawRows:
    """The raw rows (`records_raw.raw`, parsed) of the ingest step a convert shard came from, by
    origin row, read forward as a shard's records ask for them (records follow raw row order)."""

    def __init__(self, store, convert_manifest: dict):
        ref = convert_manifest.get("inputs", {}).get("ingest")
        ingest = store.load(ref["step"], ref["key"], verify=False) if ref else None
        if ingest is None:
            raise TunelineError(f"dedup-signatures: convert {convert_manifest['dir']} reads ingest "
                                f"{ref and ref['key']}, which is gone from {store.root}; run the pipeline "
                                f"again from ingest")
        self._batches: Iterator[pa.RecordBatch] = store.iter_batches(ingest, "records_raw", ["origin_row", "raw"],
                                                                     batch_size=8192)
        self._rows: dict[int, str] = {}
        self._last = -1

    def get(self, origin_rows: list[int]) -> list[dict]:
        want = max(origin_rows)
        low = min(origin_rows)
        for r in [r for r in self._rows if r < low]:
            del self._rows[r]
        while self._last < want:
            batch = next(self._batches, None)
            if batch is None:
                break
            rows, raws = batch.column(0).to_pylist(), batch.column(1).to_pylist()
            self._rows.update((r, t) for r, t in zip(rows, raws) if r >= low)
            self._last = rows[-1] if rows else self._last
        missing = [r for r in origin_rows if r not in self._rows]
        if missing:
            raise TunelineError(f"dedup-signatures: raw rows {missing[:5]} not found in the ingest step "
                                f"(records out of raw row order?)")
        return [loads(self._rows[r]) for r in origin_rows]


class Content:
    """The projected text of a shard's records, batch by batch (`text(batch, projection)`)."""

    def __init__(self, recipe, store=None, convert_manifest: dict | None = None):
        self.sources = {s.name: s for s in recipe.sources}
        self.store, self.convert_manifest = store, convert_manifest
        self._raw: RawRows | None = None
        self.fallback = 0  # rendered records whose fields were not recovered (their text is compared)
        self.recovered = 0

    def kinds(self, batch: pa.RecordBatch) -> list[str | None]:
        """`kind_of` every record; vectorised per source, and nothing to do for sources whose
        format renders no template."""
        n = batch.num_rows
        out: list[str | None] = [None] * n
        if not any(kind_of(s.format, bool(s.templates), PREFIX.get(s.format, "")) for s in self.sources.values()):
            return out
        sources = batch.column("source")
        for name, src in self.sources.items():
            prefix = PREFIX.get(src.format, "")
            kind = kind_of(src.format, bool(src.templates), prefix)
            if kind is None:
                continue
            mask = pc.equal(sources, name)
            if prefix:
                mask = pc.and_(mask, pc.starts_with(pc.fill_null(batch.column("template_id"), ""), prefix))
            for i in np.flatnonzero(mask.fill_null(False).to_numpy(zero_copy_only=False)):
                out[i] = kind
        return out

    def text(self, batch: pa.RecordBatch, projection: str, own: pa.Array) -> pa.Array:
        """Projected text of every record of `batch`: recovered fields for rendered records,
        else `own` (the projection of the record's own turns, one per record)."""
        kinds = self.kinds(batch)
        rendered = np.array([k is not None for k in kinds], bool)
        if not rendered.any():
            return own
        idx = np.flatnonzero(rendered)
        rows = batch.select([c for c in READ_COLUMNS if c in batch.schema.names]).take(pa.array(idx)).to_pylist()
        texts: list[str | None] = [None] * len(rows)
        ps = [i for i, j in enumerate(idx) if kinds[j] == "promptsource"]
        if ps:
            if self._raw is None:
                if self.store is None or self.convert_manifest is None:
                    raise TunelineError("dedup: promptsource records need their ingest step's raw rows")
                self._raw = RawRows(self.store, self.convert_manifest)
            for i, raw in zip(ps, self._raw.get([rows[i]["origin_row"] for i in ps])):
                src = self.sources[rows[i]["source"]]
                texts[i] = join(promptsource_fields(rows[i], raw, src.options.get("id_field")), projection,
                                "promptsource")
        fallback = 0
        for i, (row, j) in enumerate(zip(rows, idx)):
            if texts[i] is None:
                fields = _RECOVER[kinds[j]](row)
                if fields is None:
                    fallback += 1
                    texts[i] = own[int(j)].as_py()
                else:
                    texts[i] = join(fields, projection, kinds[j])
        self.recovered += len(rows) - fallback
        self.fallback += fallback
        own = own.cast(pa.string())
        recovered = pa.array(texts, pa.string())
        if rendered.all():
            return recovered
        combined = pa.concat_arrays([own.filter(pa.array(~rendered)), recovered])
        n_plain = int((~rendered).sum())
        order = np.empty(len(rendered), np.int64)  # where each record sits in `combined`
        order[~rendered] = np.arange(n_plain)
        order[rendered] = n_plain + np.arange(len(idx))
        return pc.take(combined, pa.array(order))
