"""Dolly reader: JSONL (or JSON array / Parquet / CSV) rows `instruction`, `context`, `response`, `category`.

The user turn is the instruction with its context rendered through one of several
instruction templates (tasks.render.DOLLY_TEMPLATES); the pick is seeded by the recipe
seed and the example id, so it does not depend on file order, and recorded in
`template_id`. An empty context uses the no-context template. task = category
(`dolly` when the row has none). Option `layout` (jsonl|json|csv|parquet) overrides
the layout the file suffix implies.
"""
from __future__ import annotations

import random
from typing import Iterator

from tasks.ingest.common import FieldError, convert_reject, make_record, need_str, opt_str, stable_hash, stable_int
from tasks.ingest.reader import Reader, register
from tasks.render import render_dolly


@register
class DollyReader(Reader):
    name = "dolly"

    @classmethod
    def convert(cls, recipe, source, rows, pool=None) -> Iterator[dict]:
        for origin_file, origin_row, raw in rows:
            try:
                instruction = need_str(raw, "instruction", allow_empty=False)
                response = need_str(raw, "response", allow_empty=False)
                context = opt_str(raw, "context") or ""
                category = opt_str(raw, "category") or "dolly"
            except FieldError as e:
                yield convert_reject(source.name, origin_file, origin_row, e.reason, e.detail, raw)
                continue
            example_id = stable_hash(instruction, context, response)[:20]
            rng = random.Random(stable_int(recipe.seed, source.name, example_id))
            template_id, user = render_dolly(instruction, context, rng)
            extra = {k: v for k, v in raw.items() if k not in ("instruction", "context", "response", "category")}
            yield make_record(
                source=source.name, task=source.task or category, template_id=template_id, example_id=example_id,
                messages=[{"role": "user", "content": user}, {"role": "assistant", "content": response.strip()}],
                origin_file=origin_file, origin_row=origin_row,
                meta={"category": category, "has_context": bool(context.strip()), **extra},
            )
