"""Text metrics for generations: normalised exact match and ROUGE-L (LCS F-measure).

Exact match uses the pipeline's one answer normaliser (tasks.answers, also behind
validate's `target_in_answer_choices`): a reasoned reference (FLAN CoT: rationale, then
"So the answer is: X") is compared by its final answer, labels and numbers normalised
(`(C)` = `C`, `$1,120` = `1120`); other texts by the SQuAD evaluation script's
normalisation (lower case, no punctuation, no articles, single spaces). ROUGE-L
tokenisation follows rouge-score's default (lower case, runs of [a-z0-9] are tokens, no
stemming), so the numbers are comparable with what users get from those tools.
"""
from __future__ import annotations

import re
import unicodedata

from tasks.answers import final_answer, normalize_text, same_answer

_TOKEN = re.compile(r"[a-z0-9]+")

#: SQuAD-style normalisation: NFKC, lower case, punctuation and articles removed, spaces collapsed.
normalize_answer = normalize_text


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when prediction and reference give the same answer, else 0.0.

    A reference with a final answer ("... So the answer is: X") matches a prediction whose
    final answer, or whole text when it has none, is the same answer (tasks.answers.same_answer);
    any other reference matches a prediction equal to it after SQuAD normalisation."""
    ref = final_answer(reference)
    if ref is not None:
        return float(same_answer(final_answer(prediction) or prediction, ref))
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
