"""The `Reader` base class and the registry readers add themselves to with `@register`;
the contract is in tasks/ingest/__init__.py."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar, Iterator

from tasks.errors import RecipeError
from tasks.ingest.common import Columns, FieldError, check_columns, convert_reject, iter_records

READERS: dict[str, "type[Reader]"] = {}

#: Rows of a file handed to `exemplar_pool` (the first batch holds at least this many).
POOL_ROWS = 512


def register(cls):
    READERS[cls.name] = cls
    return cls


def check_sources(recipe, file: str = "<recipe>") -> None:
    """The ingest step's recipe checks (tasks.recipe.STEP_CHECKS): every source names a known
    format, matches files, has its templates file, and passes its reader's own checks."""
    for s in recipe.sources:
        if s.format not in READERS:
            raise RecipeError(f"{file}: source {s.name!r}: unknown format {s.format!r}; known: {sorted(READERS)}")
        recipe.source_files(s)
        if s.templates is not None and not Path(recipe.resolve(s.templates)).is_file():
            raise RecipeError(f"{file}: source {s.name!r}: templates file not found: {s.templates}")
        READERS[s.format].check_source(recipe, s)


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
