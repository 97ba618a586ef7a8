"""The three evaluation suites over an already-loaded model: held-out loss and
multiple choice, MMLU, and generation. Each returns `eval` rows (and rejects)."""
from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from tasks.evaluate.metrics import exact_match, rouge_l
from tasks.evaluate.mmlu import LETTERS, MmluItem, cloze_prompt, mmlu_prompt
from tasks.evaluate.scoring import (
    IGNORE,
    greedy_generate,
    last_span_start,
    only_last_span,
    score_groups,
    score_sequences,
)
from tasks.schema import reject_row

STEP = "evaluate"


@dataclass
class Scorer:
    """A loaded model and tokenizer plus the settings every suite shares."""

    model: object
    tokenizer: object
    encode: Callable  # tasks.tokens.chat.encode(tokenizer, messages, max_seq_len, truncation, tools, reasoning)
    max_seq_len: int
    truncation: str
    batch_size: int
    device: str
    reasoning: str = "keep"  # train.reasoning: the model is evaluated on what it was trained to produce

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def enc(self, messages: list[dict], tools: str | None = None):
        return self.encode(self.tokenizer, messages, self.max_seq_len, self.truncation, tools=tools,
                           reasoning=self.reasoning)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self.tokenizer.all_special_ids)

    def score(self, seqs):
        return score_sequences(self.model, seqs, self.batch_size, self.pad_id, self.device)


def model_context(model) -> int:
    """The longest sequence the model's positions cover (a large number when the config does not say)."""
    return int(getattr(model.config, "max_position_embeddings", None) or 1 << 30)


@dataclass
class SuiteResult:
    rows: list[dict] = field(default_factory=list)  # eval rows without stage/model columns
    rejects: list[dict] = field(default_factory=list)
    generations: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def metric_row(suite: str, source: str | None, task: str | None, metric: str, value: float, n: int) -> dict:
    return {"suite": suite, "source": source, "task": task, "metric": metric, "value": float(value), "n": int(n)}


def _levels(source: str, task: str, overall: bool = True) -> list[tuple[str | None, str | None]]:
    # Every item counts for its task, its source, and (unless the suite has one source) the whole suite.
    return [(source, task), (source, None)] + ([(None, None)] if overall else [])


def reply_content(labels: list[int], special_ids: frozenset[int]) -> list[int]:
    """The last scored span (the final reply) without the special tokens that close it (end of turn)."""
    out = only_last_span(labels)
    i = len(out) - 1
    while i >= 0 and out[i] == IGNORE:
        i -= 1
    while i >= 0 and out[i] in special_ids:
        out[i] = IGNORE
        i -= 1
    return out


