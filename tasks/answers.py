"""One answer normaliser for the whole pipeline: final-answer extraction and choice matching.

Used by validate (`target_in_answer_choices`: is the target, or the final answer of a
reasoned target, one of the record's answer choices?) and by evaluation
(tasks.evaluate.metrics.exact_match), so the two never disagree on what an answer is.

- `final_answer(text)`: the answer a reasoned text ends with: what follows the last
  "answer:" or "answer is" (":" optional), as in "So the answer is: X", "Therefore, the
  answer is X.", "The answer: X.", "Answer: X", "Final answer: X" (case-insensitive), less
  trailing dots and spaces. None when the text has no such phrase. A choice that merely
  contains the word ("The answer: answer questions.") is kept whole: the phrase needs
  ":" or "is" after "answer".
- `parse_answer(text)` -> Answer(label, text): one answer or one choice, normalised.
  An option label at the start is split off, upper-cased: `(D)`, `D)`, `(D) DNA`,
  `Sentence A`, `Sentence A: "..."`, `Option C`, `Choice B:`, or a lone letter `D`.
  The rest is compared as: a number (`$1,120.00` -> `1120`, `72.0` -> `72`, `25%` -> `25`)
  when it is one, else SQuAD-style text (`normalize_text`: NFKC, lower case, punctuation
  and the articles a/an/the removed, spaces collapsed), so `Yes.` equals `yes`.
- `same_answer(a, b)`: two labels must agree, and where both sides have text it must agree
  too; with one side unlabelled the texts decide. So `(D)` matches `(D) sex` but not
  `(A) DNA`; `Sentence A` matches `Sentence A: "He drinks apple."`; `DNA` matches `(A) DNA`.
- `is_bare_label(text)`: the answer is only a label (`(C)`, `Sentence A`), so a prompt
  must show the options for it to make sense.
- `choice_index(answer, choices)`: the first choice that `answer`'s final answer (or `answer`) names.
"""
from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
#: "answer:" or "answer is" (":" optional); the final answer follows the last one.
_ANSWER_PHRASE = re.compile(r"\banswer(?:\s*:|\s+is\b:?)\s*", re.IGNORECASE)
_LABEL = re.compile(
    r"^(?:\(([A-Za-z])\)|([A-Z])\)|(?:sentence|option|choice)\s+([A-Za-z])\b:?|([A-Z])$)\s*(.*)$",
    re.IGNORECASE | re.DOTALL)
_NUMBER = re.compile(r"^[-+]?[$€£]?\s*\d[\d,]*(?:\.\d+)?\s*%?$|^[-+]?[$€£]?\s*\.\d+\s*%?$")
_EDGE = "\"'“”‘’`*.!?,;: \t\n"


@dataclass(frozen=True)
class Answer:
    """A normalised answer or choice: its option label (upper case) or None, and its text key."""

    label: str | None
    text: str


def normalize_text(text: str) -> str:
    """SQuAD-style normalisation: NFKC, lower case, punctuation and articles removed, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _number_key(text: str) -> str | None:
    if not _NUMBER.match(text):
        return None
    digits = re.sub(r"[^\d.+-]", "", text.replace(",", ""))
    try:
        value = Decimal(digits)
    except InvalidOperation:
        return None
    return format(value.normalize(), "f") if value != value.to_integral() else str(int(value))


def _text_key(text: str) -> str:
    text = text.strip(_EDGE)
    return _number_key(text) or normalize_text(text)


@lru_cache(maxsize=65536)
def parse_answer(text: str) -> Answer:
    """Split an option label off an answer or a choice and normalise the rest (module docstring)."""
    text = unicodedata.normalize("NFKC", text).strip().strip(_EDGE.replace("*", ""))
    m = _LABEL.match(text)
    if m is None:
        return Answer(None, _text_key(text))
    label = next(g for g in m.groups()[:4] if g)
    return Answer(label.upper(), _text_key(m.group(5)))


def is_bare_label(text: str) -> bool:
    """Whether an answer is only an option label (`(C)`, `Sentence A`), naming a choice it does not repeat."""
    a = parse_answer(text)
    return a.label is not None and not a.text


def final_answer(text: str) -> str | None:
    """The text after the last answer phrase, trailing dots and spaces removed (module docstring)."""
    last = None
    for last in _ANSWER_PHRASE.finditer(text):
        pass
    if last is None:
        return None
    tail = text[last.end():].strip().rstrip(". \n")
    return tail or None


def same_answer(a: str, b: str) -> bool:
    """Whether two answers (or an answer and a choice) say the same thing (module docstring)."""
    x, y = parse_answer(a), parse_answer(b)
    if x.label and y.label:
        return x.label == y.label and (not x.text or not y.text or x.text == y.text)
    return bool(x.text) and x.text == y.text


def choice_index(answer: str, choices: list[str]) -> int | None:
    """The index of the first choice `answer` names, trying its final answer, then the whole text."""
    candidates = [f for f in (final_answer(answer),) if f is not None] + [answer]
    for cand in candidates:
        for i, choice in enumerate(choices):
            if same_answer(cand, choice):
                return i
    return None
