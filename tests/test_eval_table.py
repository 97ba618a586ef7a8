"""The evaluation table people read: rounded values, n, 95% intervals (Wilson; standard errors
for loss and perplexity), noise marked."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.evaluate import EVAL
from tasks.evaluate.report import comparison_table, difference_interval, table_markdown, wilson
from tasks.evaluate.suites import loss_stderr
from tasks.step import run_step

STAGES = [(0, "base"), (1, "nlp"), (2, "chat")]
# metric -> value per stage, n
CELLS = {
    "accuracy": ([0.50, 0.52, 0.90], 100),
    "exact_match": ([0.0, 0.0, 0.0], 40),
    "mc_accuracy": ([0.0, 0.1, 0.125], 40),  # 0, 4 and 5 of 40
    "loss": ([2.3456789, 2.1, 1.9], 5000),
    "perplexity": ([math.exp(2.3456789), math.exp(2.1), math.exp(1.9)], 5000),
    "loss_stderr": ([0.05, 0.2, 0.05], 120),  # over 120 records
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


def test_wilson_interval_is_not_empty_at_0_and_1():
    assert wilson("accuracy", 0.5, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson("mmlu_accuracy", 0.0, 36) == pytest.approx((0.0, 0.0964), abs=1e-4)  # 0 of 36: not ± 0
    assert wilson("mmlu_accuracy", 1.0, 36) == pytest.approx((0.9036, 1.0), abs=1e-4)
    low, high = wilson("mc_accuracy_norm", 0.9, 100)
    assert low < 0.9 < high and high - 0.9 < 0.9 - low  # asymmetric near the bound
    assert wilson("loss", 2.3, 5000) is None and wilson("accuracy", None, 10) is None


def test_difference_interval_holds_zero_for_noise_only():
    base = wilson("accuracy", 0.0, 40)
    four, five = wilson("accuracy", 0.1, 40), wilson("accuracy", 0.125, 40)
    assert difference_interval(0.1, four, 0.0, base)[0] < 0  # 4 of 40 vs 0 of 40: could be noise
    assert difference_interval(0.125, five, 0.0, base)[0] > 0  # 5 of 40 vs 0 of 40: not
    low, high = difference_interval(0.0, base, 0.0, base)
    assert low < 0 < high and high == pytest.approx(0.0876, abs=1e-4)


def test_table_rounds_counts_intervals_and_marks_noise(store):
    table = comparison_table(str(store.root), _eval_manifests(store))
    by = {r["metric"]: r for r in table}
    acc = by["accuracy"]
    assert acc["n"] == 100
    assert acc["0:base"] == "0.5000 [0.4038, 0.5962]" and acc["1:nlp"] == "0.5200 [0.4232, 0.6154]"
    assert acc["1:nlp Δ"] == "+0.0200 (noise)"
    assert acc["2:chat Δ"] == "+0.4000"  # far outside the noise
    # p = 0: a non-zero upper bound, and differences judged with it (a ± standard error is 0 there,
    # which called 4 of 40 against 0 of 40 a real gain)
    mc = by["mc_accuracy"]
    assert mc["0:base"] == "0.0000 [0.0000, 0.0876]" and mc["n"] == 40
    assert mc["1:nlp Δ"] == "+0.1000 (noise)" and mc["2:chat Δ"] == "+0.1250"
    assert by["exact_match"]["0:base"] == "0.0000 [0.0000, 0.0876]" and by["exact_match"]["1:nlp Δ"] == "+0.0000 (noise)"
    # loss: ± 1.96 standard errors; Δ is noise when it is within 1.96 of the two errors combined
    assert by["loss"]["0:base"] == "2.3457 [2.2477, 2.4437]" and by["loss"]["n"] == 5000
    assert by["loss"]["1:nlp Δ"] == "-0.2457 (noise)"  # 1.96 * hypot(0.05, 0.2) = 0.404
    assert by["loss"]["2:chat Δ"] == "-0.4457"  # 1.96 * hypot(0.05, 0.05) = 0.139
    low, high = (float(x) for x in by["perplexity"]["0:base"].split("[")[1].rstrip("]").split(","))
    assert (low, high) == pytest.approx((math.exp(2.3456789 - 0.098), math.exp(2.3456789 + 0.098)), abs=1e-4)
    assert by["perplexity"]["1:nlp Δ"].endswith("(noise)") and not by["perplexity"]["2:chat Δ"].endswith("(noise)")
    assert "loss_stderr" not in by  # read into loss and perplexity, not a row of its own
    assert table[-1]["metric"] == "exact_match"  # all-zero rows last
    md = table_markdown(table)
    assert "### Evaluation: base vs stages (value [95% interval])" in md
    assert "| suite | metric | source | n | 0:base | 1:nlp | 1:nlp Δ | 2:chat | 2:chat Δ |" in md
    assert "| heldout | accuracy | all | 100 | 0.5000 [0.4038, 0.5962] |" in md
    assert "(noise): the 95% interval of the difference" in md


def test_loss_stderr_is_the_standard_error_over_records():
    rng = np.random.default_rng(0)
    nll = rng.gamma(2.0, 30.0, size=50)
    # equal token counts: the standard error of the mean of the per-record losses
    same = np.full(50, 40.0)
    assert loss_stderr(nll, same) == pytest.approx(np.std(nll / 40.0, ddof=1) / math.sqrt(50))
    # records of different lengths: the ratio estimator's error, which a bootstrap over records agrees with
    tokens = rng.integers(5, 200, size=50).astype(float)
    nll = tokens * rng.normal(2.0, 0.3, size=50)
    boot = [(nll[i].sum() / tokens[i].sum()) for i in rng.integers(0, 50, size=(4000, 50))]
    assert loss_stderr(nll, tokens) == pytest.approx(np.std(boot), rel=0.1)
    # the same per-token loss in every record: no spread
    assert loss_stderr(tokens * 2.0, tokens) == pytest.approx(0.0, abs=1e-12)