def split_reply(messages: list[dict]) -> tuple[list[dict], str] | None:
    """(messages before the last assistant turn, that turn's content), None without one."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return messages[:i], messages[i]["content"]
    return None


# -- held-out loss -------------------------------------------------------------------------


def heldout_loss(sc: Scorer, records: list[dict]) -> tuple[SuiteResult, set[str]]:
    """Loss and perplexity per source/task on assistant tokens only; returns scored record ids."""
    res = SuiteResult()
    seqs, kept = [], []
    truncated = 0
    for r in records:
        enc = sc.enc(r["messages"], r.get("tools"))
        reason = None
        if enc.truncated and sc.truncation == "drop":
            reason = "too_long"
        elif not any(v != IGNORE for v in enc.labels):
            reason = "no_assistant_tokens"
        if reason:
            res.rejects.append(_reject(r, reason, f"max_seq_len {sc.max_seq_len}, {enc.total_tokens} tokens"))
            continue
        truncated += bool(enc.truncated)
        seqs.append((list(enc.input_ids), list(enc.labels)))
        kept.append(r)
    per_record: dict = defaultdict(list)  # key -> [(negative log-likelihood, tokens) per record]
    for r, s in zip(kept, sc.score(seqs)):
        for key in _levels(r["source"], r["task"]):
            per_record[key].append((-s.logprob, s.n_tokens))
    for key in sorted(per_record, key=_sort_key):
        nll, tokens = (np.asarray(v, np.float64) for v in zip(*per_record[key]))
        loss = nll.sum() / tokens.sum()
        res.rows.append(metric_row("heldout", *key, "loss", loss, tokens.sum()))
        res.rows.append(metric_row("heldout", *key, "perplexity", math.exp(min(loss, 700.0)), tokens.sum()))
        if len(nll) > 1:
            res.rows.append(metric_row("heldout", *key, "loss_stderr", loss_stderr(nll, tokens), len(nll)))
    res.stats = {"heldout_rows": len(kept), "heldout_truncated": truncated,
                 "heldout_tokens": int(sum(t for _, t in per_record.get((None, None), [])))}
    return res, {r["record_id"] for r in kept}


def loss_stderr(nll: np.ndarray, tokens: np.ndarray) -> float:
    """Standard error of the token-weighted mean loss sum(nll) / sum(tokens) over k >= 2 records
    (negative log-likelihood and token count per record): the ratio estimator's linearised
    standard error, sqrt(k / (k - 1) * sum((nll_i - loss * tokens_i) ** 2)) / sum(tokens). The
    record, not the token, is the unit sampled, so tokens of one reply are not taken as independent."""
    k, total = len(nll), tokens.sum()
    resid = nll - nll.sum() / total * tokens
    return float(math.sqrt(k / (k - 1) * float(resid @ resid)) / total)


def _sort_key(key: tuple) -> tuple:
    return tuple("" if k is None else k for k in key)


def _reject(r: dict, reason: str, detail: str = "") -> dict:
    return reject_row(STEP, reason, source=r.get("source"), origin_file=r.get("origin_file"),
                      origin_row=r.get("origin_row"), record_id=r.get("record_id"), detail=detail)


# -- rank classification -------------------------------------------------------------------


@dataclass(frozen=True)
class ChoiceItem:
    source: str
    task: str
    context: list[dict]  # messages before the reply
    choices: tuple[str, ...]
    answer: int
    tools: str | None = None  # the record's offered tools (JSON), rendered as in training


class Pick(NamedTuple):
    summed: int  # choice picked by summed log-likelihood
    normed: int  # by log-likelihood per character of the choice
    skipped: str | None  # why the item has no fair comparison (None: every choice was scored)


def rank_classify(sc: Scorer, items: list[ChoiceItem]) -> list[Pick]:
    """Pick a choice per item by summed and by length-normalised log-likelihood of the reply.

    The prompt is run once per item and the choices are scored as its continuations, batched
    (`score_groups`): the tokens of the reply's content, not the end-of-turn token that the
    template closes it with (lm-evaluation-harness scores continuations without an end of
    sequence too; a short answer would otherwise lose to the sentence the model would rather
    start). Length normalisation divides by the choice's length in characters, as
    lm-evaluation-harness's acc_norm does. An item is skipped, with the reason, when a choice is
    empty (`empty_choice`), when the conversation with some choice does not fit `max_seq_len`
    (`too_long`: the reply would be cut, so the scores would not compare), or when a choice has
    no scored token (`choice_not_scored`)."""
    groups, skipped = [], []
    special_ids = sc.special_ids
    for it in items:
        seqs, reason = [], None
        for choice in it.choices:
            enc = sc.enc(it.context + [{"role": "assistant", "content": choice}], it.tools)
            labels = reply_content(enc.labels, special_ids)
            if not choice.strip():
                reason = reason or "empty_choice"
            elif enc.truncated:
                reason = reason or "too_long"
            elif all(v == IGNORE for v in labels):
                reason = reason or "choice_not_scored"
            seqs.append((list(enc.input_ids), labels))
        groups.append([] if reason else seqs)
        skipped.append(reason)
    scores = score_groups(sc.model, groups, sc.batch_size, sc.pad_id, sc.device)
    picks = []
    for it, sc_item, reason in zip(items, scores, skipped):
        if reason:
            picks.append(Pick(-1, -1, reason))
            continue
        summed = [s.logprob for s in sc_item]
        normed = [lp / max(len(c), 1) for lp, c in zip(summed, it.choices)]
        picks.append(Pick(_argmax(summed), _argmax(normed), None))
    return picks


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # ties: the first choice


def choice_items(records: list[dict]) -> tuple[list[ChoiceItem], list[dict], list[dict]]:
    """Held-out rows with answer_choices as items; rows whose answer is not a choice are rejected."""
    items, owners, rejects = [], [], []
    for r in records:
        choices = [c for c in (r.get("answer_choices") or [])]
        if not choices:
            continue
        split = split_reply(r["messages"])
        if split is None:
            rejects.append(_reject(r, "mc_no_assistant_turn"))
            continue
        context, reply = split
        stripped = [c.strip() for c in choices]
        if reply.strip() not in stripped:
            rejects.append(_reject(r, "mc_answer_not_in_choices", f"answer {reply[:80]!r}"))
            continue
        items.append(ChoiceItem(r["source"], r["task"], context, tuple(choices), stripped.index(reply.strip()),
                                r.get("tools")))
        owners.append(r)
    return items, owners, rejects


def accuracy_rows(suite: str, prefix: str, items: list[ChoiceItem], picks: list[Pick],
                  overall: bool = True) -> list[dict]:
    right: dict = defaultdict(lambda: [0, 0, 0])  # correct, correct_norm, n
    for it, (a, b, _) in zip(items, picks):
        for key in _levels(it.source, it.task, overall):
            acc = right[key]
            acc[0] += a == it.answer
            acc[1] += b == it.answer
            acc[2] += 1
    rows = []
    for key in sorted(right, key=_sort_key):
        c, cn, n = right[key]
        rows.append(metric_row(suite, *key, f"{prefix}accuracy", c / n, n))
        rows.append(metric_row(suite, *key, f"{prefix}accuracy_norm", cn / n, n))
    return rows


def heldout_choices(sc: Scorer, records: list[dict]) -> SuiteResult:
    """Multiple-choice accuracy (summed and length-normalised) on held-out rows with answer_choices."""
    items, owners, rejects = choice_items(records)
    picks = rank_classify(sc, items)
    usable = [(it, p) for it, p in zip(items, picks) if not p.skipped]
    for p, r in zip(picks, owners):
        if p.skipped:
            rejects.append(_reject(r, f"mc_{p.skipped}", f"max_seq_len {sc.max_seq_len}"))
    res = SuiteResult(rejects=rejects)
    res.rows = accuracy_rows("heldout", "mc_", [u[0] for u in usable], [u[1] for u in usable])
    res.stats = {"mc_items": len(usable), "mc_skipped": len(rejects)}
    return res


# -- MMLU ----------------------------------------------------------------------------------


def mmlu_suite(sc: Scorer, questions: list[MmluItem], score_by: str = "letter") -> SuiteResult:
    """Zero-shot MMLU accuracy per subject and overall. `score_by`: `letter` (the options listed,
    the letters A-D ranked, as lm-evaluation-harness does), `text` (options listed, the choice
    texts ranked) or `cloze` (the question alone, the choice texts ranked)."""
    items = [
        ChoiceItem("mmlu", q.subject,
                   [{"role": "user", "content": cloze_prompt(q) if score_by == "cloze" else mmlu_prompt(q)}],
                   tuple(LETTERS) if score_by == "letter" else q.choices, q.answer)
        for q in questions
    ]
    picks = rank_classify(sc, items)
    res = SuiteResult()
    for q, p in zip(questions, picks):
        if p.skipped:
            res.rejects.append(reject_row(STEP, f"mmlu_{p.skipped}", source="mmlu", origin_file=q.file,
                                          origin_row=q.row, detail=f"max_seq_len {sc.max_seq_len}"))
    usable = [(it, p) for it, p in zip(items, picks) if not p.skipped]
    res.rows = accuracy_rows("mmlu", "", [u[0] for u in usable], [u[1] for u in usable], overall=False)
    res.stats = {"mmlu_questions": len(usable), "mmlu_skipped": len(questions) - len(usable)}
    return res


# -- generation ----------------------------------------------------------------------------


def prompt_text(context: list[dict]) -> str:
    """What a reader needs to see of the prompt: the user's text, or the whole exchange by role."""
    if len(context) == 1:
        return context[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in context)


