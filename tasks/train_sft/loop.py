"""The training recipe: one SFT stage, in five phases (load, setup, train, save, cleanup).

Run by `tasks.train_sft.launch` as::

    accelerate launch [--cpu --num_processes 1 | --config_file X] -m tasks.train_sft.loop --config stage.json

or directly (`python -m tasks.train_sft.loop --config stage.json`), with or without
Prefect installed (nothing here imports it). The stage config JSON (see `launch.stage_config`):

    stage, recipe (the recipe dict), root (artifacts root), tokenizer_dir, rows_path (Parquet:
    position, record_id, source, origin_file, origin_row, messages, tools in training order), init (the manifest of the
    stage this one starts from, or null), work_dir (checkpoints, outputs), out_dir.

Outputs in `out_dir`, written by rank 0, completed by a `COMPLETE` marker: model weights
(safetensors) or a peft adapter, tokenizer, `training_args.json`, `result.json`,
`train_log.jsonl`, `label_audit.parquet`, `dropped.jsonl`.

Resume: every `checkpoint_every` optimizer steps, `work_dir/checkpoints/step-NNNNNN/` gets the
trainable weights, optimizer state, RNG state and the log so far, then a `COMPLETE` marker.
A restart loads the newest checkpoint with a marker (others are ignored) and continues with
the next step. The data order is a pure function of (rows, config), so the resumed run sees
exactly the batches the uninterrupted one would have.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tasks.config import Recipe, TrainConfig, as_recipe
from tasks.errors import TunelineError
from tasks.model import ADAPTER_CONFIG, is_adapter, load_stage, resolve_device, weights_sha256
from tasks.progress import Progress
from tasks.store import ArtifactStore
from tasks.tokens import chat
from tasks.train_sft import packing

COMPLETE = "COMPLETE"
LOG_PREFIX = "TRAIN_LOG "
AUDIT_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),
        ("record_id", pa.string()),
        ("total_tokens", pa.int64()),
        ("trained_tokens", pa.int64()),
        ("truncated", pa.bool_()),
        ("dropped", pa.bool_()),
        ("drop_reason", pa.string()),  # too_long (truncation: drop) | no_trained_tokens | null
    ]
)
#: Test hook: the recipe kills itself (SIGKILL) after this optimizer step, as a crash would.
KILL_ENV = "TUNELINE_TRAIN_KILL_AT_STEP"


class LabelAuditError(TunelineError):
    """The label mask is wrong for some row; training refuses to start."""


@dataclass
class TrainingState:
    """One stage's training run: everything the phases (load, setup, train, save) share."""

    cfg: dict
    recipe: Recipe
    train: TrainConfig
    work: Path
    out: Path
    tokenizer: object = None
    rows: pa.Table = None
    examples: list = field(default_factory=list)  # (input_ids, labels) of kept rows
    positions: list = field(default_factory=list)  # mixture position of each kept example
    record_ids: list = field(default_factory=list)
    truncated: list = field(default_factory=list)
    row_index: list = field(default_factory=list)  # row of `rows` each kept example comes from
    bins: list = field(default_factory=list)
    accelerator: object = None
    model: object = None
    optimizer: object = None
    adapter_base: dict | None = None
    init_sha: str | None = None
    log: list = field(default_factory=list)
    start_step: int = 0
    total_steps: int = 0


