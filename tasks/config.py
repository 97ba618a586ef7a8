"""Typed, frozen recipe configuration. YAML exists only at the edge, `tasks.recipe.load_recipe`,
which also runs the checks each step owns.

Every section rejects unknown keys, so a typo is an error before anything runs.
Each step owns its section class here; defaults are documented on the fields.
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.errors import RecipeError
from tasks.store import safe_name


def glob_files(pattern: str, resolved: str, what: str, error: type[Exception] = RecipeError) -> list[str]:
    """The files a recipe path or glob names (`resolved`: made absolute), sorted; `error`
    naming `what` and the pattern when none match."""
    files = sorted(p for p in glob.glob(resolved, recursive=True) if Path(p).is_file())
    if not files:
        raise error(f"{what}: no file matches {pattern!r} (resolved to {resolved})")
    return files


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(Section):
    """One input: `name`, `format` (a reader registry name), `path` (file, glob or hf:// URI)."""

    name: str
    format: str
    path: str
    templates: str | None = None  # promptsource templates.yaml
    templates_per_row: int = Field(1, ge=1)  # promptsource / FLAN CoT: templates rendered per row (seeded)
    template_names: list[str] | None = None  # promptsource: restrict to these template names
    task: str | None = None  # override the task name the reader derives
    priority: int = 0  # dedup keeps the higher priority record of a cluster
    # reader-specific options, documented per reader; `columns` (JSON-family readers) maps the
    # reader's field names onto the dataset's, `columns.roles` the dataset's role names
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return safe_name(v, "source name")


class DedupConfig(Section):
    """Exact + MinHash-LSH near-duplicate removal (tasks/dedup). See tasks/dedup/__init__.py."""

    enabled: bool = True
    projection: Literal["prompt", "response", "conversation"] = "conversation"  # which turns are compared
    scope: Literal["within_source", "global"] = "global"  # compare records of one source only, or all
    threshold: float = Field(0.8, gt=0, le=1)  # Jaccard over shingles at or above which records merge
    num_perm: int = Field(128, ge=16, le=1024)
    shingle: Literal["word", "char"] = "word"  # word: char shingles only for no-space scripts
    shingle_size: int = Field(5, ge=1, le=32)
    seed: int = 1  # MinHash permutation seed (datasketch's)
    template_variants: Literal["keep", "dedup"] = "keep"  # same example_id, different template
    verify: Literal["exact", "estimate"] = "exact"  # candidate pairs: exact Jaccard or signature estimate
    # LSH bands/rows are datasketch's optimiser's choice with these weights; false negatives weigh
    # more by default because every candidate pair is verified, so false positives cost only time.
    false_positive_weight: float = Field(0.2, gt=0, lt=1)
    false_negative_weight: float = Field(0.8, gt=0, lt=1)
    batch_rows: int = Field(8192, ge=1)  # records per vectorised signature batch


class SplitConfig(Section):
    """Held-out split (tasks/split.py): seeded, per source and task, grouped by `example_id`."""

    eval_fraction: float | None = Field(0.05, ge=0, lt=1)  # share of groups held out per source+task
    eval_rows: int | None = Field(None, ge=0)  # per source and task; overrides eval_fraction
    seed: int = 7


class BenchmarkConfig(Section):
    """One benchmark file (or glob) whose prompts training rows must not overlap.

    `field`: the prompt field (or several); a list value (MT-Bench `turns`) is split into
    items `<id>:<j>` (1-based j). `id_field`: optional item id, else the 1-based row number
    (prefixed with the file stem when a glob matches several files). CSV files without a
    header (MMLU) name columns by 0-based index: `field: "0"`.
    """

    name: str
    path: str
    field: str | list[str]
    id_field: str | None = None
    format: Literal["auto", "jsonl", "json", "csv"] = "auto"  # auto: by extension
    csv_header: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return safe_name(v, "benchmark name")


class DecontaminationConfig(Section):
    """Word n-gram overlap of training user turns with evaluation prompts (tasks/decontam.py)."""

    enabled: bool = True
    ngram: int = Field(13, ge=3, le=50)
    heldout: bool = True  # compare against the project's own held-out split
    short_min_words: int = Field(3, ge=1)  # prompts < ngram words: containment from here, equality below
    # An n-gram shared by this many distinct items of one benchmark (or held-out examples) is
    # template text and not matched; None matches every n-gram.
    boilerplate_items: int | None = Field(3, ge=2)
    # A matched n-gram needs this many words that no such template n-gram covers (else it is
    # template text plus a word or two); counts only when boilerplate_items is set.
    min_item_words: int = Field(4, ge=1)
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)


