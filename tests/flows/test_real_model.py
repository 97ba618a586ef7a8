"""A real pretrained model through the whole pipeline: SmolLM2-135M-Instruct (the packaged
GGUF checkpoint, converted once into the model cache), trained with LoRA for a few steps on
data this test writes, evaluated against the base model."""
from __future__ import annotations

import json
import random

import pytest
import yaml

from tasks import catalog
from tasks.demo_data import COUNTRIES, mmlu_questions

pytestmark = pytest.mark.slow


def _write_data(d) -> None:
    """Dolly rows in one regular pattern (a pretrained model's loss on it falls within a few
    steps) and MMLU-format questions a 135M instruct model can answer."""
    rng = random.Random(0)
    rows = []
    for country, capital, continent in COUNTRIES:
        rows.append({"instruction": f"Name the capital city of {country}.", "context": "",
                     "response": f"Capital of {country}: {capital}. Continent: {continent}.",
                     "category": "open_qa"})
    for _ in range(28):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"instruction": f"Add {a} and {b}.", "context": "", "response": f"Sum of {a} and {b}: {a + b}.",
                     "category": "arithmetic"})
    (d / "dolly.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "mmlu").mkdir()
    for subject, questions in mmlu_questions(random.Random(1)).items():
        (d / "mmlu" / f"{subject}_test.csv").write_text(
            "".join(",".join(f'"{x}"' for x in q) + "\n" for q in questions))
    recipe = {
        "sources": [{"name": "facts", "format": "dolly", "path": "dolly.jsonl"}],
        "split": {"eval_fraction": 0.2, "seed": 3},
        "stages": [{"name": "facts", "sources": ["facts"]}],
        "train": {"model": "smollm2-135m", "method": "lora", "lora_r": 16, "lora_alpha": 32, "lr": 0.002,
                  "max_seq_len": 128, "batch_size": 4, "max_steps": 6},
        "evaluate": {"mmlu": ["mmlu/*_test.csv"], "mmlu_score_by": "cloze", "generation_samples": 3,
                     "max_new_tokens": 16, "max_rows_per_task": 8},
    }
    (d / "recipe.yaml").write_text(yaml.safe_dump(recipe))


def test_smollm2_lora_learns_and_is_evaluated_against_its_base(prefect_server, tmp_path):
    from flows.pipeline import pipeline

    _write_data(tmp_path)
    out = tmp_path / "out"
    pipeline(str(tmp_path / "recipe.yaml"), str(out))
    con = catalog.connect(out)

    losses = [r[0] for r in con.execute("select loss from train_log order by step").fetchall()]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < losses[0], losses  # training loss falls

    def metric(stage: str, suite: str, metric: str, source: str | None = None) -> tuple[float, int]:
        return con.execute(
            "select value, n from eval where stage = ? and suite = ? and metric = ? and task is null "
            "and source is not distinct from ?", [stage, suite, metric, source]).fetchone()

    base_loss, n_tokens = metric("base", "heldout", "loss", "facts")
    tuned_loss, _ = metric("facts", "heldout", "loss", "facts")
    assert n_tokens > 50 and tuned_loss < base_loss, (base_loss, tuned_loss)

    acc, n = metric("base", "mmlu", "accuracy", "mmlu")
    assert n >= 30 and acc > 0.4, (acc, n)  # four choices: chance is 0.25

    gens = con.execute("select stage, generation from generations order by stage, record_id").fetchall()
    assert {s for s, _ in gens} == {"base", "facts"} and len(gens) == 6
    assert all(g.strip() for _, g in gens), gens
    # the base model is the real instruct model: it answers in words, not noise
    assert any(any(c in g for _, c, _ in COUNTRIES) or any(ch.isdigit() for ch in g) for _, g in gens), gens