# -- phase 1: load ------------------------------------------------------------------
def load(cfg: dict) -> TrainingState:
    """Tokenizer, rows, tokenisation and the label-mask audit (refuses bad masks)."""
    from transformers import AutoTokenizer

    recipe = as_recipe(cfg["recipe"])
    st = TrainingState(cfg=cfg, recipe=recipe, train=recipe.train, work=Path(cfg["work_dir"]), out=Path(cfg["out_dir"]))
    st.tokenizer = AutoTokenizer.from_pretrained(cfg["tokenizer_dir"])
    st.rows = pq.read_table(cfg["rows_path"])
    audit, dropped = tokenize(st)
    check_audit(st, audit)
    if is_main():
        st.work.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(audit, schema=AUDIT_SCHEMA), st.work / "label_audit.parquet")
        (st.work / "dropped.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dropped))
    return st


def drop_reason(enc: chat.Encoded, strict: bool) -> str | None:
    """Why a row is not trained: too long under `truncation: drop`, or no assistant token left
    within max_seq_len (lenient recipes drop it, as TRL and LLaMA-Factory do; strict ones fail
    in `check_audit`)."""
    if enc.dropped:
        return "too_long"
    if enc.trained_tokens == 0 and not strict:
        return "no_trained_tokens"
    return None


def tokenize(st: TrainingState) -> tuple[list[dict], list[dict]]:
    """Encode every row (in record batches); returns the audit rows and the rows not trained."""
    audit, dropped = [], []
    strict = st.recipe.on_error == "strict"
    for batch in st.rows.select(["position", "record_id", "messages", "tools"]).to_batches(max_chunksize=4096):
        cols = batch.to_pydict()
        for pos, rid, msgs, tools in zip(cols["position"], cols["record_id"], cols["messages"], cols["tools"]):
            enc = chat.encode(st.tokenizer, msgs, st.train.max_seq_len, st.train.truncation, tools=tools,
                              reasoning=st.train.reasoning)
            reason = drop_reason(enc, strict)
            audit.append(dict(position=pos, record_id=rid, total_tokens=enc.total_tokens,
                              trained_tokens=enc.trained_tokens, truncated=enc.truncated, dropped=bool(reason),
                              drop_reason=reason))
            if reason:
                dropped.append({"position": pos, "record_id": rid, "total_tokens": enc.total_tokens,
                                "trained_tokens": enc.trained_tokens, "reason": reason})
                continue
            st.examples.append((enc.input_ids, enc.labels))
            st.positions.append(pos)
            st.record_ids.append(rid)
            st.truncated.append(enc.truncated)
            st.row_index.append(len(audit) - 1)
    return audit, dropped


def check_audit(st: TrainingState, audit: list[dict]) -> None:
    """No kept row without trained tokens; sampled decoded trained spans equal the assistant text."""
    empty = [a for a in audit if not a["dropped"] and a["trained_tokens"] == 0]
    if empty:
        a = empty[0]
        raise LabelAuditError(
            f"stage {st.cfg['stage']}: {len(empty)} rows have no trained token, e.g. record {a['record_id']} "
            f"(position {a['position']}, {a['total_tokens']} tokens, truncated={a['truncated']}); "
            f"raise train.max_seq_len, or set on_error: lenient to drop such rows (each one a reject)"
        )
    rng = random.Random(st.train.seed)
    sample = sorted(rng.sample(range(len(st.examples)), min(st.train.audit_samples, len(st.examples))))
    messages = st.rows.column("messages").take([st.row_index[i] for i in sample]).to_pylist()
    for i, msgs in zip(sample, messages):
        ids, labels = st.examples[i]
        enc = chat.Encoded(ids, labels, truncated=st.truncated[i], total_tokens=len(ids))
        problem = chat.check_trained_text(st.tokenizer, msgs, enc, reasoning=st.train.reasoning)
        if problem:
            raise LabelAuditError(
                f"stage {st.cfg['stage']}: record {st.record_ids[i]} (position {st.positions[i]}): {problem}"
            )


# -- phase 2: setup -----------------------------------------------------------------
def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def setup(st: TrainingState) -> None:
    """Accelerator, model (from the base or the previous stage), LoRA, optimizer, bins, resume point."""
    from accelerate import Accelerator

    device = resolve_device(st.train.device)
    if device == "cpu":
        # A tiny model's ops are too small to split across threads: one thread avoids OpenMP spin and
        # oversubscription (7x faster on a shared 2-core box).
        torch.set_num_threads(st.train.cpu_threads or (1 if st.train.model == "tiny" else torch.get_num_threads()))
    st.accelerator = Accelerator(cpu=device == "cpu",
                                 mixed_precision="bf16" if st.train.bf16 and device != "cpu" else "no")
    torch.manual_seed(st.train.seed)
    attn = packing.packed_attn_implementation(device) if st.train.packing else "sdpa"
    st.model = build_model(st, attn)
    if st.train.gradient_checkpointing:
        st.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(st.model, "enable_input_require_grads"):
            st.model.enable_input_require_grads()
    params = [p for p in st.model.parameters() if p.requires_grad]
    st.optimizer = torch.optim.AdamW(params, lr=st.train.lr, weight_decay=st.train.weight_decay)
    st.model, st.optimizer = st.accelerator.prepare(st.model, st.optimizer)
    lengths = [len(x) for x, _ in st.examples]
    st.bins = (packing.pack_ffd(lengths, st.train.max_seq_len, st.train.pack_window) if st.train.packing
               else packing.unpacked_bins(len(lengths)))
    per_step = st.train.batch_size * st.train.grad_accum * st.accelerator.num_processes
    st.total_steps = max(1, math.ceil(len(st.bins) * st.train.epochs / per_step))
    if st.train.max_steps is not None:
        st.total_steps = min(st.total_steps, st.train.max_steps)
    resume(st)


def build_model(st: TrainingState, attn: str):
    """The stage's starting model: base, or the previous stage (merged, or its adapter continued)."""
    init = st.cfg.get("init")
    root = st.cfg["root"]
    dtype = None  # fp32 master weights; bf16 comes from autocast (accelerate mixed_precision)
    if init is not None:
        st.init_sha = weights_sha256(Path(root) / init["dir"])
    if st.train.method == "full":
        st.adapter_base = None
        return load_stage(root, st.recipe, st.tokenizer, init, dtype, attn, merge=True)
    from peft import LoraConfig, PeftModel, get_peft_model

    if init is not None and is_adapter(init, root) and st.train.between_stages == "continue":
        # The same adapter keeps training on the same base.
        st.adapter_base = init.get("stats", {}).get("adapter_base")
        base_manifest = None
        if st.adapter_base is not None:
            base_manifest = ArtifactStore(root).load(st.adapter_base["step"], st.adapter_base["key"])
        base = load_stage(root, st.recipe, st.tokenizer, base_manifest, dtype, attn, merge=True)
        return PeftModel.from_pretrained(base, str(Path(root) / init["dir"]), is_trainable=True)
    st.adapter_base = None if init is None else {"step": init["step"], "key": init["key"]}
    base = load_stage(root, st.recipe, st.tokenizer, init, dtype, attn, merge=True)
    to_save = st.train.lora_modules_to_save
    if to_save is None:
        # A randomly initialised tiny model has no pretrained head to preserve: with its norms frozen,
        # LoRA barely moves the loss. Pretrained models keep everything but the adapters frozen.
        to_save = ["norm"] if st.train.model == "tiny" else []
    lora = LoraConfig(r=st.train.lora_r, lora_alpha=st.train.lora_alpha, lora_dropout=st.train.lora_dropout,
                      target_modules=list(st.train.lora_target_modules), modules_to_save=list(to_save) or None,
                      task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


# -- checkpoints ----------------------------------------------------------------------
def _unwrapped(st: TrainingState):
    return st.accelerator.unwrap_model(st.model)


def trainable_state(st: TrainingState) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in _unwrapped(st).named_parameters() if p.requires_grad}


def checkpoint(st: TrainingState, step: int) -> None:
    """Write checkpoint `step` (steps done) atomically: files, then the marker, then the rename."""
    from safetensors.torch import save_file

    st.accelerator.wait_for_everyone()
    if not is_main():
        return
    ckdir = st.work / "checkpoints"
    final = ckdir / f"step-{step:06d}"
    tmp = ckdir / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(st), str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": st.optimizer.state_dict(), "rng": torch.get_rng_state()}, tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "log": st.log}))
    if os.environ.get(KILL_ENV + "_IN_CHECKPOINT") == str(step):
        os.kill(os.getpid(), 9)  # test hook: die before the marker, leaving an incomplete checkpoint
    for f in tmp.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    (tmp / COMPLETE).write_text(str(step))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(complete_checkpoints(st.work))[: -st.train.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def complete_checkpoints(work: Path) -> list[Path]:
    """Checkpoint directories that carry their completion marker (incomplete ones are ignored)."""
    return sorted(p for p in (work / "checkpoints").glob("step-*") if (p / COMPLETE).exists())


def resume(st: TrainingState) -> None:
    """Load the newest complete checkpoint, if any: weights, optimizer, RNG, log."""
    from safetensors.torch import load_file

    found = complete_checkpoints(st.work)
    if not found:
        return
    ck = found[-1]
    state = json.loads((ck / "state.json").read_text())
    weights = load_file(str(ck / "trainable.safetensors"))
    model = _unwrapped(st)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in weights.items():
            named[n].copy_(t)
    # Our own file, and weights_only refuses anything but tensors and plain containers.
    opt = torch.load(ck / "optim.pt", weights_only=True)
    st.optimizer.load_state_dict(opt["optimizer"])
    torch.set_rng_state(opt["rng"])
    st.start_step, st.log = state["step"], state["log"]
    print(f"resumed from {ck.name}: step {st.start_step}", flush=True)


# -- phase 3: train -----------------------------------------------------------------
def lr_at(train: TrainConfig, step: int, total: int) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    span = max(1, total - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    return train.lr * (train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def step_bins(st: TrainingState, step: int) -> list[list[int]]:
    """The bins of optimizer step `step` for all processes (the epoch loop wraps around)."""
    per_step = st.train.batch_size * st.train.grad_accum * st.accelerator.num_processes
    n = len(st.bins)
    limit = math.ceil(n * st.train.epochs)
    ids = [i for i in range(step * per_step, (step + 1) * per_step) if i < limit]
    return [st.bins[i % n] for i in ids]


def micro_batches(st: TrainingState, bins: list[list[int]]) -> list[packing.Batch]:
    """This process's micro-batches of a step: rank r takes every world-th group of batch_size bins."""
    bs, world, rank = st.train.batch_size, st.accelerator.num_processes, st.accelerator.process_index
    groups = [bins[i : i + bs] for i in range(0, len(bins), bs)]
    mine = groups[rank::world]
    out = []
    for g in mine:
        order = [i for b in g for i in b]
        if st.train.packing:
            out.append(packing.packed_batch(st.examples, order))
        else:
            out.append(packing.padded_batch(st.examples, order, st.tokenizer.pad_token_id))
    return out


def train(st: TrainingState) -> None:
    """Optimizer steps from the resume point; loss is the mean over the step's trained tokens."""
    model, acc = st.model, st.accelerator
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    kill_at = os.environ.get(KILL_ENV)
    progress = Progress("training", total=st.total_steps - st.start_step, unit="steps", every_s=10, bar=False,
                        emit=lambda line: print(line, flush=True)) if is_main() else None  # launch.py logs it
    for step in range(st.start_step, st.total_steps):
        t0 = time.perf_counter()
        bins = step_bins(st, step)
        if not bins:
            break
        n_items = sum(sum(1 for v in st.examples[i][1][1:] if v != chat.IGNORE) for b in bins for i in b)
        lr = lr_at(st.train, step, st.total_steps)
        for g in st.optimizer.param_groups:
            g["lr"] = lr
        loss_sum = torch.zeros((), device=acc.device)
        tokens = 0
        for mb in micro_batches(st, bins):
            inputs = {k: (v.to(acc.device) if torch.is_tensor(v) else v) for k, v in mb.inputs.items()}
            with acc.autocast():
                # Sum of token losses / trained tokens of the whole step (all ranks); DDP averages
                # gradients over ranks, hence the factor.
                loss = model(**inputs, num_items_in_batch=n_items).loss * acc.num_processes
            acc.backward(loss)
            loss_sum += loss.detach() / acc.num_processes
            tokens += mb.tokens
        grad_norm = acc.clip_grad_norm_(params, st.train.max_grad_norm)
        st.optimizer.step()
        st.optimizer.zero_grad(set_to_none=True)
        loss_all = float(acc.reduce(loss_sum, reduction="sum"))
        tokens_all = int(acc.reduce(torch.tensor(tokens, device=acc.device), reduction="sum"))
        dt = time.perf_counter() - t0
        row = dict(stage=st.cfg["stage"], step=step + 1, loss=loss_all, lr=lr, grad_norm=float(grad_norm),
                   tokens=tokens_all, tokens_per_s=tokens_all / dt,
                   example_ids=[st.record_ids[i] for b in bins for i in b],
                   positions=[st.positions[i] for b in bins for i in b])
        st.log.append(row)
        if is_main():
            short = {k: v for k, v in row.items() if k not in ("example_ids", "positions")}
            print(LOG_PREFIX + json.dumps(short), flush=True)
            progress.add(1)
        done = step + 1
        if done % st.train.checkpoint_every == 0 and done < st.total_steps:
            checkpoint(st, done)
        if kill_at is not None and done == int(kill_at):
            os.kill(os.getpid(), 9)  # test hook: a crash right after this step
    if progress is not None:
        progress.done()


# -- phase 4: save ------------------------------------------------------------------
def save(st: TrainingState) -> None:
    """Weights (or adapter), tokenizer, args, result and logs into out_dir, then the marker."""
    st.accelerator.wait_for_everyone()
    if not is_main():
        return
    tmp = st.out.with_name(st.out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = _unwrapped(st)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("sdpa")  # the published config names a standard implementation
    model.save_pretrained(str(tmp), safe_serialization=True)
    st.tokenizer.save_pretrained(str(tmp))
    args = {"stage": st.cfg["stage"], "train": st.train.model_dump(), "total_steps": st.total_steps,
            "bins": len(st.bins), "examples": len(st.examples)}
    (tmp / "training_args.json").write_text(json.dumps(args, indent=1, sort_keys=True))
    result = {"adapter_base": st.adapter_base, "init_weights_sha256": st.init_sha,
              "weights_sha256": weights_sha256(tmp), "adapter": (tmp / ADAPTER_CONFIG).exists(),
              "steps": len(st.log), "examples": len(st.examples)}
    (tmp / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    (tmp / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in st.log))
    for name in ("label_audit.parquet", "dropped.jsonl"):
        shutil.copy2(st.work / name, tmp / name)
    (tmp / COMPLETE).write_text("ok")
    shutil.rmtree(st.out, ignore_errors=True)
    os.replace(tmp, st.out)


# -- phase 5: cleanup ---------------------------------------------------------------
def cleanup(st: TrainingState | None) -> None:
    """Free the process group and the accelerator state (so an in-process rerun starts clean)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if st is not None and st.accelerator is not None:
        st.accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def run(cfg: dict) -> Path:
    """All phases; a finished stage (out_dir with its marker) is not trained again."""
    out = Path(cfg["out_dir"])
    if (out / COMPLETE).exists():
        print(f"stage {cfg['stage']}: already complete in {out}", flush=True)
        return out
    st = None
    try:
        st = load(cfg)
        setup(st)
        train(st)
        save(st)
    finally:
        cleanup(st)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="stage config JSON written by tasks.train_sft.launch")
    args = parser.parse_args(argv)
    cfg = json.loads(Path(args.config).read_text())
    try:
        run(cfg)
    except TunelineError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
