"""Models: the tiny default built from a config, pretrained ones from a path, trained stages.

Weights are read from safetensors only; pickle (`.bin`, `.pt`) weights are refused
unless `train.allow_unsafe_weights`, and `trust_remote_code` stays off unless the
recipe sets `train.trust_remote_code`.

A published `train` stage directory holds either full weights (`model.safetensors`,
possibly sharded) or a peft adapter (`adapter_model.safetensors` + `adapter_config.json`)
whose base is recorded in the manifest's `stats.adapter_base` (null = the base model,
else the {step, key} of the stage whose weights it applies to).
"""
from __future__ import annotations

from pathlib import Path

from tasks.config import Recipe, TrainConfig, as_recipe
from tasks.errors import RecipeError, TunelineError
from tasks.model_registry import resolve_model
from tasks.store import ArtifactStore, file_sha256
from tasks.tokens.tokenizer import load_tokenizer

#: The tiny Llama-shaped default; `train.tiny` overrides any key.
TINY_DEFAULTS = dict(
    hidden_size=64,
    intermediate_size=192,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    initializer_range=0.02,
)

UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ADAPTER_CONFIG = "adapter_config.json"


def resolve_device(setting: str) -> str:
    """A `device` setting of a recipe section: `auto` is cuda when available, else cpu."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class UnsafeWeightsError(TunelineError):
    """Weights are only in a pickle format and the recipe does not allow it."""


def tiny_config(cfg: TrainConfig, tokenizer):
    """The LlamaConfig of the tiny model for this tokenizer."""
    from transformers import LlamaConfig

    params = {**TINY_DEFAULTS, "max_position_embeddings": max(2048, cfg.max_seq_len), **cfg.tiny}
    return LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **params,
    )


def build_tiny(cfg: TrainConfig, tokenizer):
    """The tiny model with weights initialised from `train.seed` (same seed, same weights, on any machine)."""
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_config(cfg, tokenizer)
    devices = []  # fork_rng keeps the caller's global RNG untouched
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def check_weights(path: str | Path, allow_unsafe: bool) -> bool:
    """Whether `from_pretrained` should use safetensors; refuses pickle-only weights unless allowed."""
    p = Path(path)
    if not p.is_dir():
        return True  # a hub name: ask for safetensors, from_pretrained fails if there are none
    safe = list(p.glob("*.safetensors"))
    unsafe = [f for f in p.iterdir() if f.suffix in UNSAFE_SUFFIXES]
    if safe:
        return True
    if unsafe and not allow_unsafe:
        raise UnsafeWeightsError(
            f"{p}: weights only in pickle format ({', '.join(sorted(f.name for f in unsafe))}); loading pickle can run "
            f"arbitrary code. Convert them to safetensors, or set train.allow_unsafe_weights: true if you trust them"
        )
    if not unsafe:
        raise RecipeError(f"{p}: no model weights (*.safetensors) found")
    return False


def model_source(recipe: Recipe) -> str:
    """A named model's converted directory, a local path (resolved against the recipe) or a hub name."""
    return resolve_model(recipe.train.model, recipe.resolve)


def dtype_for(cfg: TrainConfig, device: str):
    import torch

    return torch.bfloat16 if cfg.bf16 and device != "cpu" else torch.float32


def load_pretrained(path: str, cfg: TrainConfig, dtype=None, attn_implementation: str | None = None):
    """`from_pretrained` with the safety settings of the recipe."""
    from transformers import AutoModelForCausalLM

    use_safetensors = check_weights(path, cfg.allow_unsafe_weights)
    kwargs = dict(trust_remote_code=cfg.trust_remote_code, use_safetensors=use_safetensors)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def base_model(recipe: Recipe, tokenizer, dtype=None, attn_implementation: str | None = None):
    """The model stage 1 starts from: the tiny model from its config, or the pretrained model."""
    cfg = recipe.train
    if cfg.model == "tiny":
        model = build_tiny(cfg, tokenizer)
        if attn_implementation:
            model.set_attn_implementation(attn_implementation)
        return model if dtype is None else model.to(dtype)
    model = load_pretrained(model_source(recipe), cfg, dtype, attn_implementation)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # the ChatML default added tokens
    return model


def stage_dir(root: str, manifest: dict) -> Path:
    return Path(root).resolve() / manifest["dir"]


def is_adapter(manifest_or_dir: dict | Path, root: str | None = None) -> bool:
    d = manifest_or_dir if isinstance(manifest_or_dir, Path) else stage_dir(root, manifest_or_dir)
    return (d / ADAPTER_CONFIG).exists()


def weights_sha256(d: Path) -> str:
    """One hash over the weight files of a model or adapter directory (names and contents)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(d.glob("*.safetensors")):
        h.update(f.name.encode() + b"\0" + file_sha256(f).encode() + b"\n")
    return h.hexdigest()


def load_stage(root: str, recipe: Recipe, tokenizer, manifest: dict | None, dtype=None,
               attn_implementation: str | None = None, merge: bool = True):
    """The model of a stage manifest (None = base model). Adapters are applied onto their recorded base."""
    if manifest is None:
        return base_model(recipe, tokenizer, dtype, attn_implementation)
    d = stage_dir(root, manifest)
    if not is_adapter(d):
        check_weights(d, allow_unsafe=False)  # our own outputs are always safetensors
        return load_pretrained(str(d), recipe.train.model_copy(update={"trust_remote_code": False}), dtype,
                               attn_implementation)
    from peft import PeftModel

    base_ref = manifest.get("stats", {}).get("adapter_base")
    base_manifest = None
    if base_ref is not None:
        base_manifest = ArtifactStore(root).load(base_ref["step"], base_ref["key"])
        if base_manifest is None:
            raise TunelineError(f"{d}: the adapter's base {base_ref} is not published or does not verify")
    base = load_stage(root, recipe, tokenizer, base_manifest, dtype, attn_implementation, merge=True)
    model = PeftModel.from_pretrained(base, str(d), is_trainable=not merge)
    return model.merge_and_unload() if merge else model


def load_for_inference(root: str, recipe: dict, tokenizer_manifest: dict, model_manifest: dict | None,
                       device: str = "cpu"):
    """(model, tokenizer) of the base model (model_manifest None) or of a trained stage, in eval mode."""
    rec = as_recipe(recipe)
    tokenizer = load_tokenizer(root, tokenizer_manifest)
    model = load_stage(root, rec, tokenizer, model_manifest, dtype=dtype_for(rec.train, device))
    model.to(device)
    model.eval()
    return model, tokenizer
