"""What a terminal shows of a failed run: Tuneline's own errors as one line, not as
Prefect's tracebacks.

A step that fails with a `TunelineError` (too many rejects, a failed gate, a bad row under
`on_error: strict`) is logged by Prefect several times with tracebacks: by the task run, by
each flow run it fails, in every process. The CLI prints the error once as
`tuneline: error: ...`, so `hide_known_errors()` drops those records from the console
handlers of this process (the CLI's, and each shard worker's through TUNELINE_HIDE_ERRORS,
set by the CLI unless `--debug`). Prefect's API handlers are untouched: the run's logs in
the UI keep the tracebacks.
"""
from __future__ import annotations

import logging
import os

from tasks.errors import TunelineError

ENV = "TUNELINE_HIDE_ERRORS"


def _error_names() -> tuple[str, ...]:
    """Class names of TunelineError and all its subclasses, as Prefect writes them in messages."""
    found, todo = [], [TunelineError]
    while todo:
        cls = todo.pop()
        found.append(cls.__name__)
        todo.extend(cls.__subclasses__())
    return tuple(found)


class HideKnownErrors(logging.Filter):
    """Drop records that report a TunelineError (its exception, or its repr in Prefect's messages)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TunelineError):
            return False
        message = record.getMessage()
        return not any(f"{name}(" in message or f"{name}: " in message for name in _error_names())


def hide_known_errors() -> None:
    """Add the filter to every console handler of the root logger (not to Prefect's API handler,
    matched by name so that `tuneline query` does not import Prefect)."""
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ != "APILogHandler" and not any(isinstance(f, HideKnownErrors) for f in handler.filters):
            handler.addFilter(HideKnownErrors())


def hide_in_workers() -> None:
    """In a shard worker process: hide them too when the CLI asked for it."""
    if os.environ.get(ENV) == "1":
        hide_known_errors()