def generation_suite(sc: Scorer, records: list[dict], samples: int, max_new_tokens: int, seed: int) -> SuiteResult:
    """Greedy generations for a seeded sample of held-out prompts; exact match and ROUGE-L."""
    res = SuiteResult()
    candidates = [r for r in records if split_reply(r["messages"]) and split_reply(r["messages"])[1].strip()]
    chosen = random.Random(seed).sample(candidates, min(samples, len(candidates)))
    chosen.sort(key=lambda r: r["record_id"])
    prompts, kept = [], []
    for r in chosen:
        context, reference = split_reply(r["messages"])
        # The prompt is the encoded conversation up to the reply, exactly as in training.
        enc = sc.enc(context + [{"role": "assistant", "content": reference}], r.get("tools"))
        start = last_span_start(enc.labels)
        if start is None or enc.truncated or start + max_new_tokens > model_context(sc.model):
            res.rejects.append(_reject(r, "generation_prompt_too_long",
                                       f"max_seq_len {sc.max_seq_len}, max_new_tokens {max_new_tokens}"))
            continue
        prompts.append(list(enc.input_ids[:start]))
        kept.append((r, context, reference))
    outputs = greedy_generate(sc.model, prompts, max_new_tokens, sc.batch_size, sc.pad_id,
                              sc.tokenizer.eos_token_id, sc.device)
    sums: dict = defaultdict(lambda: [0.0, 0.0, 0])
    for (r, context, reference), new in zip(kept, outputs):
        text = sc.tokenizer.decode(new, skip_special_tokens=True).strip()
        em, rl = exact_match(text, reference), rouge_l(text, reference)
        res.generations.append({
            "record_id": r["record_id"], "source": r["source"], "task": r["task"],
            "prompt": prompt_text(context), "reference": reference,
            "generation": text, "exact_match": em, "rouge_l": rl,
        })
        for key in _levels(r["source"], r["task"]):
            acc = sums[key]
            acc[0] += em
            acc[1] += rl
            acc[2] += 1
    for key in sorted(sums, key=_sort_key):
        em, rl, n = sums[key]
        res.rows.append(metric_row("generation", *key, "exact_match", em / n, n))
        res.rows.append(metric_row("generation", *key, "rouge_l", rl / n, n))
    res.stats = {"generation_samples": len(kept)}
    return res
