"""Errors that say where: file, 1-based line or row, field, and what was expected."""
from __future__ import annotations


class TunelineError(Exception):
    """A user-facing error; its message is printed without a traceback by the CLI."""


class RecipeError(TunelineError):
    """The recipe is wrong (unknown key, missing file, impossible spec); raised before any data is read."""


class InputError(TunelineError):
    """A data row is bad and the recipe says `on_error: strict`."""

    def __init__(self, file: str, row: int | None, reason: str, detail: str = ""):
        self.file, self.row, self.reason, self.detail = file, row, reason, detail
        where = f"{file}:{row}" if row is not None else file
        super().__init__(f"{where}: {reason}" + (f": {detail}" if detail else ""))


class TooManyRejects(TunelineError):
    """A step rejected a larger share of its rows than the recipe allows."""


class GateFailed(TunelineError):
    """A dataset-level expectation failed: nothing downstream may run."""
