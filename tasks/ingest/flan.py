"""FLAN readers.

`flan`: FLAN collection records as published for the Flan 2021 / Flan v2 submixes,
`inputs`, `targets`, `_task_name`, `_task_source`, `_template_type`, `_template_idx`, in
JSONL, a JSON array or Parquet. task = `_task_name`; template_id = `<type>:<idx>`;
answer_choices = the `OPTIONS:` block of `inputs` when there is one. These records carry
no id of the underlying example, so `example_id` is a hash of task+inputs+targets (template
variants of one example do not share it). A `.tsv` path given to `flan` is read as CoT.

`flan_cot`: raw FLAN chain-of-thought TSVs (`question \\t answer \\t rationale`, no header,
newlines written as a literal backslash-n). The options a question embeds after its last
`Options:` line, as `- a` lines or labelled `(A) 300` lines (AQuA; kept with the label,
like QASC's `- (A) DNA`), are split off the question into `answer_choices` (every
rendering of the row carries them). Each row is rendered with the project's own
FLAN-style templates (tasks.render.COT_TEMPLATES) in the FLAN template types `zs_opt`,
`zs_noopt`, `fs_opt`, `fs_noopt`. Per row, `templates_per_row` distinct types are drawn,
seeded by recipe seed + example id. An `_opt` type on a question without options uses its
`_noopt` twin, a `_noopt` type on an answer that is an option label (`(C)`, `Sentence A`)
its `_opt` twin (tasks.render.cot_template_type); `_noopt` prompts never show options.
Few-shot exemplars (`options.num_exemplars`, default 2) are drawn, seeded, from the
file's first rows (same task), never the row itself, and only from examples the split
keeps in training (tasks.split.held_out_before_split), so no held-out example leaks
into a training prompt; the split configuration is therefore part of the convert key.
A few-shot type without enough exemplars uses its zero-shot twin (recorded in meta).
meta: `template_type`, `requested_type`, `exemplar_rows`, `shots_chars` (characters of
the user turn taken by the exemplars, which decontamination leaves out of held-out
prompts), `exemplar_pool: true` on the rows the pool holds (the split keeps them in training).
task = `options.task` / source `task`, else the file name without `_train`/`_dev`/`_test`.
example_id = hash(task, question, options): every rendering of a row shares it.
Options: `template_types` (list, default all four), `num_exemplars`.
"""
from __future__ import annotations

import random
import re
from typing import Iterator

from tasks.decontam import SHOTS_CHARS
from tasks.errors import RecipeError
from tasks.ingest.common import (
    FieldError,
    base_suffix,
    convert_reject,
    data_stem,
    decode_line,
    dumps,
    iter_duckdb_lines,
    iter_lines,
    iter_records,
    make_record,
    need_str,
    opt_str,
    split_options,
    stable_hash,
    stable_int,
)
from tasks.ingest.reader import POOL_ROWS, Reader, register
from tasks.render import COT_TEMPLATES, FEW_SHOT_JOINER, TEMPLATE_TYPES, cot_template_type, render_cot
from tasks.split import PINNED, held_out_before_split

COT_FIELDS = ("question", "answer", "rationale")
#: An option line written with its label and no bullet (AQuA: "(A) 300").
_LABELLED_OPTION = re.compile(r"(?m)^[ \t]*(\([A-Z]\))[ \t]*(?=\S)")


def split_cot_options(question: str) -> tuple[str, list[str]]:
    """(question without its options block, options): the `- a` lines after the last
    `Options:` header (split_options), else its labelled lines `(A) 300`, kept with their labels
    (one space after the label)."""
    stem, options = split_options(question)
    if options:
        return stem, options
    head = question.lower().rfind("options")
    if head < 0:
        return question, []
    stem, options = split_options(question[:head] + _LABELLED_OPTION.sub(r"- \1 ", question[head:]))
    return (stem, options) if options else (question, [])


def _example_id(task: str, stem: str, options: list[str]) -> str:
    """Every rendering of one CoT row shares it; the split's group."""
    return stable_hash(task, stem, options)[:20]