class ValidateConfig(Section):
    """Row- and dataset-level expectations (tasks/validate.py); bounds feed the suite's $PARAMETERs."""

    suite: str = "expectations/records.json"  # recipe-relative, else relative to the project root
    languages: list[str] | None = None  # allowed user-turn languages (ISO 639-1); None = any
    lang_min_chars: int = Field(20, ge=0)  # shorter user turns get lang "und" (always allowed)
    lang_max_chars: int = Field(160, ge=0)  # chars of the user turn given to py3langid; 0 = no detection
    max_turn_chars: int = 20_000
    max_conversation_chars: int = 100_000
    min_turn_chars: int = 1
    max_turn_tokens: int | None = None  # needs train.tokenizer, a named train.model or a local model directory
    max_conversation_tokens: int | None = None
    # Self-identification and refusal phrases searched in assistant turns (tasks.validate:
    # case-insensitive, any whitespace between words and around CJK characters, whole words
    # at Latin edges). Defaults: English and Chinese, the languages of the shared samples.
    banned_phrases: list[str] = Field(
        default_factory=lambda: [
            "as an ai language model", "i am a language model trained by openai", "i'm an ai language model",
            "as a large language model", "i cannot fulfill this request",
            # Chinese self-identification ("as an AI language model", "I am a model trained by OpenAI")
            "作为一个ai语言模型", "作为一种ai语言模型", "作为一款ai语言模型", "作为ai语言模型", "作为一个人工智能语言模型",
            "作为一名人工智能语言模型", "作为一款人工智能语言模型", "作为一种人工智能语言模型", "作为人工智能语言模型",
            "作为一个语言模型", "作为一种语言模型", "作为一名语言模型", "作为语言模型", "作为一个自然语言处理模型",
            "作为由openai", "作为openai训练的", "我是由openai", "我是openai训练的", "由openai训练的大型语言模型",
            "由openai开发的大型语言模型", "由openai培训的", "由openai创建的ai语言模型", "我是一个人工智能语言模型",
            "我是一台人工智能语言模型", "我是一个ai语言模型", "我是一款ai语言模型", "我是一个语言模型", "我是一名语言模型",
            "我是语言模型", "我是一个基于文本的人工智能模型", "作為一個語言模型", "作為一個ai語言模型", "我是語言模型",
            # Chinese refusals ("I cannot fulfil this request")
            "我无法满足此要求", "我无法满足此请求", "我无法满足您的请求", "我无法满足你的请求", "我无法满足您的要求",
            "我无法满足你的要求",
        ]
    )
    max_reject_share: float = Field(0.5, ge=0, le=1)  # per source, dataset-level
    min_rows_per_source: int = Field(1, ge=0)
    ge_sample_rows: int | None = Field(200_000, ge=1)  # rows great-expectations also runs on; None = all
    batch_rows: int = Field(20_000, ge=1)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)


class ReplayConfig(Section):
    """Replay rows of an earlier stage (tasks/mix.py).

    `share` is the fraction of this stage's total (rows or tokens, by the stage's unit)
    that is replayed. `disjoint: true` takes rows of the earlier stage's sources/tasks that
    its manifest did not use, topped up from its manifest when there are not enough;
    `disjoint: false` samples from the earlier stage's manifest itself.
    """

    from_: str = Field(alias="from")
    share: float = Field(gt=0, lt=1)
    disjoint: bool = True  # replay rows the earlier stage did not use, where there are enough

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StageConfig(Section):
    """One training stage's mixture (tasks/mix.py; checked by tasks.mix.check_stages)."""

    name: str
    sources: list[str] | None = None  # default: the keys of `shares`/`weights`, else every source
    tasks: list[str] | None = None  # keep only these tasks of the stage's sources
    strategy: Literal["proportional", "temperature", "target"] = "proportional"
    unit: Literal["examples", "tokens"] = "examples"
    shares: dict[str, float] | None = None  # target strategy
    weights: dict[str, float] | None = None  # proportional/temperature: multiplies sizes
    temperature: float = Field(2.0, gt=0)
    cap_per_task: int | None = Field(None, ge=1)  # examples per task counted toward its size (FLAN cap)
    total: int | None = Field(None, ge=1)  # rows or tokens (by unit); None = use everything once
    upsample: bool = True
    replay: ReplayConfig | None = None
    share_tolerance: float = Field(0.02, ge=0, le=1)  # |achieved - target| share allowed (+1 row in examples)
    seed: int = 11

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return safe_name(v, "stage name")


