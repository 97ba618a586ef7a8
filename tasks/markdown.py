"""Markdown tables, the one way every step report, the evaluation table and `tuneline query`
write them."""
from __future__ import annotations

from typing import Iterable, Sequence


def cell(value) -> str:
    """A value fit for one table cell: None empty, whitespace folded, pipes escaped."""
    if value is None:
        return ""
    return " ".join(str(value).split()).replace("|", "\\|")


def table(columns: Sequence[str], rows: Iterable[Sequence], align: str = "", title: str | None = None,
          pad: bool = False) -> str:
    """A Markdown table. `rows` hold cell values already formatted as wanted (None = empty);
    `align` has one letter per column, `l` or `r` (default all left); `title` a `###`
    heading above it; `pad` widens the columns to line up in a terminal. Ends with a newline."""
    body = [[cell(v) for v in r] for r in rows]
    align = (align or "").ljust(len(columns), "l")
    widths = ([max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(columns)] if pad
              else [0] * len(columns))

    def line(values) -> str:
        return "| " + " | ".join(v.rjust(w) if a == "r" and pad else v.ljust(w)
                                 for v, w, a in zip(values, widths, align)) + " |"

    def rule(width: int, a: str) -> str:  # `---` / `---:`, or as wide as the padded column
        if not pad:
            return "---:" if a == "r" else "---"
        return "-" * (width + 1) + ":" if a == "r" else "-" * (width + 2)

    sep = "|" + "|".join(rule(w, a) for w, a in zip(widths, align)) + "|"
    head = [f"### {title}", ""] if title else []
    return "\n".join(head + [line(columns), sep] + [line(r) for r in body]) + "\n"
