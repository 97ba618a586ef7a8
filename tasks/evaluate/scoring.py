"""Batched, deterministic model scoring: token log-likelihoods and greedy generation.

Sequences are (input_ids, labels) pairs with labels -100 where nothing is scored, the
convention of transformers and of `tasks.tokens.chat.encode`. Batches are right
padded for scoring and left padded for generation; the order of sequences in the
batches depends only on the data, so the same weights and data give the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tasks.tokens.chat import IGNORE


@dataclass(frozen=True)
class Score:
    logprob: float  # summed log-likelihood of the scored tokens
    n_tokens: int


def only_last_span(labels: Sequence[int]) -> list[int]:
    """Labels with every scored span but the last one masked (the final assistant reply)."""
    out = [IGNORE] * len(labels)
    i = len(labels) - 1
    while i >= 0 and labels[i] == IGNORE:
        i -= 1
    while i >= 0 and labels[i] != IGNORE:
        out[i] = labels[i]
        i -= 1
    return out


def last_span_start(labels: Sequence[int]) -> int | None:
    """Index of the first token of the last scored span, None when nothing is scored."""
    masked = only_last_span(labels)
    return next((i for i, v in enumerate(masked) if v != IGNORE), None)


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    # Longest first so padding stays small; ties broken by position so the order is fixed.
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def score_sequences(
    model, seqs: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, device: str
) -> list[Score]:
    """Summed log-likelihood and count of the labelled tokens of every sequence (empty ones score 0 of 0)."""
    out: list[Score] = [Score(0.0, 0)] * len(seqs)
    nonempty = [i for i, s in enumerate(seqs) if s[0]]
    for batch in _batches([len(seqs[i][0]) for i in nonempty], batch_size):
        idx = [nonempty[b] for b in batch]
        width = max(len(seqs[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(seqs[i][0])
            ids[row, :n] = torch.tensor(seqs[i][0])
            labels[row, :n] = torch.tensor(seqs[i][1])
            mask[row, :n] = 1
        ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        target = labels[:, 1:]
        scored = target != IGNORE
        logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        sums = (logp * scored).sum(-1).double().cpu().tolist()
        counts = scored.sum(-1).cpu().tolist()
        for row, i in enumerate(idx):
            out[i] = Score(sums[row], int(counts[row]))
    return out


@dataclass(frozen=True)
class _Tree:
    """One group laid out as one row: the shared prefix once, then each sequence's rest."""

    ids: list[int]
    positions: list[int]
    segment: list[int]  # -1 for the prefix, c for the rest of sequence c
    targets: list[list[tuple[int, int]]]  # per sequence: (row index predicting it, token id) of scored tokens


def _tree(seqs: list[tuple[list[int], list[int]]]) -> _Tree:
    """Lay out a group: the longest common token prefix (ending before any scored token) once,
    then each sequence's remaining tokens with positions continuing from the prefix."""
    first_scored = min((next((t for t, v in enumerate(lab) if v != IGNORE), len(lab)) for _, lab in seqs))
    p = 0
    while p < first_scored and all(p < len(ids) and ids[p] == seqs[0][0][p] for ids, _ in seqs):
        p += 1
    row, pos, seg = list(seqs[0][0][:p]), list(range(p)), [-1] * p
    targets = []
    for c, (ids, labels) in enumerate(seqs):
        start = len(row)
        row += ids[p:]
        pos += range(p, len(ids))
        seg += [c] * (len(ids) - p)
        # token t is predicted at the row index of token t-1: in the prefix, or in this sequence's rest
        targets.append([(t - 1 if t - 1 < p else start + t - 1 - p, ids[t])
                        for t in range(1, len(ids)) if labels[t] != IGNORE])
    return _Tree(row, pos, seg, targets)


def _tree_mask(trees: list[_Tree], width: int, dtype) -> torch.Tensor:
    """Additive (B, 1, T, T) mask: causal, and a sequence's rest sees the prefix and itself only.
    Padding attends to itself, so no row of the softmax is empty."""
    mask = torch.zeros((len(trees), width, width), dtype=torch.bool)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for r, t in enumerate(trees):
        n = len(t.ids)
        seg = torch.tensor(t.segment)
        same = (seg[:, None] == seg[None, :]) | (seg[None, :] == -1)
        mask[r, :n, :n] = same & causal[:n, :n]
        mask[r, n:, n:] = torch.eye(width - n, dtype=torch.bool)
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)[:, None]


@torch.no_grad()
def score_groups(
    model, groups: list[list[tuple[list[int], list[int]]]], batch_size: int, pad_id: int, device: str
) -> list[list[Score]]:
    """`score_sequences` for groups of sequences that share a prefix (a prompt and its answer
    choices): each group's common prefix is run once and its sequences' rests are scored as
    branches of one row (a 4D attention mask keeps branches apart, positions restart after the
    prefix), `batch_size` groups per forward. Each score equals the sequence's score alone up to
    float rounding. Empty sequences score 0 of 0."""
    out: list[list[Score]] = [[Score(0.0, 0)] * len(g) for g in groups]
    live = [k for k, g in enumerate(groups) if g and all(ids for ids, _ in g)]
    trees = {k: _tree(groups[k]) for k in live}
    dtype = next(model.parameters()).dtype
    for batch in _batches([len(trees[k].ids) for k in live], batch_size):
        ks = [live[b] for b in batch]
        width = max(len(trees[k].ids) for k in ks)
        ids = torch.full((len(ks), width), pad_id, dtype=torch.long)
        pos = torch.zeros((len(ks), width), dtype=torch.long)
        for r, k in enumerate(ks):
            n = len(trees[k].ids)
            ids[r, :n] = torch.tensor(trees[k].ids)
            pos[r, :n] = torch.tensor(trees[k].positions)
        first = min((i for k in ks for tg in trees[k].targets for i, _ in tg), default=width - 1)
        keep = torch.arange(first, width)  # logits only where some scored token is predicted
        logits = model(input_ids=ids.to(device), position_ids=pos.to(device),
                       attention_mask=_tree_mask([trees[k] for k in ks], width, dtype).to(device),
                       logits_to_keep=keep.to(device), use_cache=False).logits.float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        for r, k in enumerate(ks):
            out[k] = [Score(float(sum(logp[r, i - first, tok].double() for i, tok in tg)), len(tg))
                      for tg in trees[k].targets]
    return out


@torch.no_grad()
def greedy_generate(
    model, prompts: list[list[int]], max_new_tokens: int, batch_size: int, pad_id: int, eos_id: int | None,
    device: str,
) -> list[list[int]]:
    """Greedy continuations (new tokens only, cut after the first EOS) of every prompt."""
    out: list[list[int] | None] = [None] * len(prompts)
    for idx in _batches([len(p) for p in prompts], batch_size):
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(prompts[i])
            ids[row, width - n :] = torch.tensor(prompts[i])  # left padding: new tokens follow every prompt
            mask[row, width - n :] = 1
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False, num_beams=1,
            max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id,
        )
        for row, i in enumerate(idx):
            new = gen[row, width:].cpu().tolist()
            if eos_id is not None and eos_id in new:
                new = new[: new.index(eos_id)]
            out[i] = [t for t in new if t != pad_id]
    return out  # type: ignore[return-value]
