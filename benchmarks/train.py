"""Training throughput and model FLOPs utilisation (MFU), packed versus unpacked.

    python benchmarks/train.py --preset tiny --seq-len 512 --device cpu
    python benchmarks/train.py --preset llama-1b --seq-len 2048 --device cuda --bf16 --batch 8

Trains a Llama-shaped model built from a config (random weights: speed does not depend
on them) with AdamW on random token sequences whose lengths follow a distribution
(`--lengths-from` a Parquet file with an `n_tokens` column, e.g. the `mixture` table of
a run; otherwise log-normal with median `seq_len/8`, clipped to [16, seq_len], like
instruction data). Both modes see the same examples in the same order:

- packed: first-fit-decreasing bins of `seq_len` tokens, `--batch` bins per step, one
  padding-free row with per-example attention (flash_attention_2 / torch varlen on GPU,
  the per-segment SDPA fallback on CPU) - exactly what the recipe trains with;
- unpacked: as many examples per step as carry the same real tokens as a packed step
  (`--unpacked-batch` to override), right-padded to the longest, SDPA with a padding mask.

tokens/s counts real (non-padding) tokens. Model FLOPs per token = 6 * N (N = parameters
doing matmuls: every weight except the input embedding; the LM head counts even when
tied) + causal attention 6 * layers * hidden * L for an example of length L (QK^T and
AV, forward + backward, half the square for causality). MFU = model FLOPs/s over the
device peak: `--peak-tflops`, else H100/H200 989 TFLOP/s (bf16 dense), A100 312; on
CPU the peak is measured as the best fp32 matmul rate of this process (threads as set).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tasks.train_sft import packing  # noqa: E402

PRESETS = {
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048),
    # Llama-3.2-1B's shape
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256),
}
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}


def lengths(args, rng) -> list[int]:
    if args.lengths_from:
        import pyarrow.parquet as pq

        n = pq.read_table(args.lengths_from, columns=["n_tokens"]).column(0).to_numpy()
        n = n[n > 0]
        picked = rng.choice(n, size=args.examples, replace=True)
    else:
        picked = rng.lognormal(mean=math.log(args.seq_len / 8), sigma=0.8, size=args.examples)
    return [int(min(max(16, x), args.seq_len)) for x in picked]


def build_model(args, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(PRESETS[args.preset])
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size"):
        v = getattr(args, k)
        if v is not None:
            cfg[k] = v
    config = LlamaConfig(max_position_embeddings=max(2048, args.seq_len), tie_word_embeddings=True, **cfg)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def matmul_params(model) -> int:
    emb = model.get_input_embeddings().weight
    n = sum(p.numel() for p in model.parameters() if p is not emb)
    return n + emb.numel()  # the (tied) LM head is a matmul of the embedding's size


def flops_per_step(model, batch_lengths: list[int]) -> float:
    c = model.config
    n = matmul_params(model)
    return sum(6 * n * L + 6 * c.num_hidden_layers * c.hidden_size * L * L for L in batch_lengths)


def cpu_peak_flops() -> float:
    """Best fp32 matmul rate of this process (threads as configured)."""
    best = 0.0
    for n in (256, 512, 1024):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        t = time.perf_counter()
        reps = max(3, int(2e9 / (2 * n**3)))
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def peak_flops(args, device: str) -> tuple[float, str]:
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "given"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for k, v in GPU_PEAK_TFLOPS.items():
            if k in name:
                return v * 1e12, f"{name} bf16 dense spec"
        raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")
    return cpu_peak_flops(), "measured fp32 matmul"


def batches(args, lens: list[int], mode: str):
    """Lists of example indices per step."""
    if mode == "packed":
        bins = packing.pack_ffd(lens, args.seq_len, window=args.examples)
        return [[i for b in bins[s : s + args.batch] for i in b] for s in range(0, len(bins), args.batch)]
    # Same real tokens per step as a packed step: batch * seq_len / mean example length examples.
    n = args.unpacked_batch or max(1, round(args.batch * args.seq_len / (sum(lens) / len(lens))))
    return [list(range(s, min(s + n, len(lens)))) for s in range(0, len(lens), n)]


def run_mode(args, mode: str, model, examples, lens, device: str) -> dict:
    if mode == "packed":
        model.set_attn_implementation(packing.packed_attn_implementation(device))
    else:
        model.set_attn_implementation("sdpa")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    steps = batches(args, lens, mode)
    need = args.warmup + args.steps
    steps = (steps * math.ceil(need / len(steps)))[:need]
    tokens = flops = 0.0
    t0 = None
    for k, order in enumerate(steps):
        if k == args.warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        if mode == "packed":
            b = packing.packed_batch(examples, order)
        else:
            b = packing.padded_batch(examples, order, 0)
        inputs = {k2: (v.to(device) if torch.is_tensor(v) else v) for k2, v in b.inputs.items()}
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if k >= args.warmup:
            tokens += b.tokens
            flops += flops_per_step(model, [lens[i] for i in order])
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {"mode": mode, "tokens_per_s": tokens / dt, "model_flops_per_s": flops / dt, "steps": args.steps,
           "seconds": dt}
    if device == "cuda":
        out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size"):
        p.add_argument("--" + k.replace("_", "-"), dest=k, type=int)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=8, help="packed bins (or unpacked examples) per step")
    p.add_argument("--unpacked-batch", type=int,
                   help="examples per unpacked step (default: as many real tokens per step as a packed step)")
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--lengths-from", help="Parquet with an n_tokens column (e.g. a mixture part)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, help="torch threads on CPU")
    p.add_argument("--modes", default="packed,unpacked")
    p.add_argument("--peak-tflops", type=float)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    rng = np.random.default_rng(0)
    lens = lengths(args, rng)
    model = build_model(args, device)
    model.train()
    vocab = model.config.vocab_size
    examples = [(list(rng.integers(3, vocab, size=L)), list(rng.integers(3, vocab, size=L))) for L in lens]
    peak, peak_src = peak_flops(args, device)
    results = []
    for mode in args.modes.split(","):
        r = run_mode(args, mode, model, examples, lens, device)
        r["mfu"] = r["model_flops_per_s"] / peak
        results.append(r)
    summary = {
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "preset": args.preset, "params": sum(p.numel() for p in model.parameters()),
        "seq_len": args.seq_len, "batch": args.batch, "bf16": args.bf16,
        "mean_example_tokens": float(np.mean(lens)), "peak_flops": peak, "peak_source": peak_src, "results": results,
    }
    if len(results) == 2:
        summary["packed_over_unpacked"] = results[0]["tokens_per_s"] / results[1]["tokens_per_s"]
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{summary['device']}  {args.preset} ({summary['params'] / 1e6:.1f}M params)  seq_len {args.seq_len}  "
              f"batch {args.batch}  mean example {summary['mean_example_tokens']:.0f} tokens  "
              f"peak {peak / 1e12:.3f} TFLOP/s ({peak_src})")
        for r in results:
            print(f"  {r['mode']:9s} {r['tokens_per_s']:>12,.0f} tokens/s   MFU {r['mfu']:6.1%}")
        if "packed_over_unpacked" in summary:
            print(f"  packed / unpacked: {summary['packed_over_unpacked']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
