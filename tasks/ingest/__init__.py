"""Source-format readers, selected by name from `READERS` (recipes never name import paths).

A reader module defines one or more `Reader` subclasses and registers them with
`@register`. Registered names: `dolly`, `sharegpt`, `openai`, `alpaca`, `oasst`, `super_ni`, `text`, `flan` (FLAN collection records;
a `.tsv` path is read as FLAN CoT), `flan_cot`, `p3` (P3 records; with `templates:` it
behaves as `promptsource`) and `promptsource`.

Contract (DESIGN.md §3.3), all classmethods:

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
from __future__ import annotations

from typing import Callable, ClassVar, Iterator

from tasks.errors import RecipeError
from tasks.ingest.common import Columns, FieldError, check_columns, convert_reject, iter_records

READERS: dict[str, "type[Reader]"] = {}

#: Rows of a file handed to `exemplar_pool` (the first batch holds at least this many).
POOL_ROWS = 512


def register(cls):
    READERS[cls.name] = cls
    return cls


class Reader:
    name: ClassVar[str]
    #: Bumped when a reader's output for the same input changes (goes into step keys).
    version: ClassVar[int] = 1

    #: Keys a source's `options:` may hold for this reader.
    options_allowed: ClassVar[frozenset] = frozenset({"layout"})
    #: Row and turn field names the `columns` option may map (readers of the JSON family);
    #: `roles`: the role names `columns.roles` may map onto.
    fields: ClassVar[frozenset] = frozenset()
    turn_fields: ClassVar[frozenset] = frozenset()
    roles: ClassVar[frozenset] = frozenset()

    @classmethod
    def check_source(cls, recipe, source) -> None:
        """Recipe-time checks (options, template files); raise RecipeError. Reads no data rows."""
        allowed = cls.options_allowed | ({"columns"} if cls.fields else set())
        unknown = set(source.options) - allowed
        if unknown:
            raise RecipeError(f"source {source.name!r}: unknown options {sorted(unknown)} for format "
                              f"{source.format!r}; allowed: {sorted(allowed)}")
        if "columns" in source.options:
            check_columns(source, cls.fields, cls.turn_fields, cls.roles)
        layout = source.options.get("layout")
        if layout is not None and layout not in ("jsonl", "json", "csv", "parquet", "duckdb"):
            raise RecipeError(f"source {source.name!r}: options.layout must be one of jsonl, json, csv, parquet, "
                              f"duckdb; got {layout!r}")

    @classmethod
    def read(cls, recipe, source, file: str) -> Iterator[tuple]:
        """(origin_file, origin_row, native row) of every record of a file; by default the JSON
        family's (JSON, JSONL, CSV, Parquet, compressed, `hf://`; tasks.ingest.common.iter_records)."""
        return iter_records(file, source.options.get("layout"))

    @classmethod
    def columns(cls, source):
        """The source's `columns` mapping (tasks.ingest.common.Columns)."""
        return Columns(source.options.get("columns"), cls.turn_fields)

    @classmethod
    def exemplar_pool(cls, recipe, source, file: str, rows: list[tuple]):
        return None

    @classmethod
    def convert(cls, recipe, source, rows: list[tuple], pool=None) -> Iterator[dict]:
        raise NotImplementedError

    @classmethod
    def convert_each(cls, source, rows: list[tuple], build: Callable[..., list[dict]]) -> Iterator[dict]:
        """`convert` for readers that map each native row on its own: `build(raw, cols, origin_file,
        origin_row, native)` gets the row after the `columns` mapping (`cols`) and returns its
        record (or reject) dicts; a FieldError it raises makes the whole row a `convert` reject."""
        cols = cls.columns(source)
        for origin_file, origin_row, native in rows:
            raw = cols.row(native)
            try:
                out = build(raw, cols, origin_file, origin_row, native)
            except FieldError as e:
                yield convert_reject(source.name, origin_file, origin_row, e.reason, e.detail, native)
                continue
            yield from out

    @classmethod
    def config_inputs(cls, recipe, source) -> dict:
        """Extra content that goes into the convert step key (e.g. a templates file's hash)."""
        return {}


def _load_all() -> None:
    # Import the reader modules so that they register themselves.
    from tasks.ingest import alpaca, dolly, flan, oasst, openai, p3, sharegpt, super_ni, text  # noqa: F401


try:
    _load_all()
except ImportError:  # a reader module is not written yet
    pass
