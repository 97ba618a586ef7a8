"""MMLU-format CSV files: question, four choices, answer (A-D or 0-3), header optional.

This is the layout of the original `hendrycks_test` CSVs (no header) and of most
exports of them (header such as `question,A,B,C,D,answer`). Quoted fields may hold
newlines and carriage returns; a malformed row is an error naming file and row.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from tasks.config import glob_files
from tasks.errors import TunelineError

LETTERS = "ABCD"
_ANSWERS = {**{c: i for i, c in enumerate(LETTERS)}, **{str(i): i for i in range(4)}}


class MmluError(TunelineError):
    """An MMLU CSV file is malformed."""


@dataclass(frozen=True)
class MmluItem:
    file: str
    row: int  # 1-based CSV record number (a quoted field may span several lines)
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # 0-3


def _answer(value: str) -> int | None:
    return _ANSWERS.get(value.strip().upper())


def _subject(path: Path) -> str:
    # hendrycks files are named <subject>_test.csv / _dev.csv / _val.csv
    stem = path.stem
    for suffix in ("_test", "_dev", "_val"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def read_mmlu_csv(path: str | Path) -> list[MmluItem]:
    """All questions of one file; raises MmluError naming file, row and what was expected."""
    path = Path(path)
    subject = _subject(path)
    items: list[MmluItem] = []
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise MmluError(f"{path}: cannot read MMLU file: {exc}") from None
    with fh:
        reader = csv.reader(fh, strict=True)
        row_no = 0
        try:
            for row_no, fields in enumerate(reader, 1):
                if not fields or all(not f.strip() for f in fields):
                    continue  # blank line
                if len(fields) != 6:
                    raise MmluError(
                        f"{path}: row {row_no}: expected 6 fields (question, A, B, C, D, answer), got {len(fields)}"
                    )
                answer = _answer(fields[5])
                if answer is None:
                    if row_no == 1 and not items:
                        continue  # a header row: its answer column is a name, not A-D/0-3
                    raise MmluError(
                        f"{path}: row {row_no}: field 'answer': expected one of A, B, C, D or 0-3, got {fields[5]!r}"
                    )
                if not fields[0].strip():
                    raise MmluError(f"{path}: row {row_no}: field 'question' is empty")
                items.append(MmluItem(str(path), row_no, subject, fields[0], tuple(fields[1:5]), answer))
        except csv.Error as exc:
            raise MmluError(f"{path}: row {row_no + 1}: not valid CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise MmluError(f"{path}: row {row_no + 1}: not UTF-8: {exc}") from None
    return items


def mmlu_files(patterns: list[str], resolve=lambda p: p) -> list[str]:
    """Files the recipe's `evaluate.mmlu` globs name, sorted; a pattern matching nothing is an error."""
    files = [f for pattern in patterns for f in glob_files(pattern, resolve(pattern), "evaluate.mmlu", MmluError)]
    return sorted(dict.fromkeys(files))


def mmlu_prompt(item: MmluItem) -> str:
    """The standard MMLU zero-shot prompt (as in the paper and lm-evaluation-harness)."""
    subject = item.subject.replace("_", " ")
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
    return (
        f"The following is a multiple choice question about {subject}.\n\n"
        f"{item.question.strip()}\n{options}\nAnswer:"
    )


def cloze_prompt(item: MmluItem) -> str:
    """The cloze formulation (as in OLMES and the SmolLM evaluations): the question alone; the
    choice texts are scored as the answer, so a model that cannot map letters to options is
    still measured on what it knows."""
    return item.question.strip()