def _is_tsv(file: str) -> bool:
    return base_suffix(file) == ".tsv"


def _unescape(s: str) -> str:
    return s.replace("\\n", "\n").strip()


@register
class FlanReader(Reader):
    name = "flan"
    version = 3  # 3: CoT (a .tsv) as FlanCotReader 3

    options_allowed = frozenset({"layout", "template_types", "num_exemplars", "task"})

    @classmethod
    def check_source(cls, recipe, source) -> None:
        FlanCotReader.check_source(recipe, source)

    @classmethod
    def read(cls, recipe, source, file: str) -> Iterator[tuple]:
        if _is_tsv(file):
            return FlanCotReader.read(recipe, source, file)
        return iter_records(file, source.options.get("layout"))

    @classmethod
    def exemplar_pool(cls, recipe, source, file, rows):
        return FlanCotReader.exemplar_pool(recipe, source, file, rows) if _is_tsv(file) else None

    @classmethod
    def config_inputs(cls, recipe, source) -> dict:
        return FlanCotReader.config_inputs(recipe, source) if _is_tsv(source.path) else {}

    @classmethod
    def convert(cls, recipe, source, rows, pool=None) -> Iterator[dict]:
        if rows and _is_tsv(rows[0][0]):
            yield from FlanCotReader.convert(recipe, source, rows, pool)
            return
        for origin_file, origin_row, raw in rows:
            try:
                inputs = need_str(raw, "inputs", allow_empty=False)
                targets = need_str(raw, "targets", allow_empty=False)
                task = source.task or opt_str(raw, "_task_name") or source.name
                ttype = opt_str(raw, "_template_type") or ""
                tidx = opt_str(raw, "_template_idx") or ""
                task_source = opt_str(raw, "_task_source")
            except FieldError as e:
                yield convert_reject(source.name, origin_file, origin_row, e.reason, e.detail, raw)
                continue
            _, options = split_options(inputs)
            extra = {k: v for k, v in raw.items() if k not in ("inputs", "targets", "_task_name")}
            yield make_record(
                source=source.name, task=task, template_id=f"{ttype}:{tidx}" if ttype or tidx else "",
                example_id=stable_hash(task, inputs, targets)[:20],
                messages=[{"role": "user", "content": inputs.strip()}, {"role": "assistant", "content": targets.strip()}],
                answer_choices=options, origin_file=origin_file, origin_row=origin_row,
                meta={**extra, "_task_source": task_source},
            )


