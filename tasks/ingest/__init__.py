"""Source-format readers, selected by name from `READERS` (recipes never name import paths).

A reader module defines one or more `Reader` subclasses (tasks/ingest/reader.py) and
registers them with `@register`; `tasks.ingest.registry` imports every reader module and
holds `READERS`. Registered names: `dolly`, `sharegpt`, `openai`, `alpaca`, `oasst`, `super_ni`, `text`, `flan` (FLAN collection records;
a `.tsv` path is read as FLAN CoT), `flan_cot`, `p3` (P3 records; with `templates:` it
behaves as `promptsource`) and `promptsource`.

Contract (docs/ARCHITECTURE.md, "How to add a reader"), all classmethods:

- ``check_source(recipe, source)``: recipe-time checks (options, template files);
  raises RecipeError naming the file. Reads no data rows.
- ``read(recipe, source, file)`` yields, in file order, either
  ``("row", origin_row, raw: dict, raw_text: str)`` or
  ``("reject", origin_row, reason, detail, raw_text)``; `origin_row` is 1-based
  (line for line formats, element/row index otherwise; see tasks.ingest.common);
  a row's `raw_text` is JSON of `raw` (stored in `records_raw.raw`).
- ``exemplar_pool(recipe, source, file, rows) -> object | None``: called once per file
  with the file's first batch of raw rows (at least `POOL_ROWS` rows when the file has
  them) before `convert`; FLAN CoT draws its few-shot exemplars from it. Default None.
- ``convert(recipe, source, rows, pool=None)`` maps a batch of raw rows
  ``[(origin_file, origin_row, raw dict)]`` to canonical record dicts (tasks.schema.RECORDS)
  and reject dicts (tasks.schema.reject_row(step="convert", ...)), in any number per row.
  Every raw row yields at least one of them. A row counts as out when it yields at least
  one record (several template renderings count once), otherwise as rejected; a reject
  of one rendering of a row that also produced a record is kept in `rejects` too.

Field checks reject with reasons `missing_field`, `null_field`, `wrong_type`,
`empty_field`, naming the field in `detail`. `lang` is left None by every reader: the
validate step fills it (one language detector for all sources).
"""
