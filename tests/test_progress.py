"""Progress: done of total, rate and ETA; a rich bar on a terminal, log lines elsewhere."""
from __future__ import annotations

import io
import re

from rich.console import Console

from tasks.progress import Progress, on_terminal


def test_log_lines_have_total_rate_and_eta():
    lines = []
    p = Progress("mix: reading the pool", total=12_000, every_s=0, emit=lines.append, bar=False)
    p.add(3_000)
    p.done()
    assert re.fullmatch(r"mix: reading the pool: 3,000/12,000 rows \(25%\), [\d,.]+ rows/s, ETA \d+:\d\d:\d\d",
                        lines[0]), lines
    assert lines[-1].startswith("mix: reading the pool: 3,000/12,000 rows (25%)")


def test_without_total_rows_and_rate_only_and_lines_are_throttled():
    lines = []
    p = Progress("validate", every_s=3600, emit=lines.append, bar=False)
    for _ in range(100):
        p.add(10)
    assert lines == []  # nothing before every_s has passed
    p.done()
    assert re.fullmatch(r"validate: 1,000 rows, [\d,.]+ rows/s", lines[0])


def test_training_steps_rate_and_eta_from_the_clock(monkeypatch):
    clock = iter([100.0, 106.0])  # created at 100 s, 12 steps done at 106 s: 2 steps/s, 58 left
    monkeypatch.setattr("tasks.progress.time.perf_counter", lambda: next(clock))
    lines = []
    p = Progress("training", total=70, unit="steps", every_s=0, emit=lines.append, bar=False)
    p.update(12)
    assert lines == ["training: 12/70 steps (17%), 2.00 steps/s, ETA 0:00:29"]


def test_terminal_bars_share_one_display_and_log_the_end():
    out, lines = io.StringIO(), []
    console = Console(file=out, force_terminal=True, width=120)
    a = Progress("convert a", total=100, emit=lines.append, bar=True, console=console)
    b = Progress("convert b", total=50, emit=lines.append, bar=True, console=console)
    a.add(40)
    b.add(50)
    a.done()
    b.done()
    assert lines[0].startswith("convert a: 40/100 rows (40%)") and lines[1].startswith("convert b: 50/50 rows (100%)")
    assert "convert a" in out.getvalue() and "ETA" in out.getvalue()


def test_no_bars_when_not_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not on_terminal()
