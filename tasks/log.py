"""Where a step's log lines go: Prefect's run logger inside a run (so they show in the UI),
else the standard `tuneline` logger."""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("tuneline")


def logger():
    """Prefect's run logger inside a run (so lines show in the UI), else the std logger."""
    if "prefect" not in sys.modules:  # plain function calls: do not pay Prefect's import
        return log
    try:
        from prefect import get_run_logger
        from prefect.context import MissingContextError

        try:
            return get_run_logger()
        except MissingContextError:
            return log
    except ImportError:
        return log
