"""Pretraining text reader: rows `{"text": ..., ...}` as JSONL (gzip / zstd too), a JSON array or
Parquet (Dolma, RedPajama / llm-foundry, C4 layouts).

Each row becomes a record of one assistant turn holding the text and nothing else, the
schema's form of pretraining text: training renders it as-is, without the chat template,
and trains every token (tasks.tokens.chat); validation admits it (`roles_alternate`
accepts one assistant turn alone). A stage mixes it in at a share like any source
(`stages[].shares`). A missing, non-string or empty `text`: reject `missing_field` /
`null_field` / `wrong_type` / `empty_field`. Option `columns` maps the dataset's names onto
`text` and `id`. Every other field (Dolma's `metadata`, `source`, ...) is kept in `meta`;
`example_id` = `id` when given, else a content hash. task = the source's `task` or `text`.
"""
from __future__ import annotations

from typing import Iterator

from tasks.ingest.common import make_record, need_str, stable_hash
from tasks.ingest.reader import Reader, register


@register
class TextReader(Reader):
    name = "text"
    fields = frozenset({"text", "id"})

    @classmethod
    def convert(cls, recipe, source, rows, pool=None) -> Iterator[dict]:
        def build(raw, cols, origin_file, origin_row, native) -> list[dict]:
            text = need_str(raw, "text", allow_empty=False)
            native_id = raw.get("id")
            return [make_record(
                source=source.name, task=source.task or "text", template_id="text",
                example_id=str(native_id) if native_id not in (None, "") else stable_hash(text)[:20],
                messages=[{"role": "assistant", "content": text}], origin_file=origin_file, origin_row=origin_row,
                meta={k: v for k, v in raw.items() if k not in ("text", "id")},
            )]

        return cls.convert_each(source, rows, build)
