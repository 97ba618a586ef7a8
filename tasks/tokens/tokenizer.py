"""The `tokenizer` step: the tokenizer every later step (mix token counts, train, evaluate) uses.

- model "tiny" (or no tokenizer configured and the tiny model): a byte-level BPE of
  `train.vocab_size` trained with HF `tokenizers` on the stage-1 sources' texts of the
  validated records, with special tokens and a ChatML-style chat template that marks
  assistant turns with `{% generation %}` blocks;
- otherwise: the tokenizer of `train.tokenizer` or `train.model` (a named model of
  `tasks.model_registry`, a local path or a hub name), copied. A tokenizer without a chat template gets the same ChatML template
  (the documented default; ChatML is what most open chat fine-tunes use).

The step directory is a `save_pretrained` directory: `AutoTokenizer.from_pretrained(dir)` loads it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tasks.config import Recipe, TrainConfig, as_recipe
from tasks.errors import RecipeError
from tasks.model_registry import resolve_model
from tasks.progress import table_rows
from tasks.step import Progress, input_ref, logger, run_step
from tasks.store import ArtifactStore, file_sha256
from tasks.tokens.chat import CHATML_TEMPLATE, IM_END, IM_START, PAD, tokenizer_threads

VERSION = 2  # 2: trained on at most 50 M characters (was 200 M)
STEP = "tokenizer"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]

#: Texts read for training the BPE at most (first rows in manifest order): plenty for the tiny
#: model's vocabulary (a few thousand tokens), and it bounds the step's time on large corpora.
MAX_TRAIN_CHARS = 50_000_000


def is_tiny(cfg: TrainConfig) -> bool:
    return cfg.model == "tiny"


def stage1_sources(recipe: Recipe) -> list[str] | None:
    """Sources of the first stage (None = every source), for training the tiny tokenizer."""
    if not recipe.stages:
        return None
    s = recipe.stages[0]
    names = s.sources or sorted({*(s.shares or {}), *(s.weights or {})})
    return list(names) or None


def _texts(store: ArtifactStore, manifest: dict, sources: list[str] | None):
    """Message contents of the validated records (joined by newlines per conversation),
    restricted to `sources`, up to MAX_TRAIN_CHARS."""
    seen = 0
    progress = Progress("tokenizer: reading texts", total=table_rows(manifest, "records_valid"))
    for batch in store.iter_batches(manifest, "records_valid", columns=["source", "messages"], batch_size=8192):
        progress.add(batch.num_rows)
        if sources is not None:
            batch = batch.filter(pc.is_in(batch.column(0), pa.array(sources, pa.string())))
        msgs = batch.column(1)
        offsets = pc.subtract(msgs.offsets, msgs.offsets[0])
        contents = pc.list_flatten(msgs).field("content").fill_null("")
        for text in pc.binary_join(pa.ListArray.from_arrays(offsets, contents), "\n").fill_null("").to_pylist():
            seen += len(text)
            yield text
            if seen >= MAX_TRAIN_CHARS:
                progress.done()  # the rest is not read
                return
    progress.done()


def train_bpe(texts, vocab_size: int):
    """A byte-level BPE `PreTrainedTokenizerFast` with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    with tokenizer_threads():
        tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, bos_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _pretrained_source(recipe: Recipe, cfg: TrainConfig) -> str:
    return resolve_model(cfg.tokenizer or cfg.model, recipe.resolve)


def _pretrained_fingerprint(path: str) -> dict:
    """Hashes of a local tokenizer's files, so a changed tokenizer changes the key."""
    p = Path(path)
    if not p.is_dir():
        return {"name": path}
    files = sorted(f for f in p.iterdir() if f.is_file() and ("token" in f.name or f.suffix in (".jinja", ".model")))
    return {"path": path, "files": {f.name: file_sha256(f) for f in files}}


def load_pretrained_tokenizer(path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not getattr(tok, "chat_template", None):
        logger().warning(f"tokenizer {path}: no chat template; using the ChatML default")
        missing = [t for t in (IM_START, IM_END) if t not in tok.get_vocab()]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing})
        tok.chat_template = CHATML_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_tokenizer(root: str, recipe: dict, validate_manifest: dict) -> dict:
    """Step `tokenizer`: train (tiny) or copy the model's tokenizer; publishes a save_pretrained dir."""
    rec = as_recipe(recipe)
    cfg = rec.train
    store = ArtifactStore(root)
    if is_tiny(cfg) and cfg.tokenizer is None:
        sources = stage1_sources(rec)
        inputs = [input_ref(validate_manifest)]
        config = {"kind": "bpe", "vocab_size": cfg.vocab_size, "sources": sources, "template": CHATML_TEMPLATE}
        make = lambda: train_bpe(_texts(store, validate_manifest, sources), cfg.vocab_size)  # noqa: E731
        label = f"byte-level BPE {cfg.vocab_size}"
    else:
        src = _pretrained_source(rec, cfg)
        inputs = [_pretrained_fingerprint(src)]
        config = {"kind": "pretrained", "source": src, "trust_remote_code": cfg.trust_remote_code,
                  "template": CHATML_TEMPLATE}
        make = lambda: load_pretrained_tokenizer(src, cfg.trust_remote_code)  # noqa: E731
        label = f"pretrained {src}"

    def body(writer) -> None:
        tok = make()
        if len(tok) < 3:
            raise RecipeError(f"tokenizer {label}: vocabulary of {len(tok)} tokens; no training text?")
        with tempfile.TemporaryDirectory(dir=writer.dir.parent) as tmp:
            tok.save_pretrained(tmp)
            for f in sorted(Path(tmp).iterdir()):
                writer.attach_file(f.name, f.read_bytes())
        writer.stats.update(rows_in=0, rows_out=0, rows_rejected=0, vocab_size=len(tok),
                            report_markdown=f"**tokenizer** {label}: {len(tok)} tokens, eos `{tok.eos_token}`")

    return run_step(store, STEP, VERSION, inputs, config, label, body)


def tokenizer_dir(root: str, tokenizer_manifest: dict) -> Path:
    return Path(root).resolve() / tokenizer_manifest["dir"]


def load_tokenizer(root: str, tokenizer_manifest: dict):
    """The tokenizer a `tokenizer` step published."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir(root, tokenizer_manifest)))
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
    return tok
