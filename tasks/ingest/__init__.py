"""Source-format readers, selected by name from `READERS` (recipes never name import paths).

A reader module defines one `Reader` subclass and registers it with `@register`.
Contract (DESIGN.md §3.3): `read` yields raw native rows (or rejects) with their
1-based line/row number; `convert` maps a shard of raw rows to canonical records
(or rejects, each with its own reason). Readers never drop a row silently.
"""
from __future__ import annotations

from typing import ClassVar

READERS: dict[str, "type[Reader]"] = {}


def register(cls):
    READERS[cls.name] = cls
    return cls


class Reader:
    name: ClassVar[str]

    @classmethod
    def check_source(cls, recipe, source) -> None:
        """Recipe-time checks (options, template files); raise RecipeError. Reads no data rows."""


def _load_all() -> None:
    # Import the reader modules so that they register themselves.
    from tasks.ingest import dolly, flan, p3, sharegpt  # noqa: F401


try:
    _load_all()
except ImportError:  # a reader module is not written yet
    pass
