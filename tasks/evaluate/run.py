"""The `evaluate` step: one model (the base or a trained stage) on the held-out split and
the recipe's MMLU files. Writes `eval` (metrics), `generations` and `rejects` tables."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import torch

from tasks import markdown, sql
from tasks.config import Recipe, as_recipe
from tasks.errors import RecipeError
from tasks.evaluate.mmlu import mmlu_files, read_mmlu_csv
from tasks.evaluate.suites import (
    STEP,
    Scorer,
    SuiteResult,
    generation_suite,
    heldout_choices,
    heldout_loss,
    mmlu_suite,
    model_context,
)
from tasks.model import load_for_inference, resolve_device
from tasks.schema import REJECTS
from tasks.step import input_ref, logger, run_step
from tasks.store import ArtifactStore, file_sha256
from tasks.tokens.chat import encode

VERSION = 2  # 2: heldout loss_stderr rows (standard error over records)

EVAL = pa.schema([
    ("run_id", pa.string()),
    ("stage", pa.string()),
    ("stage_index", pa.int32()),  # 0 = base, k = k-th training stage; orders the comparison columns
    ("model_hash", pa.string()),
    ("mixture_hash", pa.string()),
    ("suite", pa.string()),  # heldout | mmlu | generation
    ("source", pa.string()),  # null = all sources of the suite
    ("task", pa.string()),  # null = all tasks of the source
    ("metric", pa.string()),
    ("value", pa.float64()),
    ("n", pa.int64()),  # tokens for loss/perplexity, records for loss_stderr, items otherwise
])

GENERATIONS = pa.schema([
    ("stage", pa.string()),
    ("record_id", pa.string()),
    ("source", pa.string()),
    ("task", pa.string()),
    ("prompt", pa.string()),
    ("reference", pa.string()),
    ("generation", pa.string()),
    ("exact_match", pa.float64()),
    ("rouge_l", pa.float64()),
    ("model_hash", pa.string()),
])

_HELDOUT_SQL = """
SELECT record_id, source, task, messages, tools, answer_choices, origin_file, origin_row
FROM read_parquet({files})
QUALIFY row_number() OVER (PARTITION BY source, task ORDER BY record_id) <= {cap}
ORDER BY source, task, record_id
"""


def stage_index(recipe: Recipe, stage: str) -> int:
    names = [s.name for s in recipe.stages]
    if stage == "base":
        return 0
    if stage not in names:
        raise RecipeError(f"evaluate: unknown stage {stage!r}; the recipe's stages are {names}")
    return names.index(stage) + 1


def weights_hash(model) -> str:
    """sha256 over parameter names and bytes: identifies base weights that have no manifest."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def load_heldout(store: ArtifactStore, split_manifest: dict, cap: int) -> tuple[list[dict], int]:
    """Up to `cap` held-out rows per source and task (lowest record_id first), and the total held out."""
    files = [str(p) for p in store.paths(split_manifest, "records_eval")]
    if not files:
        return [], 0
    lst = sql.path_list(files)
    con = duckdb.connect()
    try:
        total = con.execute(f"SELECT count(*) FROM read_parquet({lst})").fetchall()[0][0]
        rows = con.sql(_HELDOUT_SQL.format(files=lst, cap=int(cap))).to_arrow_table().to_pylist()
    finally:
        con.close()
    return rows, int(total)


def item_without_metric(reason: str) -> bool:
    """Rejects of whole items (a held-out row with no loss, an MMLU question with no pick); the
    others (no multiple-choice pick, no generation) leave the row's loss counted."""
    return reason in ("too_long", "no_assistant_tokens") or reason.startswith("mmlu_")


def _markdown(stage: str, rows: list[dict]) -> str:
    return markdown.table(["suite", "metric", "source", "value", "n"],
                          [(r["suite"], r["metric"], r["source"] or "all", f"{r['value']:.4g}", r["n"])
                           for r in rows if r["task"] is None], title=f"evaluate: {stage}")


