"""Every reader, by name: importing this module imports each reader module, which registers
its readers in `READERS`. A reader module that fails to import stops Tuneline at start-up
with the module's name and error, never a registry with some readers missing."""
from __future__ import annotations

import importlib

from tasks.ingest.reader import POOL_ROWS, READERS, Reader, check_sources, register

#: The reader modules of tasks/ingest/; a new reader adds its module here.
READER_MODULES = ("alpaca", "dolly", "flan", "oasst", "openai", "p3", "sharegpt", "super_ni", "text")

for _module in READER_MODULES:
    try:
        importlib.import_module(f"tasks.ingest.{_module}")
    except Exception as exc:
        raise ImportError(f"reader module tasks.ingest.{_module} failed to import: "
                          f"{type(exc).__name__}: {exc}") from exc

__all__ = ["POOL_ROWS", "READERS", "READER_MODULES", "Reader", "check_sources", "register"]