class TrainConfig(Section):
    model: str = "tiny"  # "tiny" (built from a config) or a local path / hub name for from_pretrained
    tokenizer: str | None = None  # default: the model's, or a byte-level BPE trained on stage-1 data
    trust_remote_code: bool = False
    allow_unsafe_weights: bool = False  # pickle / .bin weights
    method: Literal["lora", "full"] = "lora"
    between_stages: Literal["continue", "merge"] = "merge"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    max_seq_len: int = 512
    truncation: Literal["truncate", "drop"] = "truncate"
    # what the model learns of reasoning traces: every one, none, or only the last assistant turn's
    # (tasks.tokens.chat.apply_reasoning; the label audit checks it)
    reasoning: Literal["keep", "drop", "last_turn"] = "keep"
    packing: bool = True
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8  # sequences (packed bins) per optimizer step per device
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    seed: int = 3
    checkpoint_every: int = 50
    bf16: bool = False
    gradient_checkpointing: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tiny: dict[str, Any] = Field(default_factory=dict)  # overrides of the tiny model config
    vocab_size: int = 2048  # tokenizer trained for the tiny model
    max_grad_norm: float = Field(1.0, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine decay from lr to lr * min_lr_ratio after warmup
    pack_window: int = Field(1000, ge=1)  # examples packed together (first-fit decreasing); keeps mixture order
    audit_samples: int = Field(64, ge=0)  # rows whose decoded trained spans are compared with the assistant text
    keep_checkpoints: int = Field(2, ge=1)
    accelerate_config: str | None = None  # `accelerate launch --config_file`; None: one process (CPU or one GPU)
    lora_modules_to_save: list[str] | None = None  # trained in full with LoRA; None: ["norm"] (RMSNorms) for tiny, else []
    cpu_threads: int | None = Field(None, ge=1)  # torch threads on CPU; None: 1 for the tiny model, else torch's


class EvaluateConfig(Section):
    """Evaluation of the base model and every stage (tasks/evaluate)."""

    enabled: bool = True
    mmlu: list[str] = Field(default_factory=list)  # globs of MMLU-format CSV files
    # letter: options listed, rank A-D (lm-eval's MMLU); text: options listed, rank the choice texts;
    # cloze: the question alone, rank the choice texts (the cloze formulation small models are judged by)
    mmlu_score_by: Literal["letter", "text", "cloze"] = "letter"
    generation_samples: int = Field(16, ge=0)  # held-out prompts generated from (seeded sample)
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(8, ge=1)
    max_rows_per_task: int = Field(200, ge=1)  # held-out rows per source and task (lowest record_id first)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 5  # generation sample and torch seed


class Recipe(Section):
    """A whole recipe. Paths are resolved relative to the recipe file."""

    sources: list[SourceConfig]
    seed: int = 0
    on_error: Literal["strict", "lenient"] = "lenient"
    max_reject_share: float = Field(0.5, ge=0, le=1)  # ingest/convert: a step fails above this share
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    stages: list[StageConfig] = Field(default_factory=list)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    base_dir: str = "."  # directory the recipe's relative paths are resolved against
    file: str = "<recipe>"  # the file it was read from (run names and records; in no step key)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def validate_cfg(self) -> ValidateConfig:
        return self.validate_

    @model_validator(mode="after")
    def _unique_names(self) -> "Recipe":
        names = [s.name for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique; repeated: {sorted(dup)}")
        stages = [s.name for s in self.stages]
        if len(set(stages)) != len(stages):
            raise ValueError("stage names must be unique")
        return self

    def resolve(self, path: str) -> str:
        """A recipe path made absolute against the recipe's directory (hf:// URIs unchanged)."""
        if path.startswith("hf://") or Path(path).is_absolute():
            return path
        return str((Path(self.base_dir) / path).resolve())

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        raise RecipeError(f"unknown source {name!r}; recipe has {[s.name for s in self.sources]}")

    def source_files(self, source: SourceConfig) -> list[str]:
        """The files a source names, sorted; a clear error when none match."""
        path = self.resolve(source.path)
        if path.startswith("hf://"):
            return [path]
        return glob_files(source.path, path, f"source {source.name!r}")


def as_recipe(recipe: "Recipe | dict") -> "Recipe":
    """The typed recipe a step works with. The flows pass the `Recipe` parsed once by
    `tasks.recipe.load_recipe`; plain data (a stage config read by the training subprocess,
    a test's dict) is validated here, the one place that converts."""
    return recipe if isinstance(recipe, Recipe) else Recipe.model_validate(recipe)