def evaluate_loaded(sc: Scorer, records: list[dict], questions: list, cfg) -> SuiteResult:
    """Every suite on an already-loaded model; the part of the step that needs no store."""
    torch.manual_seed(cfg.seed)
    sc.model.eval()  # no dropout
    loss, scored = heldout_loss(sc, records)
    kept = [r for r in records if r["record_id"] in scored]
    parts = [loss, heldout_choices(sc, kept), mmlu_suite(sc, questions, cfg.mmlu_score_by)]
    if cfg.generation_samples:
        parts.append(generation_suite(sc, kept, cfg.generation_samples, cfg.max_new_tokens, cfg.seed))
    out = SuiteResult()
    for p in parts:
        out.rows += p.rows
        out.rejects += p.rejects
        out.generations += p.generations
        out.stats.update(p.stats)
    return out


def evaluate(root: str, recipe: dict, stage: str, model_manifest: dict | None, split_manifest: dict,
             mix_manifest: dict, tokenizer_manifest: dict) -> dict:
    """Evaluate the base model (`model_manifest=None`) or a trained stage; returns the step manifest."""
    rc = as_recipe(recipe)
    cfg = rc.evaluate
    store = ArtifactStore(root)
    index = stage_index(rc, stage)
    device = resolve_device(cfg.device)
    files = mmlu_files(cfg.mmlu, rc.resolve)
    inputs = {
        "model": input_ref(model_manifest) if model_manifest else {"base": rc.train.model_dump()},
        "split": input_ref(split_manifest),
        "mix": input_ref(mix_manifest),
        "tokenizer": input_ref(tokenizer_manifest),
        "mmlu": [{"name": Path(f).name, "sha256": file_sha256(f)} for f in files],
        "stage": stage,
        "stage_index": index,
    }
    config = {"evaluate": cfg.model_dump(), "max_seq_len": rc.train.max_seq_len,
              "truncation": rc.train.truncation, "reasoning": rc.train.reasoning, "device": device}

    def body(writer) -> None:
        model, tokenizer = load_for_inference(root, recipe, tokenizer_manifest, model_manifest, device)
        model_hash = model_manifest["key"] if model_manifest else weights_hash(model)
        records, total = load_heldout(store, split_manifest, cfg.max_rows_per_task)
        questions = [q for f in files for q in read_mmlu_csv(f)]
        logger().info(f"evaluate {stage}: {len(records)} of {total} held-out rows, {len(questions)} MMLU "
                      f"questions, on {device}")
        sc = Scorer(model, tokenizer, encode, min(rc.train.max_seq_len, model_context(model)), rc.train.truncation,
                    cfg.batch_size, device, rc.train.reasoning)
        res = evaluate_loaded(sc, records, questions, cfg)
        run_id = os.environ.get("TUNELINE_RUN_ID") or None
        common = {"run_id": run_id, "stage": stage, "stage_index": index, "model_hash": model_hash,
                  "mixture_hash": mix_manifest["key"]}
        rows = [{**common, **r} for r in res.rows]
        writer.write("eval", EVAL, rows)
        writer.write("generations", GENERATIONS,
                     [{"stage": stage, "model_hash": model_hash, **g} for g in res.generations])
        writer.write("rejects", REJECTS, res.rejects)
        rejected = sum(item_without_metric(r["reason"]) for r in res.rejects)
        writer.stats.update(res.stats)
        writer.stats.update(
            rows_in=len(records) + len(questions), rows_out=len(records) + len(questions) - rejected,
            rows_rejected=rejected, heldout_total=total, partial_rejects=len(res.rejects) - rejected,
            stage=stage, stage_index=index, model_hash=model_hash, mixture_hash=mix_manifest["key"],
            device=device, report_markdown=_markdown(stage, rows),
        )

    return run_step(store, STEP, VERSION, inputs, config, label=stage, body=body)
