"""Packing examples into `max_seq_len` bins, and attention that never crosses an example.

A packed micro-batch is padding-free: every example of every bin is laid end to end in
one row, position ids restart at 0 per example, and `cu_seq_lens` marks the example
boundaries (the layout of transformers' DataCollatorWithFlattening). Attention runs per
example:

- `flash_attention_2` (GPU with flash-attn installed): transformers' varlen path uses
  the `cu_seq_lens_*` kwargs we pass to the forward;
- otherwise the `tuneline_varlen` attention function registered here: torch's
  `varlen_attn` (flash) on CUDA in bf16/fp16, else exact per-example causal SDPA in a
  loop over segments (the CPU fallback: each example's attention is exactly the one
  it would get alone, and no (T x T) masked grid is computed).

The first label of every example is -100, so no example is trained to predict its
first token from the previous example (unpacked, that label is dropped by the shift).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.tokens.chat import IGNORE

ATTN_NAME = "tuneline_varlen"


# -- bin packing ---------------------------------------------------------------------
def pack_ffd(lengths: list[int], max_len: int, window: int = 1000) -> list[list[int]]:
    """Indices grouped into bins of at most `max_len` tokens, first-fit decreasing per window.

    Packing runs over consecutive windows of `window` examples so the mixture's order
    (its curriculum and interleaving) survives at the scale of a window; bins are
    returned in the order of their earliest example. Deterministic.
    """
    bins: list[list[int]] = []
    for w0 in range(0, len(lengths), window):
        idx = sorted(range(w0, min(w0 + window, len(lengths))), key=lambda i: (-lengths[i], i))
        wbins: list[list[int]] = []
        free: list[int] = []
        for i in idx:
            n = lengths[i]
            if n > max_len:
                raise ValueError(f"example {i} has {n} tokens > max_len {max_len}; truncate or drop it first")
            for b, room in enumerate(free):
                if n <= room:
                    wbins[b].append(i)
                    free[b] -= n
                    break
            else:
                wbins.append([i])
                free.append(max_len - n)
        bins.extend(sorted((sorted(b) for b in wbins), key=lambda b: b[0]))
    return bins


def unpacked_bins(n: int) -> list[list[int]]:
    return [[i] for i in range(n)]


# -- batches -------------------------------------------------------------------------
@dataclass
class Batch:
    """Model inputs of one micro-batch plus what the training log needs."""

    inputs: dict
    example_index: list[int]  # indices into the stage's example list, in layout order
    tokens: int  # non-padding tokens
    trained_tokens: int  # labels != -100 after the shift


def packed_batch(examples: list[tuple[list[int], list[int]]], order: list[int]) -> Batch:
    """One padding-free row: examples `order` end to end, position ids restarting, cu_seq_lens."""
    ids, labels, pos, cu = [], [], [], [0]
    for i in order:
        x, y = examples[i]
        ids.extend(x)
        labels.append(IGNORE)  # never predict an example's first token from the previous example
        labels.extend(y[1:])
        pos.extend(range(len(x)))
        cu.append(cu[-1] + len(x))
    max_len = max(cu[k + 1] - cu[k] for k in range(len(cu) - 1))
    cu_t = torch.tensor(cu, dtype=torch.int32)
    inputs = {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([pos]),
        "cu_seq_lens_q": cu_t,
        "cu_seq_lens_k": cu_t,
        "max_length_q": max_len,
        "max_length_k": max_len,
    }
    return Batch(inputs, list(order), len(ids), sum(1 for v in labels[1:] if v != IGNORE))


def padded_batch(examples: list[tuple[list[int], list[int]]], order: list[int], pad_id: int) -> Batch:
    """A right-padded (B, max_len) batch with an attention mask: the unpacked baseline."""
    n = max(len(examples[i][0]) for i in order)
    ids = torch.full((len(order), n), pad_id, dtype=torch.long)
    labels = torch.full((len(order), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(order), n), dtype=torch.long)
    tokens = trained = 0
    for r, i in enumerate(order):
        x, y = examples[i]
        ids[r, : len(x)] = torch.tensor(x)
        labels[r, : len(y)] = torch.tensor(y)
        mask[r, : len(x)] = 1
        tokens += len(x)
        trained += sum(1 for v in y[1:] if v != IGNORE)
    return Batch({"input_ids": ids, "labels": labels, "attention_mask": mask}, list(order), tokens, trained)


# -- attention -----------------------------------------------------------------------
def _segments_sdpa(query, key, value, cu: list[int], scaling):
    from transformers.integrations.sdpa_attention import repeat_kv

    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    out = torch.empty_like(query)
    for s, e in zip(cu[:-1], cu[1:]):
        out[:, :, s:e] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, scale=scaling
        )
    return out


def _cuda_half_dtype(query):
    """The half dtype flash varlen runs in on CUDA (the tensor's, or autocast's: RoPE promotes q/k to fp32)."""
    if not query.is_cuda:
        return None
    if query.dtype in (torch.bfloat16, torch.float16):
        return query.dtype
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return None


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Causal attention within each packed example ([1, H, T, D] in, [1, T, H, D] out)."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        # Not packed (a single sequence, e.g. generation): plain SDPA.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError("packed attention expects one flattened row per micro-batch")
    half = _cuda_half_dtype(query)
    if half is not None:
        from torch.nn.attention.varlen import varlen_attn

        cu_d = cu.to(query.device, torch.int32)
        m = int(kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max()))
        q, k, v = (t[0].transpose(0, 1).to(half) for t in (query, key, value))
        out = varlen_attn(q, k, v, cu_d, cu_d, m, m, scale=scaling, window_size=(-1, 0),
                          enable_gqa=query.shape[1] != key.shape[1])
        return out.unsqueeze(0), None
    out = _segments_sdpa(query, key, value, cu.tolist(), scaling)
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    """Packed rows need no mask tensor: the attention function knows the segments."""
    return None


def register() -> str:
    """Register `tuneline_varlen` with transformers' attention and mask interfaces."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, varlen_attention)
    AttentionMaskInterface.register(ATTN_NAME, _no_mask)
    return ATTN_NAME


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def packed_attn_implementation(device: str) -> str:
    """flash_attention_2 on GPU when installed, else our varlen function (flash varlen on CUDA, exact loop on CPU)."""
    if device != "cpu" and flash_attn_available():
        return "flash_attention_2"
    return register()


# -- per-example loss (tests, audits) ------------------------------------------------
