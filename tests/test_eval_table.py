"""The evaluation table people read: rounded values, n, standard errors, noise marked."""
from __future__ import annotations

import math

import pytest

from tasks.evaluate import EVAL
from tasks.evaluate.report import comparison_table, stderr, table_markdown
from tasks.step import run_step

STAGES = [(0, "base"), (1, "nlp"), (2, "chat")]
# metric -> value per stage, n
CELLS = {
    "accuracy": ([0.50, 0.52, 0.90], 100),
    "exact_match": ([0.0, 0.0, 0.0], 40),
    "loss": ([2.3456789, 2.1, 1.9], 5000),
}


def _eval_manifests(store):
    manifests = []
    for index, stage in STAGES:
        rows = [{"run_id": None, "stage": stage, "stage_index": index, "model_hash": stage, "mixture_hash": "m",
                 "suite": "heldout", "source": None, "task": None, "metric": metric, "value": values[index], "n": n}
                for metric, (values, n) in CELLS.items()]

        def body(w, rows=rows):
            w.write("eval", EVAL, rows)
            w.stats.update(rows_in=len(rows), rows_out=len(rows))

        manifests.append(run_step(store, "evaluate", 1, {"stage": stage}, {}, stage, body))
    return manifests


def test_stderr_is_binomial_for_bounded_means_only():
    assert stderr("accuracy", 0.5, 100) == pytest.approx(0.05)
    assert stderr("mc_accuracy_norm", 0.9, 100) == pytest.approx(math.sqrt(0.09 / 100))
    assert stderr("loss", 2.3, 5000) is None and stderr("accuracy", None, 10) is None


def test_table_rounds_counts_errors_and_marks_noise(store):
    table = comparison_table(str(store.root), _eval_manifests(store))
    by = {r["metric"]: r for r in table}
    acc = by["accuracy"]
    assert acc["n"] == 100
    assert acc["0:base"] == "0.5000 ± 0.0500" and acc["1:nlp"] == "0.5200 ± 0.0500"
    assert acc["1:nlp Δ"] == "+0.0200 (noise)"  # 0.02 < 1.96 * sqrt(2) * 0.05
    assert acc["2:chat Δ"] == "+0.4000"  # far outside the noise
    assert by["loss"]["0:base"] == "2.3457" and by["loss"]["2:chat Δ"] == "-0.4457"  # no error bar, no mark
    assert table[-1]["metric"] == "exact_match"  # all-zero rows last
    md = table_markdown(table)
    assert "| suite | metric | source | n | 0:base | 1:nlp | 1:nlp Δ | 2:chat | 2:chat Δ |" in md
    assert "| heldout | accuracy | all | 100 | 0.5000 ± 0.0500 |" in md and "(noise): within 1.96" in md