@register
class FlanCotReader(Reader):
    name = "flan_cot"
    version = 3  # 3: one space after an option label; 2: labelled options parsed, exemplars from the training side, label answers keep options
    options_allowed = frozenset({"layout", "template_types", "num_exemplars", "task"})

    @classmethod
    def check_source(cls, recipe, source) -> None:
        types = source.options.get("template_types", list(TEMPLATE_TYPES))
        bad = [t for t in types if t not in COT_TEMPLATES] if isinstance(types, list) else [types]
        if bad or not types:
            raise RecipeError(f"source {source.name!r}: options.template_types must be a non-empty list of "
                              f"{list(TEMPLATE_TYPES)}; got {types!r}")
        n = source.options.get("num_exemplars", 2)
        if not isinstance(n, int) or not 0 <= n <= 16:
            raise RecipeError(f"source {source.name!r}: options.num_exemplars must be an int 0..16, got {n!r}")
        Reader.check_source.__func__(cls, recipe, source)

    @classmethod
    def read(cls, recipe, source, file: str) -> Iterator[tuple]:
        lines = iter_duckdb_lines(file) if file.startswith("hf://") else iter_lines(file)
        for n, line in lines:
            if not line.strip():
                continue
            text, why = decode_line(line)
            if text is None:
                yield ("reject", n, "invalid_utf8", why, line.decode("utf-8", "replace"))
                continue
            fields = text.split("\t")
            if len(fields) != 3:
                yield ("reject", n, "wrong_field_count",
                       f"{len(fields)} tab-separated fields, expected 3 (question, answer, rationale)", text)
                continue
            row = dict(zip(COT_FIELDS, fields))
            yield ("row", n, row, dumps(row))

    @classmethod
    def _task(cls, source, file: str) -> str:
        return source.options.get("task") or source.task or re.sub(r"_(train|dev|validation|test)$", "", data_stem(file))

    @classmethod
    def _parse(cls, raw: dict) -> tuple[str, list[str], str, str]:
        q, a, r = (_unescape(need_str(raw, f)) for f in COT_FIELDS)
        for f, v in zip(COT_FIELDS, (q, a, r)):
            if not v:
                raise FieldError("empty_field", f"field {f!r} is empty")
        stem, options = split_cot_options(q)
        return stem, options, a, r

    @classmethod
    def exemplar_pool(cls, recipe, source, file, rows):
        """The parsed rows among the file's first POOL_ROWS whose example the split keeps in training."""
        task = cls._task(source, file)
        pool = []
        for _, origin_row, raw in rows[:POOL_ROWS]:
            try:
                stem, options, answer, rationale = cls._parse(raw)
            except FieldError:
                continue
            if not held_out_before_split(recipe.split, source.name, _example_id(task, stem, options)):
                pool.append((origin_row, stem, options, answer, rationale))
        return pool

    @classmethod
    def config_inputs(cls, recipe, source) -> dict:
        """The split decides which examples may be exemplars, so it is part of the convert key."""
        return {"split": recipe.split.model_dump()}

    @classmethod
    def convert(cls, recipe, source, rows, pool=None) -> Iterator[dict]:
        types = list(source.options.get("template_types", TEMPLATE_TYPES))
        n_shots = source.options.get("num_exemplars", 2)
        pool = pool or []
        pinned = {e[0] for e in pool}
        tasks: dict[str, str] = {}
        for origin_file, origin_row, raw in rows:
            try:
                stem, options, answer, rationale = cls._parse(raw)
            except FieldError as e:
                yield convert_reject(source.name, origin_file, origin_row, e.reason, e.detail, raw)
                continue
            task = tasks.get(origin_file) or tasks.setdefault(origin_file, cls._task(source, origin_file))
            example_id = _example_id(task, stem, options)
            rng = random.Random(stable_int(recipe.seed, source.name, example_id))
            picked = rng.sample(types, min(source.templates_per_row, len(types)))
            seen = set()
            for requested in picked:
                ttype = cot_template_type(requested, options, answer)
                exemplars = []
                if ttype.startswith("fs_") and n_shots > 0 and len(pool) > n_shots:
                    # one spare draw, so the row itself can be left out without a second pass
                    cand = rng.sample(pool, n_shots + 1)
                    exemplars = [e for e in cand if e[0] != origin_row][:n_shots]
                if ttype.startswith("fs_") and not exemplars:
                    ttype = "zs_" + ttype[3:]
                idx = rng.randrange(len(COT_TEMPLATES[ttype]))
                if (ttype, idx) in seen:  # two requested types collapsed onto one template
                    continue
                seen.add((ttype, idx))
                shots = "".join(f"{i}\n{t}{FEW_SHOT_JOINER}" for i, t in
                                (render_cot(ttype, idx, *e[1:]) for e in exemplars))
                inp, tgt = render_cot(ttype, idx, stem, options, answer, rationale)
                yield make_record(
                    source=source.name, task=task, template_id=f"cot:{ttype}:{idx}", example_id=example_id,
                    messages=[{"role": "user", "content": shots + inp}, {"role": "assistant", "content": tgt}],
                    answer_choices=options,
                    origin_file=origin_file, origin_row=origin_row,
                    meta={"template_type": ttype, "requested_type": requested, "exemplar_rows": [e[0] for e in exemplars],
                          SHOTS_CHARS: len(shots), **({PINNED: True} if origin_row in pinned else {})},
                )
