"""P3 / promptsource readers.

`p3`: P3 records, `inputs_pretokenized` + `targets_pretokenized` (+ optional
`answer_choices`), or plain `inputs`/`targets` strings (token-id lists are rejected
`wrong_type`), in JSONL, a JSON array or Parquet. task = source `task`, else the file
name (or its directory's name when the file is named after a split, as in P3's
`<dataset_prompt>/train.jsonl`). P3 records carry no id of the underlying example, so
`example_id` is a hash of task+inputs+targets. A `p3` source with `templates:` set is
read as `promptsource`.

`promptsource`: raw dataset rows (JSONL, JSON array, Parquet or CSV) plus a promptsource
templates.yaml (source `templates`). Per row, `templates_per_row` templates are drawn,
seeded by recipe seed + example id, from the file's templates (or only `template_names`),
and rendered in the sandbox of tasks.render. `example_id` is the row's
`options.id_field` value (e.g. `idx`) or else a hash of the whole row, so every rendering
of one row shares it. task = `<dataset>[/<subset>]:<template name>`; template_id = the
template's uuid; answer_choices = the rendered answer choices; meta records the template
name, the full pick for the row and the template metadata. A template that fails for a
row (Jinja error, sandbox refusal, empty prompt/target, too long) is a reject naming the
template and row; the row still counts as out when another template rendered.
Options: `id_field`, `layout`, `max_render_chars`.
"""
from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Iterator

from tasks.errors import RecipeError
from tasks.ingest.common import (
    FieldError,
    canonical_json,
    convert_reject,
    data_stem,
    make_record,
    need_str,
    need_str_list,
    stable_hash,
    stable_int,
)
from tasks.ingest.reader import Reader, register
from tasks.render import MAX_RENDER_CHARS, RenderError, load_promptsource, render_promptsource
from tasks.store import file_sha256

SPLIT_NAMES = {"train", "validation", "valid", "dev", "test"}


def _p3_task(source, file: str) -> str:
    if source.task:
        return source.task
    stem = data_stem(file)
    base = stem.split("-")[0]  # train-00000-of-00001
    return Path(file).parent.name if base in SPLIT_NAMES else stem


@register
class P3Reader(Reader):
    name = "p3"

    options_allowed = frozenset({"layout", "id_field", "max_render_chars"})

    @classmethod
    def check_source(cls, recipe, source) -> None:
        if source.templates:
            PromptsourceReader.check_source(recipe, source)
        else:
            super().check_source(recipe, source)

    @classmethod
    def config_inputs(cls, recipe, source) -> dict:
        return PromptsourceReader.config_inputs(recipe, source) if source.templates else {}

    @classmethod
    def convert(cls, recipe, source, rows, pool=None) -> Iterator[dict]:
        if source.templates:
            yield from PromptsourceReader.convert(recipe, source, rows, pool)
            return
        for origin_file, origin_row, raw in rows:
            try:
                if "inputs_pretokenized" in raw or "targets_pretokenized" in raw:
                    inputs = need_str(raw, "inputs_pretokenized", allow_empty=False)
                    targets = need_str(raw, "targets_pretokenized", allow_empty=False)
                else:
                    inputs = need_str(raw, "inputs", allow_empty=False)
                    targets = need_str(raw, "targets", allow_empty=False)
                choices = need_str_list(raw, "answer_choices")
            except FieldError as e:
                yield convert_reject(source.name, origin_file, origin_row, e.reason, e.detail, raw)
                continue
            task = _p3_task(source, origin_file)
            extra = {k: v for k, v in raw.items()
                     if k not in ("inputs", "targets", "inputs_pretokenized", "targets_pretokenized", "answer_choices")
                     and not isinstance(v, list)}  # token-id lists are not worth keeping
            yield make_record(
                source=source.name, task=task, template_id="", example_id=stable_hash(task, inputs, targets)[:20],
                messages=[{"role": "user", "content": inputs.strip()}, {"role": "assistant", "content": targets.strip()}],
                answer_choices=[c.strip() for c in choices], origin_file=origin_file, origin_row=origin_row, meta=extra,
            )


@functools.lru_cache(maxsize=32)
def _collection(path: str, sha256: str):
    return load_promptsource(path)


def collection(recipe, source):
    # Cached by content hash, like the convert key (config_inputs): an edit that keeps the file's mtime
    # (same-second timestamps from tar or `cp -p`, an edit within the clock tick) must not render old text.
    path = recipe.resolve(source.templates)
    return _collection(path, file_sha256(path))


@register
class PromptsourceReader(Reader):
    name = "promptsource"
    options_allowed = frozenset({"layout", "id_field", "max_render_chars"})

    @classmethod
    def check_source(cls, recipe, source) -> None:
        if not source.templates:
            raise RecipeError(f"source {source.name!r}: format {source.format!r} needs `templates:` (a templates.yaml)")
        path = recipe.resolve(source.templates)
        if not Path(path).is_file():
            raise RecipeError(f"source {source.name!r}: templates file not found: {source.templates}")
        coll = collection(recipe, source)
        cls._templates(source, coll, path)
        Reader.check_source.__func__(cls, recipe, source)
        n = source.options.get("max_render_chars", MAX_RENDER_CHARS)
        if not isinstance(n, int) or n < 1:
            raise RecipeError(f"source {source.name!r}: options.max_render_chars must be a positive int, got {n!r}")

    @classmethod
    def _templates(cls, source, coll, path: str):
        templates = list(coll.templates)
        if source.template_names is not None:
            names = {t.name for t in templates}
            missing = [n for n in source.template_names if n not in names]
            if missing:
                raise RecipeError(f"source {source.name!r}: {path} has no templates named {missing}; "
                                  f"it has {sorted(names)}")
            templates = [t for t in templates if t.name in set(source.template_names)]
        if not templates:
            raise RecipeError(f"source {source.name!r}: {path} holds no templates")
        return templates

    @classmethod
    def config_inputs(cls, recipe, source) -> dict:
        return {"templates_sha256": file_sha256(recipe.resolve(source.templates))}

    @classmethod
    def convert(cls, recipe, source, rows, pool=None) -> Iterator[dict]:
        coll = collection(recipe, source)
        templates = cls._templates(source, coll, source.templates)
        id_field = source.options.get("id_field")
        max_chars = int(source.options.get("max_render_chars", MAX_RENDER_CHARS))
        k = min(source.templates_per_row, len(templates))
        for origin_file, origin_row, raw in rows:
            if id_field and raw.get(id_field) is None:
                yield convert_reject(source.name, origin_file, origin_row, "missing_field",
                                     f"id field {id_field!r} is missing or null", raw)
                continue
            example_id = str(raw[id_field]) if id_field else stable_hash(canonical_json(raw))[:20]
            rng = random.Random(stable_int(recipe.seed, source.name, example_id))
            picked = rng.sample(templates, k)
            for t in picked:
                where = f"{origin_file}:{origin_row}"
                try:
                    prompt, target, choices = render_promptsource(
                        t, raw, where, random.Random(stable_int(recipe.seed, example_id, t.id)), max_chars)
                except RenderError as e:
                    yield convert_reject(source.name, origin_file, origin_row, e.reason, str(e), raw)
                    continue
                md = t.metadata
                yield make_record(
                    source=source.name, task=f"{coll.dataset_name}:{t.name}", template_id=t.id, example_id=example_id,
                    messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": target}],
                    answer_choices=choices, origin_file=origin_file, origin_row=origin_row,
                    meta={"template_name": t.name, "template_pick": [p.name for p in picked],
                          "choices_in_prompt": md.get("choices_in_prompt"), "original_task": md.get("original_task")},
                )
