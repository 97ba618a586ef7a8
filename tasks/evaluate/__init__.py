"""Evaluation of the base model and every training stage (issue 7).

Suites (the `suite` column of the `eval` table):
- `heldout`: loss and perplexity per source and task on assistant tokens only (the
  training mask, via `tasks.tokens.chat.encode`); multiple-choice accuracy by rank
  classification for rows with `answer_choices` (`mc_accuracy`: summed log-likelihood,
  `mc_accuracy_norm`: divided by the choice's length in characters, lm-eval's acc_norm).
- `mmlu`: the same rank classification on MMLU-format CSV files (`evaluate.mmlu`).
- `generation`: greedy generations for a seeded sample of held-out prompts, exact match
  (SQuAD normalisation) and ROUGE-L F1; the texts go to the `generations` table.
Forgetting is computed in the comparison (sql/reports/eval_comparison.sql).
"""
from tasks.evaluate.finished import finished_run_inputs
from tasks.evaluate.metrics import exact_match, normalize_answer, rouge_l
from tasks.evaluate.mmlu import MmluError, MmluItem, read_mmlu_csv
from tasks.evaluate.report import (
    REPORT_FILE,
    catalog_comparison_rows,
    comparison_markdown,
    comparison_rows,
    rows_markdown,
)
from tasks.evaluate.run import EVAL, GENERATIONS, evaluate, evaluate_loaded

__all__ = [
    "EVAL", "GENERATIONS", "REPORT_FILE", "MmluError", "MmluItem", "catalog_comparison_rows",
    "comparison_markdown", "comparison_rows",
    "evaluate", "evaluate_loaded", "finished_run_inputs", "exact_match", "normalize_answer",
    "read_mmlu_csv", "rouge_l", "rows_markdown",
]
