"""Progress of a long loop: done of total, rate and ETA.

On a terminal (stderr is a TTY, this is the run's main process, not a Prefect worker's flow
run, and TUNELINE_PROGRESS is not 0) each `Progress` is a line of one shared `rich` display
(several shard threads at once share it), and its final figures go to the log when it ends.
Anywhere else (a pipe, a shard worker process, a deployment run, the training subprocess)
the same figures are log lines, at most one every `every_s` seconds, so they reach the run's
logs in the Prefect UI.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from datetime import timedelta
from typing import Callable

from tasks.log import logger


def on_terminal() -> bool:
    """Draw bars: an interactive terminal, in the process that owns it, outside Prefect workers."""
    return (os.environ.get("TUNELINE_PROGRESS", "1") != "0" and sys.stderr.isatty()
            and multiprocessing.parent_process() is None and "PREFECT__FLOW_RUN_ID" not in os.environ)


def _rate(per_s: float) -> str:
    return f"{per_s:,.0f}" if per_s >= 100 else f"{per_s:.2f}"


def _eta(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class _Bars:
    """The one rich display of this process; started with the first bar, stopped after the last."""

    lock = threading.Lock()
    display = None
    active = 0

    @classmethod
    def add(cls, what: str, total: int | None, unit: str, console=None) -> int:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task) -> Text:
                return Text(f"{_rate(task.speed or 0.0)} {task.fields['unit']}/s")

        with cls.lock:
            if cls.display is None:
                cls.display = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                           TextColumn("{task.percentage:>3.0f}%"), Rate(), TextColumn("ETA"),
                                           TimeRemainingColumn(), console=console or Console(stderr=True),
                                           transient=True, redirect_stdout=False, redirect_stderr=False)
                cls.display.start()
            cls.active += 1
            return cls.display.add_task(what, total=total, unit=unit)

    @classmethod
    def advance(cls, task: int, n: int) -> None:
        cls.display.advance(task, n)

    @classmethod
    def remove(cls, task: int) -> None:
        with cls.lock:
            cls.display.remove_task(task)
            cls.active -= 1
            if cls.active == 0:
                cls.display.stop()
                cls.display = None


class Progress:
    """`add(n)` as work gets done (or `update(done)`), `done()` at the end."""

    def __init__(self, what: str, total: int | None = None, unit: str = "rows", every_s: float = 5.0,
                 emit: Callable[[str], None] | None = None, bar: bool | None = None, console=None):
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.emit = emit or _log
        self.t0 = self.last = time.perf_counter()
        self.count = 0
        self._bar = _Bars.add(what, total, unit, console) if (on_terminal() if bar is None else bar) else None

    def add(self, n: int) -> None:
        self.count += n
        if self._bar is not None:
            _Bars.advance(self._bar, n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self.emit(self.line(now))

    def update(self, done: int) -> None:
        self.add(done - self.count)

    def done(self) -> None:
        if self._bar is not None:
            _Bars.remove(self._bar)
            self._bar = None
        self.emit(self.line(time.perf_counter()))

    def line(self, now: float) -> str:
        """'<what>: 3,000/12,000 rows (25%), 1,500 rows/s, ETA 0:00:06'."""
        per_s = self.count / max(now - self.t0, 1e-9)
        if not self.total:
            return f"{self.what}: {self.count:,} {self.unit}, {_rate(per_s)} {self.unit}/s"
        left = max(self.total - self.count, 0)
        eta = _eta(left / per_s) if per_s > 0 else "unknown"
        return (f"{self.what}: {self.count:,}/{self.total:,} {self.unit} ({self.count / self.total:.0%}), "
                f"{_rate(per_s)} {self.unit}/s, ETA {eta}")


def table_rows(manifest: dict, table: str) -> int:
    """Rows of a step's table from its manifest (no file opened): the total of a step that reads it."""
    return sum(part["rows"] for part in manifest.get("tables", {}).get(table, []))


class FileProgress(Progress):
    """Progress through one input file: kB (MB from 100 MB) of its size on disk, done as far as
    this process has read the file. That is the offset of the descriptor it has open on the file
    (Linux /proc/self/fd: exact for compressed files too, and whatever reader reads it); where
    there is none to see, the length of the rows' text read so far (`row(chars)`), held below
    the total until `done()`, when the file has been read to its end. Parquet, read by position
    and not in order, counts rows of its footer's total; an `hf://` URI counts rows without one.
    `row()` is cheap: the offset is looked at every `POLL_ROWS` rows."""

    POLL_ROWS = 256

    def __init__(self, what: str, path: str, **kw):
        self.path, self.fd, self.read_chars, self.rows = None, None, 0, 0
        self.scale, total, unit = 1, None, "rows"
        if not path.startswith("hf://") and os.path.isfile(path):
            if path.lower().removesuffix(".gz").removesuffix(".zst").endswith(".parquet"):
                import pyarrow.parquet as pq

                total = pq.read_metadata(path).num_rows
            else:
                size = os.path.getsize(path)
                self.scale, unit = (1_000_000, "MB") if size >= 100_000_000 else (1_000, "kB")
                self.path, total = os.path.realpath(path), -(-size // self.scale)
        super().__init__(what, total=total, unit=unit, **kw)

    def row(self, chars: int = 0) -> None:
        """One row (or reject) read, `chars` the length of its text."""
        self.rows += 1
        self.read_chars += chars + 1
        if self.path is None:
            self.add(1)
        elif self.rows % self.POLL_ROWS == 0:
            offset = self._offset()
            done = offset if offset else min(self.read_chars, (self.total - 1) * self.scale)
            self.update(max(self.count, done // self.scale))

    def done(self) -> None:
        if self.path is not None:
            self.update(self.total)  # read to the end
        super().done()

    def line(self, now: float) -> str:
        return super().line(now) + (f", {self.rows:,} rows" if self.path is not None else "")

    def _offset(self) -> int | None:
        """The read offset of this process's descriptor on the file, None where it cannot be seen."""
        try:
            if self.fd is None or os.readlink(f"/proc/self/fd/{self.fd}") != self.path:
                self.fd = next((int(fd) for fd in os.listdir("/proc/self/fd")
                                if _link(f"/proc/self/fd/{fd}") == self.path), None)
            return None if self.fd is None else os.lseek(self.fd, 0, os.SEEK_CUR)
        except OSError:
            self.fd = None
            return None


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _log(message: str) -> None:
    logger().info(message)
