"""Text metrics for generations: normalised exact match and ROUGE-L (LCS F-measure).

Normalisation follows the SQuAD evaluation script (lower case, no punctuation, no
articles, single spaces); ROUGE-L tokenisation follows rouge-score's default
(lower case, runs of [a-z0-9] are tokens, no stemming), so the numbers are
comparable with what users get from those tools.
"""
from __future__ import annotations

import re
import string
import unicodedata

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_TOKEN = re.compile(r"[a-z0-9]+")


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: NFKC, lower case, punctuation and articles removed, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokeniser: lower case, alphanumeric runs."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (two-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over tokens: 2PR/(P+R) with P = LCS/|pred|, R = LCS/|ref|; 0 when either is empty."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    if not pred or not ref:
        return 0.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(pred), lcs / len(ref)
    return 2 * p * r / (p + r)
