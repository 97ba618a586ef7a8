"""SQL text for DuckDB over artifact files: the one place a path becomes a quoted literal."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable


def literal(value: str | Path) -> str:
    """A quoted SQL string literal (single quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def path_list(paths: Iterable[str | Path]) -> str:
    """A DuckDB list of quoted paths, `['a.parquet', 'b.parquet']`, for read_parquet and friends."""
    return "[" + ", ".join(literal(p) for p in paths) + "]"
