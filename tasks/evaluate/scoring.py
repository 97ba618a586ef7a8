"""Batched, deterministic model scoring: token log-likelihoods and greedy generation.

Sequences are (input_ids, labels) pairs with labels -100 where nothing is scored, the
convention of transformers and of `tasks.train_sft.chat.encode`. Batches are right
padded for scoring and left padded for generation; the order of sequences in the
batches depends only on the data, so the same weights and data give the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

IGNORE = -100


@dataclass(frozen=True)
class Score:
    logprob: float  # summed log-likelihood of the scored tokens
    n_tokens: int


def resolve_device(setting: str) -> str:
    """`auto` means cuda when available, else cpu."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


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
    """Summed log-likelihood and count of the labelled tokens of every sequence."""
    out: list[Score | None] = [None] * len(seqs)
    for idx in _batches([len(s[0]) for s in seqs], batch_size):
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
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        scored = target != IGNORE
        logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        sums = (logp * scored).sum(-1).double().cpu().tolist()
        counts = scored.sum(-1).cpu().tolist()
        for row, i in enumerate(idx):
            out[i] = Score(sums[row], int(counts[row]))
    return out  # type: ignore[return-value]


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
