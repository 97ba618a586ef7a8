"""Packing: bins, and no cross-contamination between packed examples."""
from __future__ import annotations

import random

import pytest
import torch

from tasks.model import load_for_inference
from tasks.tokens import chat
from tasks.train_sft import packing


def per_example_loss(model, batch: packing.Batch) -> list[float]:
    """Mean token loss of each example of a batch (packed or padded), in `batch.example_index` order."""
    inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    labels = batch.inputs["labels"]
    logp = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=chat.IGNORE, reduction="none"
    )
    valid = labels[:, 1:] != chat.IGNORE
    out = []
    if "cu_seq_lens_q" in batch.inputs:
        cu = batch.inputs["cu_seq_lens_q"].tolist()
        for s, e in zip(cu[:-1], cu[1:]):
            # token t's loss sits at t-1 after the shift; an example's tokens are s..e-1
            seg, v = logp[0, s : e - 1], valid[0, s : e - 1]
            out.append(float(seg[v].sum() / v.sum().clamp(min=1)))
    else:
        for r in range(labels.shape[0]):
            out.append(float(logp[r][valid[r]].sum() / valid[r].sum().clamp(min=1)))
    return out



def test_pack_ffd_bins_every_example_once_within_max_len():
    rng = random.Random(0)
    lengths = [rng.randint(1, 50) for _ in range(300)]
    bins = packing.pack_ffd(lengths, 64, window=100)
    flat = [i for b in bins for i in b]
    assert sorted(flat) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert bins == packing.pack_ffd(lengths, 64, window=100)
    # windows keep the mixture order: no bin mixes examples of different windows, and windows come in order
    assert all(len({i // 100 for i in b}) == 1 for b in bins)
    assert [b[0] // 100 for b in bins] == sorted(b[0] // 100 for b in bins)
    # first-fit decreasing is near the lower bound
    assert len(bins) <= sum(lengths) / 64 + 6
    with pytest.raises(ValueError):
        packing.pack_ffd([65], 64)


@pytest.fixture
def model_and_examples(prepared, records):
    root, recipe, _vm, tm = prepared
    model, tok = load_for_inference(root, recipe, tm, None)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a random init is nearly uniform; make predictions depend on context
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    ex = []
    for r in records[:16]:
        enc = chat.encode(tok, r["messages"], 96)
        ex.append((enc.input_ids, enc.labels))
    return model, tok, ex


def test_packed_batch_gives_the_same_per_example_loss_as_one_by_one(model_and_examples):
    model, tok, ex = model_and_examples
    bins = packing.pack_ffd([len(x) for x, _ in ex], 96)
    assert any(len(b) > 1 for b in bins)
    order = [i for b in bins for i in b]
    model.set_attn_implementation("sdpa")
    alone = [per_example_loss(model, packing.padded_batch(ex, [i], tok.pad_token_id))[0] for i in order]
    model.set_attn_implementation(packing.register())
    batch = packing.packed_batch(ex, order)
    assert batch.inputs["position_ids"][0, : len(ex[order[0]][0]) + 1].tolist()[-1] == 0  # restarts per example
    packed = per_example_loss(model, batch)
    assert packed == pytest.approx(alone, abs=1e-5)
    # the model's own loss over the packed row equals the token-weighted mean of the examples alone
    n = [sum(1 for v in ex[i][1][1:] if v != chat.IGNORE) for i in order]
    expected = sum(a * k for a, k in zip(alone, n)) / sum(n)
    with torch.no_grad():
        assert float(model(**batch.inputs).loss) == pytest.approx(expected, abs=1e-5)

    # negative control: one segment over the whole row lets examples see each other, and the losses move
    leaky = packing.packed_batch(ex, order)
    total = leaky.inputs["input_ids"].shape[1]
    leaky.inputs["cu_seq_lens_q"] = leaky.inputs["cu_seq_lens_k"] = torch.tensor([0, total], dtype=torch.int32)
    with torch.no_grad():
        logits = model(**{k: v for k, v in leaky.inputs.items() if k != "labels"}).logits
        good = model(**{k: v for k, v in batch.inputs.items() if k != "labels"}).logits
    assert not torch.allclose(logits, good, atol=1e-4)


def test_padded_batch_matches_one_by_one(model_and_examples):
    model, tok, ex = model_and_examples
    model.set_attn_implementation("sdpa")
    order = list(range(8))
    alone = [per_example_loss(model, packing.padded_batch(ex, [i], tok.pad_token_id))[0] for i in order]
    padded = per_example_loss(model, packing.padded_batch(ex, order, tok.pad_token_id))
    assert padded == pytest.approx(alone, abs=1e-5)
